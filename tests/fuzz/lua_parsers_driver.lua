-- tests/fuzz/lua_parsers_driver.lua: the Lua side of fuzz_lua_parsers.c.
--
-- One fuzz input is a connection's byte stream for one protocol parser:
--   byte 0   parser (bits 0-1: resp, memcache, http, chunked body; bit 3
--            with http: response heads, not requests) and limits (bit 2:
--            the defaults, or small ones that the input can reach)
--   byte 1   how the stream arrives: 255 = its first 256 bytes one at a
--            time, then the rest; else (byte % 16) arrival lengths follow,
--            one byte each (1 + byte), and the rest is the last arrival
--   the rest the stream
-- The stream is fed twice, as the real on_data loops in scripts/ and
-- lua/ringline/http/server.lua feed it: once whole, once in those
-- arrivals.  Each arrival is offered as a slice over the bytes left
-- unconsumed plus the new ones (contiguous, as the C core re-offers them);
-- the parser is called from offset 0 until it needs more or fails.  The
-- parsed messages (normalised to strings) and the final verdict (error,
-- or bytes left pending) must be the same both ways.  Any error raised,
-- a consumed count out of range, or a disagreement raises here, and the
-- C harness aborts with the message.
--
-- The bytes live in guarded memory from the harness: every other arrival
-- starts right after a PROT_NONE page, the others end right before one,
-- so a read before the start or past the end of the slice faults.  (The
-- LuaJIT interpreter and its traces are not instrumented by ASan.)  In
-- the first layout the bytes after the end hold CR LF CR LF "0" CR LF, so
-- a read there changes what is parsed and shows up as a disagreement.
local ffi = require "ffi"
local slice = require "ringline.slice"
local R = require "ringline.resp"
local mc = require "ringline.memcache"
local P = require "ringline.http.parser"

local fmt, concat, byte = string.format, table.concat, string.byte
local floor = math.floor

local M = {}

local head, tail, cap   -- uint8_t *: after the front guard / at the back one
local flip = false
local POISON = "\r\n\r\n0\r\n"

function M.init(head_ud, tail_ud, capacity)
  head = ffi.cast("uint8_t *", head_ud)
  tail = ffi.cast("uint8_t *", tail_ud)
  cap = capacity
end

local function fail(...)
  error(fmt(...), 0)
end

