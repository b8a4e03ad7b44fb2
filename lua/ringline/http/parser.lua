-- ringline.http.parser: HTTP/1.1 request heads and chunked bodies, parsed in
-- place over received bytes.
--
-- Nothing is copied while parsing.  The parser reads the bytes through the
-- slice's base pointer and records byte offsets and lengths (0-based, from
-- s.base) in a reusable request object; sub-slices and strings are only made
-- when an accessor is called.  Parsing starts over on every call: a handler
-- that gets -2 leaves the bytes unconsumed and calls again when more have
-- arrived.
--
--   local P = require "ringline.http.parser"
--   local req = P.new_request(max_headers)      -- once per connection
--   local n = P.parse_request(s, req, max_header_bytes, off)
--     s: a slice, or any cdata with base (const uint8_t *) and size
--     max_header_bytes: default 8192; counts from off, includes any empty
--       lines before the request line and the final CRLF
--     off: 0-based byte offset in s to parse from (default 0)
--     n > 0  the head (request line, header lines, the empty line) is the
--            n bytes from off; the body starts at off + n
--     -2     incomplete: call again with more bytes
--     -1     error; req.status is 400, 431, 501 or 505
--   After a success (fields are not meaningful after -1 or -2):
--   req:method(s) req:target(s) req:path(s) req:query(s)  -> slices
--     (query: after the first '?', nil if there is none)
--   req:method_is(s, "GET")                               -> boolean
--   req:header(s, "content-length")                       -> value slice | nil
--   req:find_header(s, name, init)                        -> index | nil
--   req:header_count()  req:header_at(s, i)               -> name, value
--   req.minor (0 | 1)  req.content_length (-1 if absent)  req.chunked
--   req.keep_alive  req.expect_continue  req.host (boolean)  req.host_index
--   req.method_off/len, target_off/len, path_off/len, query_off/len (-1
--   if no query), nheaders, name_off[i]/name_len[i], value_off[i]/
--   value_len[i]: 0-based offsets from s.base, value trimmed of SP/HT.
--   Accessors take the slice that was parsed; only they allocate.
--
--   local res = P.new_response(max_headers)
--   local n = P.parse_response(s, res, max_header_bytes, off)
--     as parse_request, for a status line: res.code (100-999), res.minor,
--     res:reason(s); res.status is 502 after -1 (the upstream sent a
--     malformed head); res.content_length, res.chunked (the final coding
--     is chunked), res.until_close (a Transfer-Encoding whose final coding
--     is not chunked: the body runs to the close), res.keep_alive.
--     Whether a body follows also depends on the request (HEAD) and the
--     code (1xx, 204, 304): P.response_has_body(res, head_request).
--
--   P.new_chunked(), P.decode_chunked(s, off, d, max_body): the chunked
--   decoder of ringline.http.chunked.
--
-- Written for the LuaJIT compiler: bytes are read as s.base[i] (a pointer
-- kept in a local would be boxed whenever it crosses from one trace to
-- another), loops test their condition first, and header names are
-- compared with generated straight-line code.  Compiled, parsing and
-- decoding allocate nothing.
--
-- Choices where the RFCs leave room:
--   * Bare LF ends the request line and header lines (RFC 9112 2.2); a CR
--     not followed by LF is an error.  Chunked framing (size lines, the CRLF
--     after data, trailers) requires CRLF: lenient line ends in chunked
--     bodies are a known request smuggling vector.
--   * Empty lines before the request line are skipped (RFC 9112 2.2) and
--     count towards n.
--   * Any HTTP-version other than HTTP/1.0 and HTTP/1.1 that is well formed
--     ("HTTP/" DIGIT "." DIGIT) gets 505; a malformed version gets 400.
--   * Bytes 0x80-0xff are accepted in the target and in field values; other
--     control bytes (and DEL) are rejected.
--   * Transfer-Encoding (all its header lines, as one list): the final
--     coding must be chunked (400 otherwise, RFC 9112 6.3), chunked must
--     appear once (400), any other coding before it is unsupported (501).
--     Transfer-Encoding in an HTTP/1.0 request, or together with
--     Content-Length, is 400.
--   * Content-Length must be 1*DIGIT up to 2^53-1; repeated lines must agree.
--   * More than one Host line is 400; HTTP/1.1 without Host is 400.
--   * Expect: 100-continue is ignored in HTTP/1.0 requests (RFC 9110 10.1.1).
local bit = require "bit"
local slice = require "ringline.slice"
local util = require "ringline.util"

