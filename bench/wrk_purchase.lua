-- wrk script for the HTTP stages of bench/run: every request is a distinct
-- purchase (its own request id) by a buyer with their own token from
-- TOKENS (lines "user jwt", cycled), so the gateway's identity check,
-- per-user rules and idempotency see what a real spike sends, and the
-- ceiling server gets byte-for-byte the same requests.
--
--   wrk -t1 -c64 -d5s -s bench/wrk_purchase.lua URL -- SKU RUN_ID TOKENS
--
-- done() prints one line "WRKJSON {...}" with the totals and the count of
-- answers by HTTP status, which bench/run checks (a stage whose answers are
-- not the expected status measured the wrong thing).

local threads = {}
local thread_no = 0

function setup(thread)
	thread_no = thread_no + 1
	thread:set("tid", thread_no)
	table.insert(threads, thread)
end

local sku, run, n, auth
local headers = { ["Content-Type"] = "application/json" }

function init(args)
	sku = args[1] or "bench-accept"
	run = (args[2] or "wrk") .. "-" .. tostring(tid)
	n = 0
	auth = {}
	local f = assert(io.open(assert(args[3], "no TOKENS file"), "r"))
	for line in f:lines() do
		local tok = line:match("^%S+ (%S+)$")
		if tok then
			table.insert(auth, "Bearer " .. tok)
		end
	end
	f:close()
	assert(#auth > 0, "TOKENS holds no token")
	-- Threads start apart in the pool so they do not share buyers early.
	n = math.floor((tid - 1) * #auth / 16)
end

function request()
	n = n + 1
	local id = run .. "-" .. n
	local body = '{"request_id":"' .. id .. '","sku":"' .. sku .. '","qty":1}'
	headers["Authorization"] = auth[(n % #auth) + 1]
	return wrk.format("POST", "/v1/purchases", headers, body)
end

-- thread:get() copies only strings, numbers and booleans between Lua
-- states: each status count is a global "st_<code>", "seen" lists the codes.
seen = ""

function response(status, hdrs, body)
	local k = "st_" .. status
	local v = _G[k]
	if v == nil then
		v = 0
		seen = seen .. status .. ","
	end
	_G[k] = v + 1
end

function done(summary, latency, requests)
	local merged = {}
	for _, t in ipairs(threads) do
		for code in string.gmatch(t:get("seen") or "", "(%d+),") do
			merged[code] = (merged[code] or 0) + (t:get("st_" .. code) or 0)
		end
	end
	local parts = {}
	for k, v in pairs(merged) do
		table.insert(parts, string.format('"%s":%d', k, v))
	end
	local e = summary.errors
	io.write(string.format(
		'WRKJSON {"requests":%d,"duration_s":%.6f,"rps":%.1f,' ..
		'"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
		'"latency_ms":{"p50":%.3f,"p99":%.3f,"p999":%.3f,"max":%.3f},' ..
		'"status":{%s}}\n',
		summary.requests, summary.duration / 1e6,
		summary.requests / (summary.duration / 1e6),
		e.connect, e.read, e.write, e.status, e.timeout,
		latency:percentile(50) / 1000, latency:percentile(99) / 1000,
		latency:percentile(99.9) / 1000, latency.max / 1000,
		table.concat(parts, ",")))
end
