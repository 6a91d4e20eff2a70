-- wrk script: each request is one simulated device asking for its desired state with
-- the ETag it holds (answered 304), over keep-alive HTTPS.
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  devices = {}
  local n = tonumber(os.getenv("WRK_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("WRK_DEVICES")) do
    if i % n == id then
      local did, token, etag = line:match("(%S+) (%S+) (%S+)")
      table.insert(devices, {path = "/api/v1/devices/" .. did .. "/desired",
                             headers = {["Authorization"] = "Bearer " .. token,
                                        ["If-None-Match"] = etag}})
    end
    i = i + 1
  end
  idx = 0
end

function request()
  idx = idx + 1
  if idx > #devices then idx = 1 end
  local d = devices[idx]
  return wrk.format("GET", d.path, d.headers)
end

function response(status, headers, body)
  if status ~= 304 then
    unexpected = (unexpected or 0) + 1
  end
end
