-- wrk script for the benchmark harness (benchmarks/run.py): POST a JSON body read from a file,
-- and print one machine-readable result line with p50/p99 from wrk's own latency histogram.
--
--   wrk -t1 -c64 -d10s -s benchmarks/wrk_post.lua http://127.0.0.1:8080/v1/chat/completions -- body.json [header: value]...
--
-- args: [1] path of the request body (JSON); the rest are extra "Name: value" headers.
-- Output (last line): TG_RESULT requests=N duration_us=N p50_us=N p99_us=N errors=N non2xx=N

function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = "application/json"
   for i = 2, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      if name then wrk.headers[name] = value end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "TG_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect + e.read + e.write + e.timeout, e.status))
end