local chars = require "ringline.http.chars"
local chunked = require "ringline.http.chunked"

local band, bor = bit.band, bit.bor
local byte = string.byte
local error, setmetatable, type = error, setmetatable, type
local check = slice.check_live
local zeros, eq_nocase = util.zeros, util.eq_nocase
local cls = chars.cls
local C_TOKEN, C_VALUE, C_TARGET, C_WS, C_SEP =
  chars.C_TOKEN, chars.C_VALUE, chars.C_TARGET, chars.C_WS, chars.C_SEP
local CR, LF, SP, HT, COLON, QMARK, COMMA =
  chars.CR, chars.LF, chars.SP, chars.HT, chars.COLON, chars.QMARK, chars.COMMA
local MAX_EXACT = chars.MAX_EXACT

local M = {}

M.DEFAULT_MAX_HEADERS = 64       -- new_request() without an argument
M.DEFAULT_MAX_HEADER_BYTES = 8192 -- parse_request() without a limit
M.MAX_CHUNK_LINE = chunked.MAX_CHUNK_LINE
M.MAX_TRAILER_BYTES = chunked.MAX_TRAILER_BYTES

---------------------------------------------------------------------------
-- helpers (no allocation)

-- A function (s, o) -> whether the bytes at s.base[o] equal the lowercase
-- literal lit, ignoring ASCII case (x|0x20 equals a letter only if x is
-- that letter in either case; other bytes must match exactly).  Generated
-- as one expression: the JIT follows a single path through it, where a
-- loop over the bytes would be an inner loop in the caller's trace.
local function literal_test(lit)
  local terms = {}
  for k = 1, #lit do
    local ch = byte(lit, k)
    if ch >= 97 and ch <= 122 then
      terms[k] = ("bor(b[o + %d], 32) == %d"):format(k - 1, ch)
    else
      terms[k] = ("b[o + %d] == %d"):format(k - 1, ch)
    end
  end
  local src = "local bor = ...\nreturn function(s, o)\n  local b = s.base\n" ..
    "  return " .. table.concat(terms, "\n    and ") .. "\nend\n"
  return assert(loadstring(src, "=ringline.http.parser:" .. lit))(bor)
end

local is_content_length = literal_test("content-length")
local is_transfer_encoding = literal_test("transfer-encoding")
local is_connection = literal_test("connection")
local is_expect = literal_test("expect")
local is_host = literal_test("host")
local is_chunked = literal_test("chunked")
local is_close = literal_test("close")
local is_keep_alive = literal_test("keep-alive")
local is_100_continue = literal_test("100-continue")

-- The next element of a comma-separated list in s.base[j .. e-1]: skips OWS and
-- empty elements.  Returns the element's start and end (exclusive, trailing
-- OWS trimmed) and where to continue, or nil at the end of the list.
local function list_next(s, j, e)
  while j < e and band(cls[s.base[j]], C_SEP) ~= 0 do j = j + 1 end
  if j >= e then return nil, nil, e end
  local t0 = j
  while j < e and s.base[j] ~= COMMA do j = j + 1 end
  local t1 = j
  while t1 > t0 and band(cls[s.base[t1 - 1]], C_WS) ~= 0 do t1 = t1 - 1 end
  return t0, t1, j
end

-- Transfer-Encoding list: how many chunked codings, whether the last one
-- is chunked, whether there is any other.
local function te_list(s, j, e)
  local n, last, other = 0, false, false
  while true do
    local a, b
    a, b, j = list_next(s, j, e)
    if not a then break end
    if b - a == 7 and is_chunked(s, a) then
      n, last = n + 1, true
    else
      other, last = true, false
    end
  end
  return n, last, other
