-- wrk script: POST /auth/refresh with real rotations.
-- Each thread takes its own slice of refresh tokens (one per line of
-- $ALVRYN_LOAD_TOKENS); each request takes a token from the thread's pool,
-- each response puts the successor back. A non-200 answer loses the token
-- and is counted by wrk as a non-2xx response.
local pool = {}
local threads = {}
rotated, fallbacks, lost = 0, 0, 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local n = tonumber(os.getenv("ALVRYN_LOAD_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("ALVRYN_LOAD_TOKENS")) do
    if i % n == id then table.insert(pool, line) end
    i = i + 1
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local t = table.remove(pool)
  if t == nil then
    -- Every token of this thread is in flight or lost: ask for a health
    -- check instead (counted, and reported at the end).
    fallbacks = fallbacks + 1
    return wrk.format("GET", "/healthz", {}, nil)
  end
  return wrk.format(nil, "/auth/refresh", nil, '{"refresh_token":"' .. t .. '"}')
end

function response(status, headers, body)
  local t = body:match('"refresh_token":"([^"]+)"')
  if t then
    table.insert(pool, t)
    rotated = rotated + 1
  elseif status ~= 200 then
    lost = lost + 1
  end
end

function done(summary, latency, requests)
  local r, f, l = 0, 0, 0
  for _, t in ipairs(threads) do
    r = r + t:get("rotated")
    f = f + t:get("fallbacks")
    l = l + t:get("lost")
  end
  io.write(string.format("rotations: %d (%.0f/s), health-check fallbacks: %d, failed refreshes: %d\n",
    r, r / (summary.duration / 1e6), f, l))
end
