-- pipeline.lua: a wrk script that sends PIPELINE_DEPTH (default 16)
-- pipelined requests per write.
--
--   PIPELINE_CONNECTIONS=50 wrk -t1 -c50 -d5s --latency -s tests/bench/pipeline.lua URL
--
-- wrk parses the string request() returns once, at startup, and counts the
-- requests in it: it then writes the batch, waits for that many responses
-- before writing the next one, counts every response in requests/s, and
-- records one latency sample per batch (first byte written to last
-- response read).
--
-- Latency: before printing, wrk "corrects" its histogram for coordinated
-- omission with an expected interval of duration / (responses /
-- connections).  With pipelining that interval is DEPTH times too short,
-- so wrk adds many synthetic samples, some below the histogram's minimum
-- where its percentile walk never finds them: the "Latency Distribution" it
-- prints is wrong (wrk 4.1 shows "99% 0.00us").  done() below rebuilds the
-- measured per-batch histogram by undoing that correction (which needs
-- PIPELINE_CONNECTIONS = wrk -c) and prints one line:
--   PIPELINE_LATENCY batches=N depth=D mean_us=.. p50_us=.. p90_us=.. p99_us=.. max_us=..
local depth = tonumber(os.getenv("PIPELINE_DEPTH")) or 16
local path = os.getenv("PIPELINE_PATH") or "/"
local one = "GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n"
local batch = one:rep(depth)

function init(args)
  batch = one:rep(depth)
end

function request()
  return batch
end

-- wrk's stats_correct(stats, expected): for each bucket n >= 2*expected
-- holding c samples, c more samples at n - expected, n - 2*expected, ...
-- while above expected.  Buckets are read before anything is added to
-- them, so the measured counts come back by walking the buckets downwards:
-- measured(v) = shown(v) - (sum of measured(w) for w > v, w = v mod expected)
-- when v > expected.
local function measured_histogram(latency, expected)
  local vals, shown = {}, {}
  for i = 1, #latency do
    local v, c = latency(i)
    vals[#vals + 1] = v
    shown[v] = c
  end
  table.sort(vals)
  local counts, acc = {}, {}
  for i = #vals, 1, -1 do
    local v = vals[i]
    local c = shown[v]
    if expected > 0 and v > expected then
      local r = v % expected
      c = c - (acc[r] or 0)
      acc[r] = (acc[r] or 0) + c
    end
    counts[v] = c
  end
  return vals, counts
end

function done(summary, latency, requests)
  local conns = tonumber(os.getenv("PIPELINE_CONNECTIONS"))
  if not conns then
    io.write("PIPELINE_LATENCY unavailable: set PIPELINE_CONNECTIONS to wrk -c\n")
    return
  end
  local per_conn = math.floor(summary.requests / conns)
  local expected = per_conn > 0 and math.floor(summary.duration / per_conn) or 0
  local vals, counts = measured_histogram(latency, expected)
  local total, sum = 0, 0
  for _, v in ipairs(vals) do
    if counts[v] < 0 then
      io.write("PIPELINE_LATENCY unavailable: histogram does not match wrk's correction\n")
      return
    end
    total = total + counts[v]
    sum = sum + v * counts[v]
  end
  if total == 0 then
    io.write("PIPELINE_LATENCY unavailable: no samples\n")
    return
  end
  local function pct(p)
    local rank = math.max(1, math.ceil(p / 100 * total))
    local seen = 0
    for _, v in ipairs(vals) do
      seen = seen + counts[v]
      if seen >= rank then return v end
    end
    return vals[#vals]
  end
  io.write(("PIPELINE_LATENCY batches=%d depth=%d mean_us=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d\n")
    :format(total, depth, sum / total, pct(50), pct(90), pct(99), vals[#vals]))
end