end

-- Connection list: close?, keep-alive?
local function connection_list(s, j, e)
  local close, ka = false, false
  while true do
    local a, b
    a, b, j = list_next(s, j, e)
    if not a then break end
    local n = b - a
    if n == 5 and is_close(s, a) then
      close = true
    elseif n == 10 and is_keep_alive(s, a) then
      ka = true
    end
  end
  return close, ka
end

-- Expect list: 100-continue?
local function expect_list(s, j, e)
  while true do
    local a, b
    a, b, j = list_next(s, j, e)
    if not a then return false end
    if b - a == 12 and is_100_continue(s, a) then return true end
  end
end

-- Content-Length value: 1*DIGIT, at most 2^53-1; -1 if invalid.
local function parse_length(s, o, n)
  if n == 0 then return -1 end
  local v = 0
  for k = o, o + n - 1 do
    local d = s.base[k] - 48
    if d < 0 or d > 9 then return -1 end
    v = v * 10 + d
    if v > MAX_EXACT then return -1 end
  end
  return v
end

local function fail(req, status)
  req.status = status
  return -1
end

-- Out of bytes: incomplete, unless the head can no longer fit the limit.
local function need(req, avail, max)
  if avail >= max then
    req.status = 431
    return -1
  end
  return -2
end

-- A line end at s.base[i], whose byte c is there: CRLF, or a bare LF.
-- Returns the index after it; -2 if the LF after a CR is not there yet;
-- -1 if c is not a line end or a CR is not followed by LF.
local function after_line_end(s, i, c, lim)
  if c == LF then return i + 1 end
  if c ~= CR then return -1 end
  if i + 1 >= lim then return -2 end
  if s.base[i + 1] ~= LF then return -1 end
  return i + 2
end

-- What parse_request returns for a -2 or -1 from after_line_end.
local function line_end_failed(req, r, avail, max)
  if r == -2 then return need(req, avail, max) end
  return fail(req, 400)
end

---------------------------------------------------------------------------
-- request object

local R = {}
R.__index = R

function M.new_request(max_headers)
  max_headers = max_headers or M.DEFAULT_MAX_HEADERS
  if type(max_headers) ~= "number" or max_headers < 0 or max_headers % 1 ~= 0
  then
    error("new_request: max_headers must be a non-negative integer", 2)
  end
  local req = setmetatable({
    status = 0,
    max_headers = max_headers,
    method_off = 0, method_len = 0,
    target_off = 0, target_len = 0,
    path_off = 0, path_len = 0,
    query_off = 0, query_len = -1,
    minor = 0,
    nheaders = 0,
    name_off = zeros(max_headers), name_len = zeros(max_headers),
    value_off = zeros(max_headers), value_len = zeros(max_headers),
    content_length = -1,
    chunked = false,
    keep_alive = false,
    expect_continue = false,
    host = false,
    host_index = 0,
    -- set by parse_fields
    major = 1, te = false, te_last_chunked = false, te_chunked = 0,
    te_other = false, conn_close = false, conn_ka = false, expect = false,
  }, R)
  -- (not a tail call: the JIT cannot return from setmetatable to a lower frame)
  return req
end

-- The method, target, path (target up to '?') and query (after the first
-- '?', nil if there is none) as sub-slices of s, the slice that was parsed.
function R.method(req, s)
  return s:sub(req.method_off + 1, req.method_off + req.method_len)
end

function R.target(req, s)
  return s:sub(req.target_off + 1, req.target_off + req.target_len)
end

function R.path(req, s)
  return s:sub(req.path_off + 1, req.path_off + req.path_len)
end

function R.query(req, s)
  if req.query_len < 0 then return nil end
  return s:sub(req.query_off + 1, req.query_off + req.query_len)
end

-- Method equal to str (case-sensitive, as methods are).
function R.method_is(req, s, str)
  check(s)
  local n = #str
  if req.method_len ~= n then return false end
  local o = req.method_off
  for k = 0, n - 1 do
    if s.base[o + k] ~= byte(str, k + 1) then return false end
  end
  return true
