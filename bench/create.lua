-- wrk script: POST /v1/instances with a fresh name each time, labelled group=g0..g99 in turn (so that a
-- selector on one group matches 1% of what was created).
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"name":"bench-%d-%d","instance_type":"standard.micro","template":"busybox","labels":{"group":"g%d"}}', math.random(1, 1e9), n, n % 100)
  return wrk.format("POST", "/v1/instances", { ["Content-Type"] = "application/json", ["Authorization"] = wrk.headers["Authorization"] }, body)
end

local accepted = 0
response = function(status, headers, body)
  if status == 202 then accepted = accepted + 1 end
end
