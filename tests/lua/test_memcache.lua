-- Tests for lua/ringline/memcache.lua: every command's fields, memcached's
-- token and number rules, malformed lines, limits, and a pipelined stream
-- (storage commands with data blocks, gets with many keys, noreply, a
-- refused value swallowed, a bad data chunk) split at every position and
-- fed one byte at a time.
local ffi = require "ffi"
local slice = require "ringline.slice"
local mc = require "ringline.memcache"
local t = require "testutil"

local eq, raises = t.eq, t.raises
local concat = table.concat

local T = {}

local function q(str) return ("%q"):format(str) end

-- A slice over a fresh copy of str; keep buf alive while using the slice.
local function mkbuf(str)
  local buf = ffi.new("uint8_t[?]", #str + 1)
  ffi.copy(buf, str, #str)
  return slice.new(buf, #str), buf
end

local NAMES = {}
for _, k in ipairs{ "ERROR", "GET", "GETS", "GAT", "GATS", "SET", "ADD",
    "REPLACE", "APPEND", "PREPEND", "CAS", "DELETE", "INCR", "DECR", "TOUCH",
    "FLUSH_ALL", "VERSION", "VERBOSITY", "STATS", "QUIT", "SHUTDOWN" } do
  NAMES[mc[k]] = k
end

-- Everything parse recorded for one command, as one string.
local function describe(req, s, pos, n)
  local parts = { NAMES[req.op] or tostring(req.op), "n=" .. n }
  if req.err then parts[#parts + 1] = "err=" .. req.err:gsub("\r\n$", "") end
  if req.noreply then parts[#parts + 1] = "noreply" end
  if req.swallow > 0 then parts[#parts + 1] = "swallow=" .. req.swallow end
  local toks = {}
  local last = req.nt - 1
  if last > mc.MAX_TOKENS and not (req.op >= mc.GET and req.op <= mc.GATS) then
    last = mc.MAX_TOKENS
  end
  for i = 0, last do toks[#toks + 1] = req:key_string(s, i) end
  parts[#parts + 1] = "[" .. concat(toks, "|") .. "]"
  if not req.err then
    local op = req.op
    if op >= mc.SET and op <= mc.CAS then
      parts[#parts + 1] = ("flags=%d exp=%d vlen=%d data=%s"):format(
        req.flags, req.exptime, req.vlen,
        ffi.string(s.base + req.data_off, req.vlen))
      eq(req.data_off, pos + n - req.vlen - 2, "data_off")
      if op == mc.CAS then
        parts[#parts + 1] = "cas=" .. tostring(req.u64[0])
      end
    elseif op == mc.INCR or op == mc.DECR then
      parts[#parts + 1] = "delta=" .. tostring(req.u64[0])
    elseif op == mc.TOUCH or op == mc.GAT or op == mc.GATS
        or op == mc.FLUSH_ALL then
      parts[#parts + 1] = "exp=" .. req.exptime
    end
    if op >= mc.GET and op <= mc.GATS then
      parts[#parts + 1] = "key=" .. req.key
    end
  end
  return concat(parts, " ")
end

-- Parse one command out of str (from off): n, description.
local function one(str, opts, off)
  local s, buf = mkbuf(str)
  local req = mc.new_request(opts)
  local n = mc.parse(s, req, off or 0)
  local d = n > 0 and describe(req, s, off or 0, n) or nil
  local _ = buf
  return n, d, req
end

local function ok(str, want, opts)
  local n, d = one(str, opts)
  if n <= 0 then
    error(("parse of %s returned %d"):format(q(str), n), 2)
  end
  if d ~= want then
    error(("parse of %s:\n expected %s\n      got %s"):format(q(str), want, d),
      2)
  end
end

-- Drive the parser the way a service does: chunks arrive one after the
-- other, unconsumed bytes are offered again with the next chunk, swallowed
-- blocks are skipped across chunks.  Returns the list of descriptions
-- ("CLOSE" for -1) and the bytes left unconsumed.
local function drive(chunks, opts)
  local req = mc.new_request(opts)
  local pending, swallow = "", 0
  local outs = {}
  for _, ch in ipairs(chunks) do
    local data = pending .. ch
    local pos = 0
    if swallow > 0 then
      local k = math.min(swallow, #data)
      swallow, pos = swallow - k, k
    end
    local s, buf = mkbuf(data)
    while pos < #data do
      local n = mc.parse(s, req, pos)
      if n == -2 then break end
      if n == -1 then
        outs[#outs + 1] = "CLOSE"
        return outs, ""
      end
      outs[#outs + 1] = describe(req, s, pos, n)
      pos, swallow = mc.skip_refused(req, pos + n, #data)
    end
    local _ = buf
    pending = data:sub(pos + 1)
  end
  return outs, pending
end

---------------------------------------------------------------------------
-- commands and their fields

T.skip_refused = function()
  local req = mc.new_request()
  req.swallow = 0
  eq(select("#", mc.skip_refused(req, 7, 10)), 2)
  local p, left = mc.skip_refused(req, 7, 10)
  eq(p, 7) eq(left, 0)
  req.swallow = 3
  p, left = mc.skip_refused(req, 7, 10)
  eq(p, 10) eq(left, 0)          -- the block ends the offer exactly
  req.swallow = 5
  p, left = mc.skip_refused(req, 7, 10)
  eq(p, 10) eq(left, 2)          -- two more bytes to come
end

T.get_family = function()
  ok("get foo\r\n", "GET n=9 [get|foo] key=1")
  ok("get a bb ccc\r\n", "GET n=14 [get|a|bb|ccc] key=1")
  ok("gets a b\r\n", "GETS n=10 [gets|a|b] key=1")
  ok("bget a\r\n", "GET n=8 [bget|a] key=1")
  ok("gat 100 a b\r\n", "GAT n=13 [gat|100|a|b] exp=100 key=2")
  ok("gats -1 a\r\n", "GATS n=11 [gats|-1|a] exp=-1 key=2")
  ok("gat 10\r\n", "GAT n=8 [gat|10] exp=10 key=2")   -- no keys: just END
  -- bare LF, extra spaces, a lone CR kept in the last key
  ok("get foo\n", "GET n=8 [get|foo] key=1")
  ok("  get   a  b  \r\n", "GET n=16 [get|a|b] key=1")
  ok("get ab\r\r\n", "GET n=9 [get|ab\r] key=1")
  -- only the space separates: tabs and control bytes are part of a key
  ok("get a\tb \1x\r\n", "GET n=12 [get|a\tb|\1x] key=1")
  -- a NUL ends the line (memcached works on C strings)
  ok("get ab\0zz\r\n", "GET n=11 [get|ab] key=1")
  -- more keys than memcached's 24 tokens: all recorded
  local keys = {}
  for i = 1, 100 do keys[i] = "k" .. i end
  local line = "get " .. concat(keys, " ") .. "\r\n"
  ok(line, ("GET n=%d [get|%s] key=1"):format(#line, concat(keys, "|")))
end

T.storage_commands = function()
  ok("set k 1 2 3\r\nabc\r\n",
    "SET n=18 [set|k|1|2|3] flags=1 exp=2 vlen=3 data=abc")
  ok("add k 0 0 0\r\n\r\n", "ADD n=15 [add|k|0|0|0] flags=0 exp=0 vlen=0 data=")
  ok("replace k 4294967295 -1 2\r\n\r\n\r\n",
    "REPLACE n=31 [replace|k|4294967295|-1|2] flags=4294967295 exp=-1 " ..
    "vlen=2 data=\r\n")
  ok("append k 0 0 1 noreply\r\nx\r\n",
    "APPEND n=27 noreply [append|k|0|0|1|noreply] flags=0 exp=0 vlen=1 data=x")
  ok("prepend k 0 0 1\nx\r\n",
    "PREPEND n=19 [prepend|k|0|0|1] flags=0 exp=0 vlen=1 data=x")
  ok("cas k 0 0 1 12345\r\nx\r\n",
    "CAS n=22 [cas|k|0|0|1|12345] flags=0 exp=0 vlen=1 data=x cas=12345ULL")
  ok("cas k 0 0 1 18446744073709551615 noreply\r\nx\r\n",
    "CAS n=45 noreply [cas|k|0|0|1|18446744073709551615|noreply] flags=0 " ..
    "exp=0 vlen=1 data=x cas=18446744073709551615ULL")
  -- a 6th token that is not noreply is ignored, as memcached does
  ok("set k 0 0 1 extra\r\nx\r\n",
    "SET n=22 [set|k|0|0|1|extra] flags=0 exp=0 vlen=1 data=x")
  -- the data block may hold CR, LF, NUL and spaces
  ok("set k 0 0 6\r\n\r\n\0 \n\r\r\n",
    "SET n=21 [set|k|0|0|6] flags=0 exp=0 vlen=6 data=\r\n\0 \n\r")
  -- the data block is not there yet
  eq(one("set k 0 0 3\r\nab"), -2, "partial block")
  eq(one("set k 0 0 3\r\nabc\r"), -2, "block without its LF")
  eq(one("set k 0 0 3\r\n"), -2, "no block yet")
end

T.other_commands = function()
  ok("delete k\r\n", "DELETE n=10 [delete|k]")
  ok("delete k 0\r\n", "DELETE n=12 [delete|k|0]")
  ok("delete k noreply\r\n", "DELETE n=18 noreply [delete|k|noreply]")
  ok("delete k 0 noreply\r\n", "DELETE n=20 noreply [delete|k|0|noreply]")
  ok("incr k 5\r\n", "INCR n=10 [incr|k|5] delta=5ULL")
  ok("decr k 18446744073709551615 noreply\r\n",
    "DECR n=37 noreply [decr|k|18446744073709551615|noreply] " ..
    "delta=18446744073709551615ULL")
  ok("touch k 10\r\n", "TOUCH n=12 [touch|k|10] exp=10")
  ok("touch k 10 junk\r\n", "TOUCH n=17 [touch|k|10|junk] exp=10")
  ok("flush_all\r\n", "FLUSH_ALL n=11 [flush_all] exp=0")
  ok("flush_all 30\r\n", "FLUSH_ALL n=14 [flush_all|30] exp=30")
  ok("flush_all noreply\r\n", "FLUSH_ALL n=19 noreply [flush_all|noreply] exp=0")
  ok("flush_all 5 noreply\r\n",
    "FLUSH_ALL n=21 noreply [flush_all|5|noreply] exp=5")
  ok("flush_all 5 6\r\n", "FLUSH_ALL n=15 [flush_all|5|6] exp=5")
  ok("version\r\n", "VERSION n=9 [version]")
  ok("version x y\r\n", "VERSION n=13 [version|x|y]")
  ok("verbosity 1\r\n", "VERBOSITY n=13 [verbosity|1]")
  ok("verbosity 1 noreply\r\n", "VERBOSITY n=21 noreply [verbosity|1|noreply]")
  ok("stats\r\n", "STATS n=7 [stats]")
  ok("stats settings\r\n", "STATS n=16 [stats|settings]")
  ok("quit\r\n", "QUIT n=6 [quit]")
  local n, _, req = one("verbosity 7\r\n")
  eq(n, 13)
  eq(req.level, 7, "verbosity level")
end

---------------------------------------------------------------------------
-- errors

T.unknown_and_wrong_token_counts = function()
  local E = "err=ERROR"
  ok("\r\n", "ERROR n=2 " .. E .. " [\r]")  -- one byte: CR kept
  ok("   \r\n", "ERROR n=5 " .. E .. " []")
  ok("\n", "ERROR n=1 " .. E .. " []")
  ok("\0get a\r\n", "ERROR n=8 " .. E .. " []")
  ok("GET a\r\n", "ERROR n=7 " .. E .. " [GET|a]")
  ok("g a\r\n", "ERROR n=5 " .. E .. " [g|a]")
  ok("mg foo v\r\n", "ERROR n=10 " .. E .. " [mg|foo|v]")
  ok("get\ta\r\n", "ERROR n=7 " .. E .. " [get\ta]")
  ok("get\r\n", "GET n=5 " .. E .. " [get]")
  ok("gat\r\n", "GAT n=5 " .. E .. " [gat]")
  ok("set k 0 0\r\n", "SET n=11 " .. E .. " [set|k|0|0]")
  ok("set k 0 0 1 noreply x\r\n", "SET n=23 " .. E ..
    " [set|k|0|0|1|noreply|x]")
  ok("cas k 0 0 1\r\n", "CAS n=13 " .. E .. " [cas|k|0|0|1]")
  ok("delete\r\n", "DELETE n=8 " .. E .. " [delete]")
  ok("delete a 0 noreply x\r\n", "DELETE n=22 " .. E ..
    " [delete|a|0|noreply|x]")
  ok("incr k\r\n", "INCR n=8 " .. E .. " [incr|k]")
  ok("touch k 1 2 3\r\n", "TOUCH n=15 " .. E .. " [touch|k|1|2|3]")
  ok("flush_all 1 2 3\r\n", "FLUSH_ALL n=17 " .. E .. " [flush_all|1|2|3]")
  ok("verbosity\r\n", "VERBOSITY n=11 " .. E .. " [verbosity]")
  ok("shutdown\r\n",
    "SHUTDOWN n=10 err=ERROR: shutdown not enabled [shutdown]")
  -- Tokens after the 24th are counted, not recorded, except get keys.
  local many = "set" .. (" x"):rep(30) .. "\r\n"
  local n, d = one(many)
  eq(n, #many)
  eq(d:match("^SET n=%d+ err=ERROR ") ~= nil, true, d)
end

T.client_errors = function()
  local F = "err=CLIENT_ERROR bad command line format"
  local k250, k251 = ("k"):rep(250), ("k"):rep(251)
  ok("get " .. k250 .. "\r\n", ("GET n=%d [get|%s] key=1"):format(256, k250))
  ok("get " .. k251 .. "\r\n", ("GET n=%d %s [get|%s]"):format(257, F, k251))
  ok("get a " .. k251 .. " b\r\n",
    ("GET n=%d %s [get|a|%s|b]"):format(261, F, k251))
  ok("gat 1 " .. k251 .. "\r\n",
    ("GAT n=%d %s [gat|1|%s]"):format(259, F, k251))
  -- A bad storage line does not consume the block that follows it.
  ok("set " .. k251 .. " 0 0 1\r\nx\r\n",
    ("SET n=%d %s [set|%s|0|0|1]"):format(263, F, k251))
  ok("set k abc 0 1\r\nx\r\n", "SET n=15 " .. F .. " [set|k|abc|0|1]")
  ok("set k -1 0 1\r\nx\r\n", "SET n=14 " .. F .. " [set|k|-1|0|1]")
  ok("set k 0 x 1\r\nx\r\n", "SET n=13 " .. F .. " [set|k|0|x|1]")
  ok("set k 0 0 -1\r\nx\r\n", "SET n=14 " .. F .. " [set|k|0|0|-1]")
  ok("set k 0 0 1x\r\nx\r\n", "SET n=14 " .. F .. " [set|k|0|0|1x]")
  ok("set k 0 0 2147483646\r\n", "SET n=22 " .. F .. " [set|k|0|0|2147483646]")
  ok("set k 0 0 1 noreply\r\nab\r\n", "SET n=24 err=CLIENT_ERROR bad " ..
    "data chunk noreply [set|k|0|0|1|noreply]")
  ok("set k abc 0 1 noreply\r\n", "SET n=23 " .. F ..
    " noreply [set|k|abc|0|1|noreply]")
  ok("cas k 0 0 1 abc\r\nx\r\n", "CAS n=17 " .. F .. " [cas|k|0|0|1|abc]")
  ok("cas k 0 0 1 -1\r\nx\r\n", "CAS n=16 " .. F .. " [cas|k|0|0|1|-1]")
  ok("delete k x\r\n", "DELETE n=12 err=CLIENT_ERROR bad command line " ..
    "format.  Usage: delete <key> [noreply] [delete|k|x]")
  ok("delete k 1 noreply\r\n", "DELETE n=20 err=CLIENT_ERROR bad command " ..
    "line format.  Usage: delete <key> [noreply] noreply [delete|k|1|noreply]")
  ok("delete " .. k251 .. "\r\n",
    ("DELETE n=%d %s [delete|%s]"):format(260, F, k251))
  ok("incr k abc\r\n",
    "INCR n=12 err=CLIENT_ERROR invalid numeric delta argument [incr|k|abc]")
  ok("incr k -1\r\n",
    "INCR n=11 err=CLIENT_ERROR invalid numeric delta argument [incr|k|-1]")
  ok("incr k 18446744073709551616\r\n", "INCR n=29 err=CLIENT_ERROR invalid" ..
    " numeric delta argument [incr|k|18446744073709551616]")
  ok("touch k abc\r\n",
    "TOUCH n=13 err=CLIENT_ERROR invalid exptime argument [touch|k|abc]")
  ok("gat x k\r\n", "GAT n=9 err=CLIENT_ERROR invalid exptime argument " ..
    "[gat|x|k]")
  ok("flush_all x\r\n",
    "FLUSH_ALL n=13 err=CLIENT_ERROR invalid exptime argument [flush_all|x]")
  ok("flush_all noreply 5\r\n", "FLUSH_ALL n=21 err=CLIENT_ERROR invalid " ..
    "exptime argument [flush_all|noreply|5]")
  ok("verbosity x\r\n", "VERBOSITY n=13 " .. F .. " [verbosity|x]")
end

T.bad_data_chunk_consumes_the_block = function()
  -- The block is read as declared (bytes + 2) and must end in CRLF; what
  -- follows it is the next command.
  local outs = drive({ "set a 0 0 1\r\nab\r\nget a\r\n" })
  eq(outs[1], "SET n=16 err=CLIENT_ERROR bad data chunk [set|a|0|0|1]")
  eq(outs[2], "ERROR n=1 err=ERROR []")
  eq(outs[3], "GET n=7 [get|a] key=1")
  outs = drive({ "set a 0 0 3\r\nabc\nget a\r\n" })
  eq(outs[1], "SET n=18 err=CLIENT_ERROR bad data chunk [set|a|0|0|3]")
  eq(outs[2], "ERROR n=6 err=ERROR [et|a]")
end

T.too_large_values_are_swallowed = function()
  local opts = { item_max = 1048576 }
  -- memcached's item overhead: 56 + key + 1 + 2 (+ 4 with flags)
  local max3 = 1048576 - 56 - 4 - 2
  eq(max3, 1048514, "largest value under a 3-byte key")
  local v = ("v"):rep(max3)
  local n = one("set big 0 0 " .. max3 .. "\r\n" .. v .. "\r\n", opts)
  eq(n, 23 + max3, "largest value stored")
  n = one("set big 5 0 " .. max3 .. "\r\n" .. v .. "\r\n", opts)
  eq(n, 21, "with flags, 4 bytes less")
  local d
  n, d = one("set big 0 0 " .. (max3 + 1) .. "\r\n", opts)
  eq(n, 21, "line only")
  eq(d, "SET n=21 err=SERVER_ERROR object too large for cache swallow=" ..
    (max3 + 3) .. " [set|big|0|0|1048515]")
  -- noreply hides the error, the block is still swallowed
  n, d = one("set big 0 0 2000000 noreply\r\n", opts)
  eq(d, "SET n=29 err=SERVER_ERROR object too large for cache noreply " ..
    "swallow=2000002 [set|big|0|0|2000000|noreply]")
  -- the swallow spans chunks
  local outs, left = drive({ "set a 0 0 100\r\n", ("x"):rep(60),
    ("x"):rep(40) .. "\r", "\nget a\r\n" }, { item_max = 100 })
  eq(#outs, 2)
  eq(outs[1], "SET n=15 err=SERVER_ERROR object too large for cache " ..
    "swallow=102 [set|a|0|0|100]")
  eq(outs[2], "GET n=7 [get|a] key=1")
  eq(left, "")
end

T.numbers_like_memcached = function()
  local function i32(str)
    local s, buf = mkbuf(str)
    local v = mc.to_i32(s, 0, #str)
    local _ = buf
    return v
  end
  local function u32(str)
    local s, buf = mkbuf(str)
    local v = mc.to_u32(s, 0, #str)
    local _ = buf
    return v
  end
  local out = ffi.new("uint64_t[1]")
  local function u64(str)
    local s, buf = mkbuf(str)
    local okk = mc.to_u64(s, 0, #str, out)
    local _ = buf
    return okk and tostring(out[0]) or nil
  end
  -- safe_strtol: 64-bit long, then cut to int32
  eq(i32("0"), 0)
  eq(i32("-1"), -1)
  eq(i32("+7"), 7)
  eq(i32("2147483647"), 2147483647)
  eq(i32("2147483648"), -2147483648)
  eq(i32("4294967297"), 1)
  eq(i32("-4294967295"), 1)
  eq(i32("9223372036854775807"), -1)
  eq(i32("9223372036854775808"), nil, "over LONG_MAX")
  eq(i32("-9223372036854775808"), 0)
  eq(i32("-9223372036854775809"), nil, "under LONG_MIN")
  eq(i32("\t5"), 5, "leading whitespace")
  eq(i32("5\r"), 5, "trailing whitespace")
  eq(i32("5\rjunk"), 5, "after the whitespace: ignored")
  eq(i32("5x"), nil)
  eq(i32(""), nil)
  eq(i32("-"), nil)
  eq(i32("+"), nil)
  eq(i32("x5"), nil)
  eq(i32("000000000000000000000000000042"), 42, "leading zeros")
  -- safe_strtoul: cut to uint32; '-' only if the result stays < 2^63
  eq(u32("4294967295"), 4294967295)
  eq(u32("4294967296"), 0)
  eq(u32("4294967301"), 5)
  eq(u32("18446744073709551615"), 4294967295)
  eq(u32("18446744073709551616"), nil, "ERANGE")
  eq(u32("-0"), 0)
  eq(u32("-1"), nil)
  eq(u32("-9223372036854775808"), nil)
  eq(u32("-9223372036854775809"), 4294967295, "2^64 - (2^63 + 1)")
  -- safe_strtoull
  eq(u64("0"), "0ULL")
  eq(u64("18446744073709551615"), "18446744073709551615ULL")
  eq(u64("18446744073709551616"), nil)
  eq(u64("99999999999999999999"), nil)
  eq(u64("123456789012345678"), "123456789012345678ULL")
  eq(u64("-0"), "0ULL")
  eq(u64("-1"), nil)
  eq(u64("-18446744073709551615"), "1ULL")
  eq(u64("+3"), "3ULL")
  eq(u64("3abc"), nil)
  -- a stored value read by incr/decr: whitespace allowed around it
  eq(u64(" 12 "), "12ULL")
  eq(u64("12 abc"), "12ULL")
  eq(u64("12abc"), nil)
  eq(u64(""), nil)
  local s, buf = mkbuf("  007")
  eq(mc.value_u64(s.base, 5, out), true)
  eq(out[0], 7ULL)
  local _ = buf
end

T.expire_at = function()
  local now = 1700000000000
  eq(mc.expire_at(0, now), 0, "never")
  eq(mc.expire_at(-1, now), -1, "negative: expired")
  eq(mc.expire_at(1, now), now + 1000, "relative")
  eq(mc.expire_at(2592000, now), now + 2592000000, "30 days: relative")
  eq(mc.expire_at(2592001, now), 2592001000, "beyond: unix time")
  eq(mc.expire_at(1800000000, now), 1800000000000, "unix time")
end

T.long_lines = function()
  -- No newline within LINE_MAX bytes: wait; past it, close, unless it is
  -- a get/gets line (memcached's large multiget exception).
  eq(one(("x"):rep(2048)), -2)
  eq(one(("x"):rep(2049)), -1)
  eq(one("set k 0 0 1" .. (" "):rep(3000)), -1)
  eq(one("gat 0 " .. ("a "):rep(2000)), -1)
  eq(one("get " .. ("a "):rep(2000)), -2)
  eq(one("gets " .. ("a "):rep(2000)), -2)
  eq(one((" "):rep(100) .. "get " .. ("a "):rep(2000)), -2)
  eq(one((" "):rep(101) .. "get " .. ("a "):rep(2000)), -1)
  eq(one("get " .. ("a "):rep(2000), { max_get_line = 3000 }), -1)
  -- with its newline, a long line is just a line
  local n = one(("x"):rep(3000) .. "\r\n")
  eq(n, 3002)
  local line = "get " .. ("a "):rep(2000) .. "\r\n"
  n = one(line)
  eq(n, #line)
end

T.offsets_and_errors = function()
  local n, d = one("junkget k\r\n", nil, 4)
  eq(n, 7)
  eq(d, "GET n=7 [get|k] key=1")
  eq(one("get k\r\n", nil, 7), -2, "nothing at the end")
  raises("offset past the end", function() one("get k\r\n", nil, 8) end)
  raises("item_max", mc.new_request, { item_max = 0 })
  -- a slice from an earlier handler call
  local s, buf = mkbuf("get k\r\n")
  slice.release()
  raises("slice used after its handler returned", mc.parse, s,
    mc.new_request())
  local _ = buf
end

---------------------------------------------------------------------------
-- a pipelined stream, split everywhere

local STREAM = concat({
  "set alpha 1 0 5\r\nhello\r\n",
  "get alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu " ..
    "nu xi omicron pi rho sigma tau upsilon phi chi psi omega alpha2 " ..
    "beta2\r\n",
  "set crlf 0 100 4 noreply\r\n\r\n\r\n\r\n",
  "add k 4294967296 -1 0\r\n\r\n",
  "cas k 0 0 2 99 noreply\r\nok\r\n",
  "append k 0 0 3\r\nabc\r\n",
  "prepend k 0 0 1\nz\r\n",
  "incr n 18446744073709551615\r\n",
  "decr n 1 noreply\r\n",
  "touch k -5\r\n",
  "gat 60 a b c\r\n",
  "gats 2592001 k\r\n",
  "delete k 0 noreply\r\n",
  "set big 0 0 200\r\n" .. ("B"):rep(200) .. "\r\n",   -- swallowed
  "set bad 0 0 2\r\nabc\r\n",                              -- bad chunk
  "flush_all 10 noreply\r\n",
  "bogus command\r\n",
  "verbosity 1\r\n",
  "version\r\n",
  "stats\r\n",
  "quit\r\n",
})

local STREAM_WANT = {
  "SET n=24 [set|alpha|1|0|5] flags=1 exp=0 vlen=5 data=hello",
  "GET n=142 [get|alpha|beta|gamma|delta|epsilon|zeta|eta|theta|iota|kappa|" ..
    "lambda|mu|nu|xi|omicron|pi|rho|sigma|tau|upsilon|phi|chi|psi|omega|" ..
    "alpha2|beta2] key=1",
  "SET n=32 noreply [set|crlf|0|100|4|noreply] flags=0 exp=100 vlen=4 " ..
    "data=\r\n\r\n",
  "ADD n=25 [add|k|4294967296|-1|0] flags=0 exp=-1 vlen=0 data=",
  "CAS n=28 noreply [cas|k|0|0|2|99|noreply] flags=0 exp=0 vlen=2 data=ok " ..
    "cas=99ULL",
  "APPEND n=21 [append|k|0|0|3] flags=0 exp=0 vlen=3 data=abc",
  "PREPEND n=19 [prepend|k|0|0|1] flags=0 exp=0 vlen=1 data=z",
  "INCR n=29 [incr|n|18446744073709551615] delta=18446744073709551615ULL",
  "DECR n=18 noreply [decr|n|1|noreply] delta=1ULL",
  "TOUCH n=12 [touch|k|-5] exp=-5",
  "GAT n=14 [gat|60|a|b|c] exp=60 key=2",
  "GATS n=16 [gats|2592001|k] exp=2592001 key=2",
  "DELETE n=20 noreply [delete|k|0|noreply]",
  "SET n=17 err=SERVER_ERROR object too large for cache swallow=202 " ..
    "[set|big|0|0|200]",
  "SET n=19 err=CLIENT_ERROR bad data chunk [set|bad|0|0|2]",
  "ERROR n=1 err=ERROR []",
  "FLUSH_ALL n=22 noreply [flush_all|10|noreply] exp=10",
  "ERROR n=15 err=ERROR [bogus|command]",
  "VERBOSITY n=13 [verbosity|1]",
  "VERSION n=9 [version]",
  "STATS n=7 [stats]",
  "QUIT n=6 [quit]",
}

local OPTS = { item_max = 256 }

local function same_list(got, want, what)
  for i = 1, math.max(#got, #want) do
    if got[i] ~= want[i] then
      error(("%s: command %d:\n expected %s\n      got %s"):format(what, i,
        tostring(want[i]), tostring(got[i])), 2)
    end
  end
end

T.stream_whole = function()
  local outs, left = drive({ STREAM }, OPTS)
  same_list(outs, STREAM_WANT, "whole stream")
  eq(left, "", "nothing left")
end

T.stream_split_at_every_position = function()
  for k = 0, #STREAM do
    local outs, left = drive({ STREAM:sub(1, k), STREAM:sub(k + 1) }, OPTS)
    same_list(outs, STREAM_WANT, "split at " .. k)
    eq(left, "", "nothing left after split at " .. k)
  end
end

T.stream_split_in_three_everywhere = function()
  -- Two cut points, in steps, so every command boundary is crossed with
  -- several chunk layouts.
  for a = 0, #STREAM, 7 do
    for b = a, #STREAM, 13 do
      local outs, left = drive({ STREAM:sub(1, a), STREAM:sub(a + 1, b),
        STREAM:sub(b + 1) }, OPTS)
      same_list(outs, STREAM_WANT, ("split at %d, %d"):format(a, b))
      eq(left, "")
    end
  end
end

T.stream_one_byte_at_a_time = function()
  local chunks = {}
  for i = 1, #STREAM do chunks[i] = STREAM:sub(i, i) end
  local outs, left = drive(chunks, OPTS)
  same_list(outs, STREAM_WANT, "byte by byte")
  eq(left, "")
end

T.prefixes_need_more = function()
  -- Every proper prefix of a single command is incomplete (-2), never an
  -- answer, whatever command it is.
  for _, cmd in ipairs{ "set alpha 1 0 5\r\nhello\r\n",
      "cas k 0 0 2 99 noreply\r\nok\r\n", "get a b c\r\n",
      "delete k 0 noreply\r\n", "incr n 5\r\n" } do
    for k = 0, #cmd - 1 do
      eq(one(cmd:sub(1, k), OPTS), -2, "prefix " .. q(cmd:sub(1, k)))
    end
  end
end

-- Un-blacklist f and the Lua functions it reaches through upvalues.  A long
-- test run calls the parser from so many interpreted places that LuaJIT
-- may give up on a function (after ~11 aborted traces); what is measured
-- here is what the compiler makes of the parser from a fresh start.
local function jit_reenable(f, seen)
  if seen[f] or debug.getinfo(f, "S").what ~= "Lua" then return end
  seen[f] = true
  jit.on(f, true)
  for i = 1, math.huge do
    local name, v = debug.getupvalue(f, i)
    if not name then break end
    if type(v) == "function" then jit_reenable(v, seen) end
  end
end

-- Once compiled, parsing the common commands allocates nothing: a stream
-- of them parsed 10000 times grows the heap by less than 16 KiB.
T.steady_state_parsing_allocates_nothing = function()
  jit_reenable(mc.parse, {})
  jit.flush()
  local str = "get k1 k2 k3\r\nset key 5 3600 10\r\n0123456789\r\n" ..
    "gets a\r\ndelete key noreply\r\nincr n 5\r\ntouch k 10\r\n" ..
    "get " .. ("x"):rep(200) .. "\r\ncas k 0 0 1 77\r\nx\r\nversion\r\n"
  local s, buf = mkbuf(str)
  local req = mc.new_request()
  local size = #str
  local function run(times)
    local count = 0
    for _ = 1, times do
      local pos = 0
      while pos < size do
        local n = mc.parse(s, req, pos)
        if n <= 0 then error("parse failed at " .. pos) end
        pos = pos + n
        count = count + 1
      end
    end
    return count
  end
  for _ = 1, 5 do
    run(2000)
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    eq(run(10000), 90000)
    local grown = collectgarbage("count") - before
    collectgarbage("restart")
    if grown < 16 then
      local _ = buf
      return
    end
  end
  error("the parser allocates in steady state")
end

---------------------------------------------------------------------------
-- counters

T.counters_sum_rows_and_reset = function()
  local blk, rows = mc.local_counters(3)
  local C = mc.CTR
  for w = 0, 2 do
    local r = mc.row(blk, w)
    r[C.cmd_get] = r[C.cmd_get] + (w + 1) * 10
    r[C.curr_connections] = r[C.curr_connections] + 1
  end
  eq(mc.total(blk, rows, C.cmd_get), 60)
  eq(mc.total(blk, rows, C.curr_connections), 3)
  mc.reset(blk, rows)
  eq(mc.total(blk, rows, C.cmd_get), 0, "after reset")
  eq(mc.total(blk, rows, C.curr_connections), 3, "connections not reset")
  local r = mc.row(blk, 1)
  r[C.cmd_get] = r[C.cmd_get] + 1
  eq(mc.total(blk, rows, C.cmd_get), 1)
  eq(#mc.CTR_NAMES < 32, true, "counters fit a row")
end

return T
