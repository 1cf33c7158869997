-- wrk script: POST /webhooks/stripe, each delivery a distinct signed event
-- from $ALVRYN_LOAD_DELIVERIES ("<signature>\t<body>" per line), split
-- between the threads. A thread that runs out starts over (those answer
-- "duplicate", and are counted apart at the end).
local deliveries = {}
local threads = {}
local next_i = 1
sent, repeats, failed = 0, 0, 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local n = tonumber(os.getenv("ALVRYN_LOAD_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("ALVRYN_LOAD_DELIVERIES")) do
    if i % n == id then
      local sig, body = line:match("^([^\t]+)\t(.*)$")
      table.insert(deliveries, { sig, body })
    end
    i = i + 1
  end
  wrk.method = "POST"
end

function request()
  if next_i > #deliveries then
    next_i = 1
    repeats = repeats + 1
  end
  local d = deliveries[next_i]
  next_i = next_i + 1
  sent = sent + 1
  return wrk.format(nil, "/webhooks/stripe",
    { ["Content-Type"] = "application/json", ["Stripe-Signature"] = d[1] }, d[2])
end

function response(status, headers, body)
  if status ~= 200 then failed = failed + 1 end
end

function done(summary, latency, requests)
  local s, r, f = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    r = r + t:get("repeats")
    f = f + t:get("failed")
  end
  io.write(string.format("deliveries sent: %d, pool restarts: %d, non-200: %d\n", s, r, f))
end
