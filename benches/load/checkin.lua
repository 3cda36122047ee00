-- wrk script: POST /v1/checkin for random seeded terminals.
-- usage: wrk -s benches/load/checkin.lua URL -- TERMINALS_CSV TOKEN [COMMAND_PERCENT]
-- With COMMAND_PERCENT > 0, that share of requests are support commands instead
-- (PUT /v1/licenses/{id}/resources toggling habilita_dav), for the mixed run.

local terminals = {}
local token = ""
local command_percent = 0
local toggle = false

function init(args)
  local path = args[1]
  token = args[2] or ""
  command_percent = tonumber(args[3] or "0")
  for line in io.lines(path) do
    local cnpj, hw, key, id = line:match("([^,]+),([^,]+),([^,]+),([^,]+)")
    if cnpj then
      terminals[#terminals + 1] = { cnpj = cnpj, hw = hw, key = key, id = id }
    end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  local t = terminals[math.random(#terminals)]
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }
  if command_percent > 0 and math.random(100) <= command_percent then
    toggle = not toggle
    local body = string.format('{"resources":{"habilita_dav":%s}}', tostring(toggle))
    return wrk.format("PUT", "/v1/licenses/" .. t.id .. "/resources", headers, body)
  end
  local body = string.format(
    '{"cnpj":"%s","product":"easycash","hardware_id":"%s","hardware_key":"%s","ip":"192.168.0.10"}',
    t.cnpj, t.hw, t.key)
  return wrk.format("POST", "/v1/checkin", headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("p50_ms=%.3f p99_ms=%.3f requests_per_s=%.0f errors=%d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests / (summary.duration / 1000000),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
