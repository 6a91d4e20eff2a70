-- wrk script: each request is one simulated device asking for its desired state with
-- the ETag it holds (answered 304), over keep-alive HTTPS. The requests are formatted
-- once, in init, and no response() is defined: wrk then hands nothing to Lua per
-- response, so the load generator spends its CPU on the connections, not the script
-- (a 304 costs the replica about 3x what it costs wrk; see replica_scaling.py).
-- wrk counts non-2xx/3xx answers itself; the bench checks the bytes read per request
-- to tell 304s from 200s.
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  requests = {}
  local n = tonumber(os.getenv("WRK_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("WRK_DEVICES")) do
    if i % n == id then
      local did, token, etag = line:match("(%S+) (%S+) (%S+)")
      table.insert(requests, wrk.format("GET", "/api/v1/devices/" .. did .. "/desired",
                                        {["Authorization"] = "Bearer " .. token,
                                         ["If-None-Match"] = etag}))
    end
    i = i + 1
  end
  idx = 0
end

function request()
  idx = idx + 1
  if idx > #requests then idx = 1 end
  return requests[idx]
end