end

function R.header_count(req)
  return req.nheaders
end

-- Index of the first header named `name` (ASCII case-insensitive) from
-- index init (default 1), or nil.  No allocation.
function R.find_header(req, s, name, init)
  check(s)
  local n = #name
  local noff, nlen = req.name_off, req.name_len
  for h = init or 1, req.nheaders do
    if nlen[h] == n and eq_nocase(s, noff[h], name, n) then return h end
  end
  return nil
end

-- The value of the first header named `name`, as a slice, or nil.
function R.header(req, s, name)
  local h = R.find_header(req, s, name)
  if not h then return nil end
  local o = req.value_off[h]
  return s:sub(o + 1, o + req.value_len[h])
end

-- Name and value slices of header i (1-based), or nil.
function R.header_at(req, s, i)
  if type(i) ~= "number" or i < 1 or i > req.nheaders or i % 1 ~= 0 then
    return nil
  end
  local no, vo = req.name_off[i], req.value_off[i]
  return s:sub(no + 1, no + req.name_len[i]),
    s:sub(vo + 1, vo + req.value_len[i])
end

---------------------------------------------------------------------------
-- request head parser

local VERSION = "HTTP/D.D"

-- HTTP-version = "HTTP/" DIGIT "." DIGIT at s.base[i].  Returns the index
-- after it and sets req.major, req.minor; -1 (400) or -2 as the parsers
-- return.  Fewer than 8 bytes: checks those there are, then asks for more.
local function parse_version(s, req, i, lim, avail, max_hdr)
  if lim - i < 8 then
    for k = 0, lim - i - 1 do
      local x, want = s.base[i + k], byte(VERSION, k + 1)
      if want == 68 then -- 'D': a digit
        if x < 48 or x > 57 then return fail(req, 400) end
      elseif x ~= want then
        return fail(req, 400)
      end
    end
    return need(req, avail, max_hdr)
  end
  if s.base[i] ~= 72 or s.base[i + 1] ~= 84 or s.base[i + 2] ~= 84 or
     s.base[i + 3] ~= 80 or s.base[i + 4] ~= 47 or s.base[i + 6] ~= 46 then
    return fail(req, 400)
  end
  local major, minor = s.base[i + 5] - 48, s.base[i + 7] - 48
  if major < 0 or major > 9 or minor < 0 or minor > 9 then
    return fail(req, 400)
  end
  req.major, req.minor = major, minor
  return i + 8
end

