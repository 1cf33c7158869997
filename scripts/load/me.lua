-- wrk script: GET /auth/me with a bearer token from $ALVRYN_LOAD_ACCESS.
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("ALVRYN_LOAD_ACCESS")
end
