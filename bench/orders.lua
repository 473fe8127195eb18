-- wrk script: POST /api/v1/orders with a fresh Idempotency-Key per request,
-- customer tokens taken in turn from $BENCH_TOKENS (comma-separated), skus
-- from $BENCH_SKUS. Counts answers that are 201 + "confirmed" and the rest,
-- and prints them with the latency percentiles at the end.
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  for t in string.gmatch(os.getenv("BENCH_TOKENS") or "", "[^,]+") do
    table.insert(tokens, t)
  end
  skus = {}
  for s in string.gmatch(os.getenv("BENCH_SKUS") or "BENCH-0", "[^,]+") do
    table.insert(skus, s)
  end
  n = 0
  confirmed = 0
  other = 0
  math.randomseed(os.time() + tid * 7919)
  run = math.random(1, 2000000000)
end

function request()
  n = n + 1
  local token = tokens[(n % #tokens) + 1]
  local sku = skus[(n % #skus) + 1]
  local body = '{"items":[{"sku":"' .. sku .. '","quantity":1}],'
    .. '"shipping_address":{"name":"Bench","line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"},'
    .. '"payment_method":"tok_visa"}'
  return wrk.format("POST", "/api/v1/orders", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "bench-" .. run .. "-" .. tid .. "-" .. n,
  }, body)
end

function response(status, headers, body)
  if status == 201 and string.find(body, '"status":"confirmed"', 1, true) then
    confirmed = confirmed + 1
  else
    other = other + 1
    if other <= 3 then
      io.stderr:write("unexpected answer " .. status .. ": " .. string.sub(body, 1, 300) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("confirmed")
    o = o + t:get("other")
  end
  io.write(string.format("BENCH confirmed=%d other=%d errors=%d\n", c, o,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status))
  io.write(string.format("BENCH rps=%.1f\n", summary.requests / (summary.duration / 1e6)))
  for _, p in ipairs({50, 95, 99}) do
    io.write(string.format("BENCH p%d_ms=%.2f\n", p, latency:percentile(p) / 1000))
  end
end
