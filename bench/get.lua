-- wrk script: GET with an optional bearer token ($BENCH_TOKEN); prints
-- requests/s and p99 in a parseable form.
function init(args)
  local token = os.getenv("BENCH_TOKEN")
  if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

function done(summary, latency, requests)
  io.write(string.format("BENCH rps=%.1f\n", summary.requests / (summary.duration / 1e6)))
  io.write(string.format("BENCH non2xx=%d\n", summary.errors.status))
  io.write(string.format("BENCH p50_ms=%.3f\n", latency:percentile(50) / 1000))
  io.write(string.format("BENCH p99_ms=%.2f\n", latency:percentile(99) / 1000))
end
