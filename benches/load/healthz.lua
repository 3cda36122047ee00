-- wrk script: GET /healthz, the ceiling of the HTTP stack. Like checkin.lua, the request is
-- formatted once in init() and handed out by request() on every call, so both runs pay the
-- same client-side cost per request (a Lua call) and the ratio compares the servers' work.
-- Prints the same summary line as checkin.lua.
local req

function init(args)
  req = wrk.format("GET", "/healthz")
end

function request()
  return req
end

function done(summary, latency, requests)
  io.write(string.format("p50_ms=%.3f p99_ms=%.3f requests_per_s=%.0f errors=%d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests / (summary.duration / 1000000),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
