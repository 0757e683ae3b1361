-- wrk script: POST a small JSON body (100 bytes, like a small inference request) and, when done,
-- print one machine-readable line that run.py parses (no scraping of wrk's human output).
-- No response() hook on purpose: defining one makes wrk build a Lua table per response and the
-- load generator shares its CPU with the upstreams.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"minilm","inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["hello world"]}]}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"body_bytes":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, #wrk.body))
end
