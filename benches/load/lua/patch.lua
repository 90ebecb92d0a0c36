-- wrk script: the update-contact PATCH, configured by environment variables (set by run.sh).
--   LOAD_BODY_FILE      request body (required)
--   LOAD_BEARER         Authorization bearer token (required)
--   LOAD_SESSION        X-Session-Token for every request (required unless LOAD_SESSION_PREFIX)
--   LOAD_SESSION_PREFIX if set: a distinct X-Session-Token per request, PREFIX..N (cache misses)
--   LOAD_STOP_AFTER     if set: stop sending after that many responses (per wrk thread; run.sh
--                       uses -t1). wrk then idles until -d ends: run.sh interrupts it.
-- The path comes from the URL given to wrk.

local function env(name, required)
  local v = os.getenv(name)
  if v == "" then v = nil end
  if required and not v then error(name .. " is not set") end
  return v
end

local f = assert(io.open(env("LOAD_BODY_FILE", true), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "PATCH"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. env("LOAD_BEARER", true)

local prefix = env("LOAD_SESSION_PREFIX", false)
if prefix then
  -- Defining request() makes wrk build every request in Lua: slower for wrk, so only here.
  local n = 0
  function request()
    n = n + 1
    wrk.headers["X-Session-Token"] = prefix .. n
    return wrk.format()
  end
else
  wrk.headers["X-Session-Token"] = env("LOAD_SESSION", true)
end

local stop_after = tonumber(env("LOAD_STOP_AFTER", false) or "")
if stop_after then
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen >= stop_after then
      wrk.thread:stop()
    end
  end
end
