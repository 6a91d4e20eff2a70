-- wrk script: POST one pre-made enrolment body per request, each thread its own slice,
-- so every request is a new device (a repeat would be an idempotent replay).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  local n = tonumber(os.getenv("WRK_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("WRK_BODIES")) do
    if i % n == id then table.insert(bodies, line) end
    i = i + 1
  end
  idx = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  idx = idx + 1
  if idx > #bodies then idx = 1 end
  return wrk.format(nil, "/api/v1/enrol", nil, bodies[idx])
end