-- A slice over a copy of str in guarded memory.
local function place(str)
  local n = #str
  if n + #POISON > cap then fail("stream over the harness capacity") end
  flip = not flip
  local p
  if flip then
    p = head
    ffi.copy(p + n, POISON, #POISON)
  else
    p = tail - n
  end
  ffi.copy(p, str, n)
  return slice.new(p, n)
end

local function is_int(n)
  return type(n) == "number" and n == floor(n)
end

local function q(v)
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end

---------------------------------------------------------------------------
-- RESP (scripts/redis.lua's on_data)

local resp = {}

local RESP_SMALL = { max_args = 8, max_bulk = 64, max_inline = 128 }

function resp.new(small)
  return { cmd = R.new_command(2), limits = small and RESP_SMALL or nil,
    want = 0 }
end

local function resp_norm(cmd, s, off, n)
  local argc = cmd.argc
  local out = { "cmd" }
  for i = 1, argc do
    local str = cmd:arg_str(s, i)
    if type(str) ~= "string" then fail("resp: arg_str(%d) is %s", i, q(str)) end
    if cmd:arg_len(i) ~= #str then
      fail("resp: arg_len(%d) %s, arg_str has %d bytes", i,
        q(cmd:arg_len(i)), #str)
    end
    local a = cmd:arg(s, i)
    if tostring(a) ~= str then
      fail("resp: arg(%d) %s differs from arg_str %s", i, q(tostring(a)),
        q(str))
    end
    if not cmd:arg_is(s, i, str) then
      fail("resp: arg_is(%d, its own bytes %s) is false", i, q(str))
    end
    -- The raw bytes of the argument are inside the command.
    local raw = (cmd.nesc > 0 and cmd.esc[i] > 0) and cmd.esc[i] or cmd.len[i]
    if cmd.off[i] < off or cmd.off[i] + raw > off + n then
      fail("resp: argument %d at %d+%d outside the command %d+%d", i,
        cmd.off[i], raw, off, n)
    end
    out[#out + 1] = fmt("%q=%s", str, tostring(cmd:arg_int(s, i)))
  end
  if cmd:arg(s, argc + 1) ~= nil or cmd:arg_str(s, 0) ~= nil then
    fail("resp: an argument index out of range gave a value")
  end
  return concat(out, " ")
end

function resp.on_data(st, s, msgs)
  local cmd, limits = st.cmd, st.limits
  local size, off = #s, 0
  local want = st.want
  st.want = 0
  while off < size do
    local n = R.parse_command(s, off, cmd, limits)
    if n == -1 then
      if type(cmd.err) ~= "string" then fail("resp: -1 without cmd.err") end
      return size, "error " .. cmd.err
    end
    if n == -2 then
      if not is_int(cmd.want) or cmd.want < 1 then
        fail("resp: -2 with want %s", q(cmd.want))
      end
      st.want = cmd.want
      break
    end
    if not is_int(n) or n < 1 or off + n > size then
      fail("resp: parse_command at %d of %d returned %s", off, size, q(n))
    end
    if off == 0 and want > 0 and size < want then
      fail("resp: -2 with want %d, then %d bytes parsed as a command of %d",
        want, size, n)
    end
    if cmd.argc > 0 then
      msgs[#msgs + 1] = resp_norm(cmd, s, off, n)
    elseif cmd.want ~= 0 then
      fail("resp: an empty command with want %s", q(cmd.want))
    end
    off = off + n
  end
  return off
end

---------------------------------------------------------------------------
-- memcached (scripts/memcached.lua's on_data)

local memc = {}

local MC_SMALL = { item_max = 200, max_get_line = 3000 }
local getlike = { [mc.GET] = true, [mc.GETS] = true, [mc.GAT] = true,
  [mc.GATS] = true }

function memc.new(small)
  return { req = mc.new_request(small and MC_SMALL or nil), swallow = nil }
end

local function mc_norm(req, s, off, n)
  local op = req.op
  local out = { "op", tostring(op) }
  local function add(k, v) out[#out + 1] = k .. "=" .. q(v) end
  local function tok(i)
    local a, b = req.ts[i], req.te[i]
    if a < off or b > off + n or a > b then
      fail("memcache: token %d at %d..%d outside the command %d+%d", i, a, b,
        off, n)
    end
    return req:key_string(s, i)
  end
  add("noreply", req.noreply)
  add("swallow", req.swallow)
  if req.err then
    add("err", req.err)
    if type(req.err) ~= "string" then fail("memcache: err not a string") end
    return concat(out, " ")
  end
  local nt = req.nt
  if getlike[op] then
    for i = req.key, nt - 1 do add("key", tok(i)) end
    if op == mc.GAT or op == mc.GATS then add("exptime", req.exptime) end
  elseif op >= mc.SET and op <= mc.CAS then
    add("key", tok(1))
    add("flags", req.flags)
    add("exptime", req.exptime)
    add("vlen", req.vlen)
    local d = req.data_off
    if d < off or d + req.vlen + 2 > off + n then
      fail("memcache: data block %d+%d outside the command %d+%d", d,
        req.vlen, off, n)
    end
    add("data", s:tostring(d + 1, d + req.vlen))
    if op == mc.CAS then add("cas", tostring(req.u64[0])) end
  elseif op == mc.DELETE then
    add("key", tok(1))
  elseif op == mc.INCR or op == mc.DECR then
    add("key", tok(1))
    add("delta", tostring(req.u64[0]))
  elseif op == mc.TOUCH then
    add("key", tok(1))
    add("exptime", req.exptime)
  elseif op == mc.FLUSH_ALL then
    add("exptime", req.exptime)
  elseif op == mc.VERBOSITY then
    add("level", req.level)
  end
  for i = 0, (nt <= mc.MAX_TOKENS and nt or mc.MAX_TOKENS + 1) - 1 do
    tok(i)
  end
  return concat(out, " ")
end

function memc.on_data(st, s, msgs)
  local req = st.req
  local size, pos = #s, 0
  local sw = st.swallow
  if sw then
    if sw >= size then
      st.swallow = sw > size and sw - size or nil
      return size
    end
    st.swallow = nil
    pos = sw
  end
  while pos < size do
    local n = mc.parse(s, req, pos)
    if n == -1 then
      -- Only a line with no LF yet, too long to wait for.
      if s:find_byte(10, pos + 1) or size - pos <= mc.LINE_MAX then
        fail("memcache: -1 at %d of %d with a LF or under LINE_MAX", pos,
          size)
      end
      return size, "close", size - pos
    end
    if n == -2 then break end
    if not is_int(n) or n < 1 or pos + n > size then
      fail("memcache: parse at %d of %d returned %s", pos, size, q(n))
    end
    if not is_int(req.swallow) or req.swallow < 0 then
      fail("memcache: swallow %s", q(req.swallow))
    end
    msgs[#msgs + 1] = mc_norm(req, s, pos, n)
    pos, sw = mc.skip_refused(req, pos + n, size)
    if sw > 0 then st.swallow = sw end
  end
  return pos
end

function memc.final(st)
  return st.swallow and ("swallowing " .. st.swallow) or ""
end

---------------------------------------------------------------------------
-- HTTP requests (lua/ringline/http/server.lua's on_data, less dispatch)

local http = {}

local HTTP_SMALL = { max_header_bytes = 256, max_headers = 4, max_body = 100 }
local HTTP_DEFAULT = { max_header_bytes = 8192, max_headers = 64,
  max_body = 1048576 }
local HEAD_STATUS = { [400] = true, [431] = true, [501] = true, [505] = true }
local BODY_STATUS = { [400] = true, [413] = true }


local function within_head(off, n)
  return function(what, o, l)
    if o < off or l < 0 or o + l > off + n then
      fail("http: %s at %d+%d outside the head %d+%d", what, o, l, off, n)
    end
  end
end

local function headers_norm(p, s, out, within)
  if p.nheaders > p.max_headers then
    fail("http: %d headers over max_headers %d", p.nheaders, p.max_headers)
  end
  for i = 1, p:header_count() do
    within("header name", p.name_off[i], p.name_len[i])
    within("header value", p.value_off[i], p.value_len[i])
    local name, value = p:header_at(s, i)
    local first = p:find_header(s, tostring(name))
    if not first or first > i then
      fail("http: find_header(%s) gave %s for header %d", q(tostring(name)),
        q(first), i)
    end
    out[#out + 1] = q(tostring(name)) .. ":" .. q(tostring(value))
  end
  if p:header_at(s, p:header_count() + 1) ~= nil then
    fail("http: header_at past the count gave a value")
  end
end

local function http_norm(p, s, off, n, body)
  local within = within_head(off, n)
  within("method", p.method_off, p.method_len)
  within("target", p.target_off, p.target_len)
  within("path", p.path_off, p.path_len)
  if p.query_len >= 0 then within("query", p.query_off, p.query_len) end
  local out = { tostring(p:method(s)), tostring(p:target(s)),
    tostring(p:path(s)), q(p:query(s) and tostring(p:query(s))),
    "1." .. p.minor }
  headers_norm(p, s, out, within)
  out[#out + 1] = fmt("cl=%s chunked=%s ka=%s expect=%s host=%s/%s",
    tostring(p.content_length), tostring(p.chunked), tostring(p.keep_alive),
    tostring(p.expect_continue), tostring(p.host), tostring(p.host_index))
  out[#out + 1] = "body=" .. q(body)
  return concat(out, " ")
end

local function response_norm(p, s, off, n, body)
  local within = within_head(off, n)
  within("reason", p.reason_off, p.reason_len)
  if p.code < 100 or p.code > 999 then fail("http: status code %s", q(p.code)) end
  local out = { tostring(p.code), q(tostring(p:reason(s))), "1." .. p.minor }
  headers_norm(p, s, out, within)
  out[#out + 1] = fmt("cl=%s chunked=%s close=%s ka=%s", tostring(p.content_length),
    tostring(p.chunked), tostring(p.until_close), tostring(p.keep_alive))
  out[#out + 1] = "body=" .. q(body)
  return concat(out, " ")
end

local RES_STATUS = { [431] = true, [502] = true }

function http.new(small, response)
  local o = small and HTTP_SMALL or HTTP_DEFAULT
  return { o = o, d = P.new_chunked(), body = {}, in_chunked = false, chunk_pos = 0,
    req = response and P.new_response(o.max_headers) or P.new_request(o.max_headers),
    parse = response and P.parse_response or P.parse_request,
    statuses = response and RES_STATUS or HEAD_STATUS,
    norm = response and response_norm or http_norm }
end

-- Decode from s.base[pos]; check the counts.  Returns status, used.
local function chunked_step(d, s, pos, max_body, pieces)
  local size = #s
  local status, used = P.decode_chunked(s, pos, d, max_body)
  if status ~= 1 and status ~= 0 and status ~= -1 then
    fail("chunked: status %s", q(status))
  end
  if not is_int(used) or used < 0 or pos + used > size then
    fail("chunked: used %s at %d of %d", q(used), pos, size)
  end
  if status == 0 and used ~= size - pos then
    fail("chunked: status 0 but used %d of %d", used, size - pos)
  end
  if status == -1 and not BODY_STATUS[d.status] then
    fail("chunked: error status %s", q(d.status))
  end
  local at = pos
  for k = 1, d.n do
    local o, l = d.off[k], d.len[k]
    if o < at or l < 1 or o + l > pos + used then
      fail("chunked: data %d at %d+%d outside %d+%d (or out of order)", k, o,
        l, pos, used)
    end
    at = o + l
    pieces[#pieces + 1] = s:tostring(o + 1, o + l)
  end
  return status, used
end

function http.on_data(st, s, msgs)
  local o = st.o
  local total, off = #s, 0
  while off < total do
    local p = st.req
    local n = st.parse(s, p, o.max_header_bytes, off)
    if n == -2 then break end
    if n == -1 then
      if not st.statuses[p.status] then fail("http: status %s", q(p.status)) end
      return total, "error " .. p.status
    end
    if not is_int(n) or n < 1 or off + n > total then
      fail("http: parse at %d of %d returned %s", off, total, q(n))
    end
    -- A response body that runs to the close: the rest is its body.
    if p.until_close then
      msgs[#msgs + 1] = st.norm(p, s, off, n, "(to the close)")
      return off + n, "to the close"
    end
    local head_end = off + n
    local body, used
    if p.chunked then
      local d = st.d
      if not st.in_chunked then
        st.in_chunked, st.chunk_pos = true, n
        d:reset()
        st.body = {}
      end
      local status, u = chunked_step(d, s, off + st.chunk_pos, o.max_body,
        st.body)
      if status == -1 then
        st.in_chunked = false
        return total, "chunked error " .. d.status
      end
      st.chunk_pos = st.chunk_pos + u
      if status == 0 then break end
      st.in_chunked = false
      body, used = concat(st.body), st.chunk_pos - n
      if #body ~= d.total then
        fail("chunked: %d body bytes, d.total %d", #body, d.total)
      end
    else
      local cl = p.content_length
      if cl > o.max_body then return total, "error 413" end
      if cl > 0 then
        if total - head_end < cl then break end
        body = s:tostring(head_end + 1, head_end + cl)
        used = cl
      else
        used = 0
      end
    end
    msgs[#msgs + 1] = st.norm(p, s, off, n, body)
    off = head_end + used
  end
  return off
end

---------------------------------------------------------------------------
-- Chunked bodies alone, one after another (as the server decodes them)

local chunked = {}

function chunked.new(small)
  return { d = P.new_chunked(), max_body = small and 50 or nil, pieces = {},
    pos = 0 }
end

function chunked.on_data(st, s, msgs)
  local size = #s
  local start = 0           -- where the current body starts in s
  while start < size do
    local d = st.d
    local status, used = chunked_step(d, s, start + st.pos, st.max_body,
      st.pieces)
    if status == -1 then return size, "chunked error " .. d.status end
    st.pos = st.pos + used
    if status == 0 then break end
    local body = concat(st.pieces)
    if #body ~= d.total then
      fail("chunked: %d body bytes, d.total %d", #body, d.total)
    end
    msgs[#msgs + 1] = fmt("body %q", body)
    start = start + st.pos
    st.pos, st.pieces = 0, {}
    d:reset()
  end
  return start   -- the body in progress stays unconsumed, as in the server
end

---------------------------------------------------------------------------

local PROTOS = { [0] = resp, memc, http, chunked }
local NAMES = { [0] = "resp", "memcache", "http", "chunked" }

-- Feed stream in arrivals (a list of lengths; the rest is one more).
-- Returns the messages and the verdict.
local function feed(proto, small, stream, arrivals, response)
  local st = proto.new(small, response)
  local msgs = {}
  local pending = ""
  local at = 1
  local k = 0
  local total = #stream
  while at <= total do
    k = k + 1
    local len = arrivals[k] or (total - at + 1)
    local chunk = stream:sub(at, at + len - 1)
    at = at + #chunk
    pending = pending .. chunk
    local s = place(pending)
    local consumed, verdict, extra = proto.on_data(st, s, msgs)
    slice.release()
    if not is_int(consumed) or consumed < 0 or consumed > #pending then
      fail("%s: consumed %s of %d", "on_data", q(consumed), #pending)
    end
    if verdict then return msgs, verdict, extra end
    pending = pending:sub(consumed + 1)
  end
  local v = "open, " .. #pending .. " pending"
  if proto.final then v = v .. " " .. proto.final(st) end
  return msgs, v
end

local function arrivals_of(input)
  local b = byte(input, 2) or 0
  local list, pos = {}, 3
  if b == 255 then
    for k = 1, 256 do list[k] = 1 end
  else
    for k = 1, b % 16 do
      list[k] = (byte(input, pos) or 0) + 1
      pos = pos + 1
    end
  end
  return list, pos
end

local function compare(name, wm, wv, sm, sv, sextra, arrivals)
  local function where()
    local t = {}
    for k = 1, #arrivals do t[k] = arrivals[k] end
    return "arrivals {" .. concat(t, ",") .. ",rest}"
  end
  -- memcached gives up on a line too long without a LF: that one depends
  -- on how the bytes arrive.  The messages before it must agree.
  local prefix_only = name == "memcache" and sv == "close" and wv ~= sv
  if prefix_only and sextra <= mc.LINE_MAX then
    fail("memcache: close at %d pending bytes", sextra)
  end
  local n = prefix_only and #sm or math.max(#wm, #sm)
  if prefix_only and #sm > #wm then n = #wm + 1 end
  for k = 1, n do
    if wm[k] ~= sm[k] then
      fail("%s: message %d differs (%s):\n  whole: %s\n  split: %s", name, k,
        where(), tostring(wm[k]), tostring(sm[k]))
    end
  end
  if not prefix_only and wv ~= sv then
    fail("%s: verdict differs (%s) after %d messages:\n  whole: %s\n  split: %s",
      name, where(), #wm, wv, sv)
  end
end

function M.run(input)
  local sel = byte(input, 1) or 0
  local which = sel % 4
  local small = sel % 8 >= 4
  local response = which == 2 and sel % 16 >= 8
  local proto, name = PROTOS[which], response and "http response" or NAMES[which]
  local arrivals, pos = arrivals_of(input)
  local stream = input:sub(pos)
  local wm, wv = feed(proto, small, stream, {}, response)
  local sm, sv, sextra = feed(proto, small, stream, arrivals, response)
  compare(name, wm, wv, sm, sv, sextra, arrivals)
  return #wm
end

return M
