-- wrk script (benchmarks/serving.py): POST the image file named in WRK_BODY as the raw request body,
-- with the TorchServe inference key from WRK_TOKEN, and print one machine-readable summary line.
local file = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN")

function done(summary, latency, requests)
  local e = summary.errors
  -- requests slower than 1 s: latency(i) is the i-th distinct latency (microseconds) and its count
  local over_1s = 0
  for i = 1, #latency do
    local us, count = latency(i)
    if us > 1000000 then over_1s = over_1s + count end
  end
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "over_1s": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, over_1s))
end
