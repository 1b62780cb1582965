-- wrk script for tools/loadtest.sh: POST /v1/generate with a new seed and a class in turn per
-- request; counts answers by status and reports p50/p99 latency and images/s.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  n = 0
  key = os.getenv("DIFFORGE_KEY")
end

function request()
  n = n + 1
  local body = string.format('{"class": %d, "seed": %d, "n": 1}', n % 10, id * 1000000 + n)
  local headers = { ["Content-Type"] = "application/json" }
  if key and key ~= "" then headers["Authorization"] = "Bearer " .. key end
  return wrk.format("POST", "/v1/generate", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local ok, refused, server_errors, other = totals[200] or 0, totals[429] or 0, 0, 0
  for status, count in pairs(totals) do
    if status >= 500 then server_errors = server_errors + count
    elseif status ~= 200 and status ~= 429 then other = other + count end
  end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT ok=%d refused_429=%d server_5xx=%d other=%d socket_errors=%d p50_ms=%.0f p99_ms=%.0f images_per_s=%.2f seconds=%.1f\n",
    ok, refused, server_errors, other, e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000, ok / seconds, seconds))
end
