-- Request script for wrk: POST a body of BENCH_BODY_BYTES bytes (default
-- 1024) to the URL on wrk's command line. When BENCH_CALLBACK_URL is set,
-- every request carries it as X-Callback-Url. bench/load.py sets both.
local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "1024")
wrk.method = "POST"
wrk.body = string.rep("x", size)
wrk.headers["Content-Type"] = "application/octet-stream"
local callback_url = os.getenv("BENCH_CALLBACK_URL")
if callback_url ~= nil and callback_url ~= "" then
  wrk.headers["X-Callback-Url"] = callback_url
end