-- The field lines from s.base[i] and the empty line that ends the head.
-- Records the fields in req, and what frames the message: content_length
-- (-1 if absent), te (any Transfer-Encoding), te_last_chunked, te_chunked
-- (how many chunked codings), te_other, conn_close, conn_ka, expect (a
-- 100-continue), host_index (0 if none).  Returns the index after the
-- empty line, or -1 / -2 as the parsers return.
local function parse_fields(s, req, i, lim, avail, max_hdr)
  local c
  local nh, maxh = 0, req.max_headers
  local noff, nlen, voff, vlen =
    req.name_off, req.name_len, req.value_off, req.value_len
  local cl, te, te_last_chunked, te_chunked, te_other =
    -1, false, false, 0, false
  local conn_close, conn_ka, expect, host = false, false, false, 0
  if i >= lim then return need(req, avail, max_hdr) end
  c = s.base[i]
  while c ~= CR and c ~= LF do
    -- field-name ":"  (leading whitespace, i.e. obs-fold, fails here too)
    local n0 = i
    while band(cls[c], C_TOKEN) ~= 0 do
      i = i + 1
      if i >= lim then return need(req, avail, max_hdr) end
      c = s.base[i]
    end
    if c ~= COLON or i == n0 then return fail(req, 400) end
    local nl = i - n0
    i = i + 1

    -- OWS field-value OWS line-end
    if i >= lim then return need(req, avail, max_hdr) end
    c = s.base[i]
    if c == SP or c == HT then -- usually one space: no loop for that
      i = i + 1
      if i >= lim then return need(req, avail, max_hdr) end
      c = s.base[i]
      while c == SP or c == HT do
        i = i + 1
        if i >= lim then return need(req, avail, max_hdr) end
        c = s.base[i]
      end
    end
    local v0, v1 = i, i
    while band(cls[c], C_VALUE) ~= 0 do
      i = i + 1
      if c ~= SP and c ~= HT then v1 = i end
      if i >= lim then return need(req, avail, max_hdr) end
      c = s.base[i]
    end
    i = after_line_end(s, i, c, lim)
    if i < 0 then return line_end_failed(req, i, avail, max_hdr) end

    nh = nh + 1
    if nh > maxh then return fail(req, 431) end
    local vl = v1 - v0
    noff[nh], nlen[nh], voff[nh], vlen[nh] = n0, nl, v0, vl

    -- Fields that frame the message, recognised by length first.  A value
    -- that is one element is compared whole; lists take the slow path.
    if nl == 14 then
      if is_content_length(s, n0) then
        local v = parse_length(s, v0, vl)
        if v < 0 or (cl >= 0 and v ~= cl) then return fail(req, 400) end
        cl = v
      end
    elseif nl == 17 then
      if is_transfer_encoding(s, n0) then
        te = true
        if vl == 7 and is_chunked(s, v0) then
          te_chunked, te_last_chunked = te_chunked + 1, true
        else
          local n, last, other = te_list(s, v0, v0 + vl)
          te_chunked, te_last_chunked = te_chunked + n, last
          te_other = te_other or other
        end
      end
    elseif nl == 10 then
      if is_connection(s, n0) then
        if vl == 10 and is_keep_alive(s, v0) then
          conn_ka = true
        elseif vl == 5 and is_close(s, v0) then
          conn_close = true
        else
          local close, ka = connection_list(s, v0, v0 + vl)
          conn_close, conn_ka = conn_close or close, conn_ka or ka
        end
      end
    elseif nl == 6 then
      if is_expect(s, n0) then
        if (vl == 12 and is_100_continue(s, v0)) or
           expect_list(s, v0, v0 + vl) then
          expect = true
        end
      end
    elseif nl == 4 then
      if is_host(s, n0) then
        if host > 0 then return fail(req, 400) end
        host = nh
      end
    end

    if i >= lim then return need(req, avail, max_hdr) end
    c = s.base[i]
  end

  -- The empty line that ends the head.
  i = after_line_end(s, i, c, lim)
  if i < 0 then return line_end_failed(req, i, avail, max_hdr) end
  req.nheaders = nh
  req.content_length = cl
  req.te, req.te_last_chunked, req.te_chunked, req.te_other =
    te, te_last_chunked, te_chunked, te_other
  req.conn_close, req.conn_ka, req.expect = conn_close, conn_ka, expect
  req.host_index = host
  return i
end

