-- wrk script: POST /v1/checkin for random seeded terminals, each with its customer's
-- terminal token (what a real terminal sends).
-- usage: wrk -s benches/load/checkin.lua URL -- TERMINALS_CSV ADMIN_TOKEN [COMMAND_PERCENT] [nonce]
-- With `nonce`, every check-in carries one, which asks for a freshly decided and signed
-- answer (the server's answer cache is bypassed): the cost of a terminal's first check-in
-- of the day.
-- With COMMAND_PERCENT > 0, that share of requests are support commands instead
-- (PUT /v1/licenses/{id}/resources toggling habilita_dav, with the admin token), for the
-- mixed run. Requests are formatted once in init() so the client spends its CPU on sending,
-- as it does for /healthz.

local checkins = {}
local commands = {}
local command_percent = 0

function init(args)
  local path = args[1]
  local admin = args[2] or ""
  command_percent = tonumber(args[3] or "0")
  local nonce = ""
  if args[4] == "nonce" then nonce = ',"nonce":"load-' .. tostring(math.random(1000000)) .. '"' end
  for line in io.lines(path) do
    local cnpj, hw, key, id, token = line:match("([^,]+),([^,]+),([^,]+),([^,]+),?([^,]*)")
    if cnpj then
      if token == nil or token == "" then token = admin end
      local body = string.format(
        '{"cnpj":"%s","product":"easycash","hardware_id":"%s","hardware_key":"%s","ip":"192.168.0.10"%s}',
        cnpj, hw, key, nonce)
      checkins[#checkins + 1] = wrk.format("POST", "/v1/checkin", {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. token,
      }, body)
      if command_percent > 0 then
        for _, on in ipairs({ "true", "false" }) do
          commands[#commands + 1] = wrk.format("PUT", "/v1/licenses/" .. id .. "/resources", {
            ["Content-Type"] = "application/json",
            ["Authorization"] = "Bearer " .. admin,
          }, string.format('{"resources":{"habilita_dav":%s}}', on))
        end
      end
    end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  if command_percent > 0 and math.random(100) <= command_percent then
    return commands[math.random(#commands)]
  end
  return checkins[math.random(#checkins)]
end

function done(summary, latency, requests)
  io.write(string.format("p50_ms=%.3f p99_ms=%.3f requests_per_s=%.0f errors=%d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests / (summary.duration / 1000000),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