local function parse_request(s, req, max_hdr, off)
  check(s)
  local size = s.size
  off = off or 0
  max_hdr = max_hdr or M.DEFAULT_MAX_HEADER_BYTES
  local avail = size - off
  if avail < 0 then error("parse_request: offset past the end of the bytes", 2) end
  local lim = off + (avail < max_hdr and avail or max_hdr)

  req.status = 0
  req.nheaders = 0
  req.query_len = -1
  req.content_length = -1
  req.chunked = false
  req.keep_alive = false
  req.expect_continue = false
  req.host = false
  req.host_index = 0

  local i = off
  local c

  -- Empty lines before the request line.  (Loops here and below test
  -- their condition first: a loop the JIT enters but leaves at once, as a
  -- `while true ... break` would be, stops the caller's trace.)
  if i >= lim then return need(req, avail, max_hdr) end
  c = s.base[i]
  while c == CR or c == LF do
    i = after_line_end(s, i, c, lim)
    if i < 0 then return line_end_failed(req, i, avail, max_hdr) end
    if i >= lim then return need(req, avail, max_hdr) end
    c = s.base[i]
  end

  -- method SP
  local m0 = i
  while band(cls[c], C_TOKEN) ~= 0 do
    i = i + 1
    if i >= lim then return need(req, avail, max_hdr) end
    c = s.base[i]
  end
  if c ~= SP or i == m0 then return fail(req, 400) end
  req.method_off, req.method_len = m0, i - m0
  i = i + 1

  -- request-target SP
  if i >= lim then return need(req, avail, max_hdr) end
  c = s.base[i]
  local t0, q = i, -1
  while band(cls[c], C_TARGET) ~= 0 do
    if c == QMARK and q < 0 then q = i end
    i = i + 1
    if i >= lim then return need(req, avail, max_hdr) end
    c = s.base[i]
  end
  if c ~= SP or i == t0 then return fail(req, 400) end
  req.target_off, req.target_len = t0, i - t0
  req.path_off = t0
  if q >= 0 then
    req.path_len = q - t0
    req.query_off, req.query_len = q + 1, i - q - 1
  else
    req.path_len = i - t0
  end
  i = i + 1

  -- HTTP-version, then the line end.
  i = parse_version(s, req, i, lim, avail, max_hdr)
  if i < 0 then return i end
  if i >= lim then return need(req, avail, max_hdr) end
  i = after_line_end(s, i, s.base[i], lim)
  if i < 0 then return line_end_failed(req, i, avail, max_hdr) end
  local minor = req.minor
  if req.major ~= 1 or minor > 1 then return fail(req, 505) end

  i = parse_fields(s, req, i, lim, avail, max_hdr)
  if i < 0 then return i end
  local cl, te, host = req.content_length, req.te, req.host_index
  local conn_close = req.conn_close
  if te then
    if minor == 0 or cl >= 0 then return fail(req, 400) end
    if not req.te_last_chunked or req.te_chunked > 1 then return fail(req, 400) end
    if req.te_other then return fail(req, 501) end
  end
  if minor == 1 and host == 0 then return fail(req, 400) end

  req.chunked = te
  if minor == 1 then
    req.keep_alive = not conn_close
  else
    req.keep_alive = req.conn_ka and not conn_close
  end
  req.expect_continue = req.expect and minor == 1
  req.host = host > 0
  return i - off
end

M.parse_request = parse_request

---------------------------------------------------------------------------
-- response head parser (the client side: ringline.http.client, the proxy)

local Res = setmetatable({}, { __index = R })
Res.__index = Res

function M.new_response(max_headers)
  local res = M.new_request(max_headers)
  res.code, res.reason_off, res.reason_len = 0, 0, 0
  res.until_close = false
  setmetatable(res, Res)
  return res
end

-- The reason phrase as a sub-slice of s (may be empty).
function Res.reason(res, s)
  return s:sub(res.reason_off + 1, res.reason_off + res.reason_len)
end

local function bad_gateway(res)
  res.status = 502
  return -1
end

-- status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF, then
-- the fields (RFC 9112 4).  A missing SP before an empty reason is
-- accepted, as clients do.
local function parse_response(s, res, max_hdr, off)
  check(s)
  off = off or 0
  max_hdr = max_hdr or M.DEFAULT_MAX_HEADER_BYTES
  local avail = s.size - off
  if avail < 0 then error("parse_response: offset past the end of the bytes", 2) end
  local lim = off + (avail < max_hdr and avail or max_hdr)
  res.status, res.nheaders, res.code = 0, 0, 0
  res.content_length, res.chunked, res.until_close = -1, false, false
  res.keep_alive = false

  local i = parse_version(s, res, off, lim, avail, max_hdr)
  if i < 0 then
    if i == -1 then return bad_gateway(res) end
    return i
  end
  if res.major ~= 1 then return bad_gateway(res) end
  if lim - i < 4 then
    for k = i, lim - 1 do
      local x = s.base[k]
      if (k == i and x ~= SP) or (k > i and (x < 48 or x > 57)) then
        return bad_gateway(res)
      end
    end
    return need(res, avail, max_hdr)
  end
  local d1, d2, d3 = s.base[i + 1] - 48, s.base[i + 2] - 48, s.base[i + 3] - 48
  if s.base[i] ~= SP or d1 < 1 or d1 > 9 or d2 < 0 or d2 > 9 or d3 < 0 or
     d3 > 9 then
    return bad_gateway(res)
  end
  res.code = d1 * 100 + d2 * 10 + d3
  i = i + 4
  if i >= lim then return need(res, avail, max_hdr) end
  local c = s.base[i]
  if c ~= SP and c ~= CR and c ~= LF then return bad_gateway(res) end
  if c == SP then
    i = i + 1
    if i >= lim then return need(res, avail, max_hdr) end
    c = s.base[i]
  end
  local r0 = i
  while band(cls[c], C_VALUE) ~= 0 do
    i = i + 1
    if i >= lim then return need(res, avail, max_hdr) end
    c = s.base[i]
  end
  res.reason_off, res.reason_len = r0, i - r0
  i = after_line_end(s, i, c, lim)
  if i < 0 then
    if i == -1 then return bad_gateway(res) end
    return need(res, avail, max_hdr)
  end

  i = parse_fields(s, res, i, lim, avail, max_hdr)
  if i < 0 then
    if res.status ~= 431 then res.status = 502 end
    return i
  end
  -- RFC 9112 6.3: Transfer-Encoding overrides Content-Length (and the
  -- connection cannot be trusted after such a message: not kept alive);
  -- a final coding other than chunked runs to the close.
  local ka
  if res.minor == 1 then ka = not res.conn_close
  else ka = res.conn_ka and not res.conn_close end
  if res.te then
    if res.te_last_chunked and res.te_chunked == 1 and not res.te_other then
      res.chunked = true
    else
      res.until_close = true
    end
    if res.content_length >= 0 or res.until_close then ka = false end
    res.content_length = -1
  elseif res.content_length < 0 then
    res.until_close = true      -- when there is a body at all
  end
  res.keep_alive = ka
  return i - off
end

M.parse_response = parse_response

-- Whether a body follows the head (RFC 9112 6.3): never for a HEAD
-- request, 1xx, 204 or 304.
function M.response_has_body(res, head_request)
  local code = res.code
  return not (head_request or code < 200 or code == 204 or code == 304)
end


M.new_chunked, M.decode_chunked = chunked.new, chunked.decode
local decode_chunked = chunked.decode


---------------------------------------------------------------------------

function M.selftest()
  local mk = slice.scratch(256)
  local req = M.new_request(8)
  local raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection:  close \r\n\r\nrest"
  local s = mk(raw)
  assert(parse_request(s, req, 1024) == #raw - 4)
  assert(req:method_is(s, "GET") and req:path(s):eq("/a"))
  assert(req:query(s):eq("b=1") and req.minor == 1 and not req.keep_alive)
  assert(req:header(s, "CONNECTION"):eq("close") and req:header_count() == 2)
  assert(req.content_length == -1 and not req.chunked)
  s = mk(raw:sub(1, 30))
  assert(parse_request(s, req, 1024) == -2)
  assert(parse_request(s, req, 20) == -1 and req.status == 431)
  s = mk("GET / HTTP/2.0\r\n\r\n")
  assert(parse_request(s, req) == -1 and req.status == 505)
  s = mk("GET / HTTP/1.1\r\nHost : x\r\n\r\n")
  assert(parse_request(s, req) == -1 and req.status == 400)

  local d = M.new_chunked()
  raw = "4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\nNEXT"
  s = mk(raw)
  local st, used = decode_chunked(s, 0, d, 100)
  assert(st == 1 and used == #raw - 4 and d.n == 2 and d.total == 9)
  assert(d:data(s, 1):eq("Wiki") and d:data(s, 2):eq("pedia"))
  d:reset()
  st, used = decode_chunked(mk("4\r\nWi"), 0, d, 100)
  assert(st == 0 and used == 5 and d.n == 1 and d.len[1] == 2)
  d:reset()
  st = decode_chunked(mk("zz\r\n"), 0, d, 100)
  assert(st == -1 and d.status == 400)
  d:reset()
  st = decode_chunked(mk("65\r\n"), 0, d, 100)
  assert(st == -1 and d.status == 413)
  return true
end

return M