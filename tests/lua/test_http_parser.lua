-- Tests for lua/ringline/http/parser.lua: request heads (valid, malformed,
-- limits), framing fields, pipelining split at every byte, and the chunked
-- body decoder.
local ffi = require "ffi"
local slice = require "ringline.slice"
local P = require "ringline.http.parser"
local t = require "testutil"

local eq, raises = t.eq, t.raises
local concat = table.concat

local T = {}

-- A slice over a fresh copy of str.  The caller keeps `buf` alive for as
-- long as it uses the slice (the tests make many thousands of these, so
-- they are not anchored for the whole run like testutil's).
local function mkbuf(str)
  local buf = ffi.new("uint8_t[?]", #str + 1)
  ffi.copy(buf, str, #str)
  return slice.new(buf, #str), buf
end

local mk = t.slice_of -- anchored: for slices kept in tables

local function q(str) return ("%q"):format(str) end

-- Everything parse_request recorded, as one string with exact values.
local function fmt(req, s, n)
  local h = {}
  for k = 1, req:header_count() do
    local name, value = req:header_at(s, k)
    h[k] = name:tostring() .. "=" .. value:tostring()
  end
  local qs = req:query(s)
  return concat({
    "n=" .. n,
    req:method(s):tostring(),
    req:target(s):tostring(),
    "path=" .. req:path(s):tostring(),
    "query=" .. (qs and qs:tostring() or "nil"),
    "1." .. req.minor,
    "cl=" .. req.content_length,
    "chunked=" .. tostring(req.chunked),
    "ka=" .. tostring(req.keep_alive),
    "100=" .. tostring(req.expect_continue),
    "host=" .. tostring(req.host),
    "[" .. concat(h, "|") .. "]",
  }, " ")
end

-- Parse str whole; returns n, req, s, buf.
local function parse(str, max_bytes, max_headers, off)
  local s, buf = mkbuf(str)
  local req = P.new_request(max_headers)
  local n = P.parse_request(s, req, max_bytes, off)
  return n, req, s, buf
end

-- str must parse to exactly `want` (fmt's format).
local function ok(str, want, max_bytes, max_headers)
  local n, req, s, buf = parse(str, max_bytes, max_headers)
  if n < 0 then
    error(("parse of %s returned %d (status %d)"):format(q(str), n,
      req.status), 2)
  end
  local got = fmt(req, s, n)
  if got ~= want then
    error(("parse of %s:\n expected %s\n      got %s"):format(q(str), want,
      got), 2)
  end
  local _ = buf
  return req
end

-- str must fail with `status`; so must every extension of it, and every
-- prefix must give -2 or the same failure (errors are found at a fixed
-- byte, whatever follows).
local function bad(str, status, max_bytes, max_headers)
  local function check(sub, label)
    local n, req = parse(sub, max_bytes, max_headers)
    return n, req.status, label
  end
  local n, st = check(str)
  if n ~= -1 or st ~= status then
    error(("parse of %s: expected -1 status %d, got %d status %d"):format(
      q(str), status, n, st), 2)
  end
  n, st = check(str .. "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
  if n ~= -1 or st ~= status then
    error(("parse of %s + more: expected -1 status %d, got %d status %d")
      :format(q(str), status, n, st), 2)
  end
  for k = 0, #str - 1 do
    n, st = check(str:sub(1, k))
    if not (n == -2 or (n == -1 and st == status)) then
      error(("prefix %s of %s: expected -2 or -1 status %d, got %d status %d")
        :format(q(str:sub(1, k)), q(str), status, n, st), 2)
    end
  end
end

---------------------------------------------------------------------------
-- valid requests

T.get_with_query = function()
  local r = "GET /search?q=lua&x=1 HTTP/1.1\r\nHost: example.com\r\n" ..
    "User-Agent: test/1.0\r\nAccept: */*\r\n\r\n"
  local req = ok(r, "n=" .. #r .. " GET /search?q=lua&x=1 path=/search " ..
    "query=q=lua&x=1 1.1 cl=-1 chunked=false ka=true 100=false host=true " ..
    "[Host=example.com|User-Agent=test/1.0|Accept=*/*]")
  eq(req.status, 0, "status after success")
  eq(req.method_off, 0, "method_off")
  eq(req.method_len, 3, "method_len")
  eq(req.path_off, 4, "path_off")
  eq(req.path_len, 7, "path_len")
  eq(req.query_off, 12, "query_off")
  eq(req.query_len, 9, "query_len")
  eq(req.host_index, 1, "host_index")
  eq(req.name_off[2], 51, "name_off[2]")
  eq(req.name_len[2], 10, "name_len[2]")
  eq(req.value_off[2], 63, "value_off[2]")
  eq(req.value_len[2], 8, "value_len[2]")
end

T.post_with_content_length = function()
  local head = "POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n" ..
    "Content-Length: 11\r\n\r\n"
  local r = head .. "hello worldGET"
  local n, req, s, buf = parse(r)
  eq(n, #head, "n")
  eq(fmt(req, s, n), "n=" .. #head .. " POST /form path=/form query=nil " ..
    "1.1 cl=11 chunked=false ka=true 100=false host=true " ..
    "[Host=h|Content-Type=text/plain|Content-Length=11]")
  eq(s:tostring(n + 1, n + req.content_length), "hello world", "body")
  eq(req:method_is(s, "POST"), true, "method_is POST")
  eq(req:method_is(s, "post"), false, "method_is is case-sensitive")
  eq(req:method_is(s, "POS"), false, "method_is shorter")
  eq(req:method_is(s, "POSTS"), false, "method_is longer")
  eq(req:header(s, "content-length"):tostring(), "11", "header lower")
  eq(req:header(s, "CONTENT-TYPE"):tostring(), "text/plain", "header upper")
  eq(req:header(s, "Content-Lengt"), nil, "header prefix")
  eq(req:header(s, "x-missing"), nil, "header absent")
  local _ = buf
end

T.http10_without_and_with_keep_alive = function()
  ok("GET / HTTP/1.0\r\n\r\n", "n=18 GET / path=/ query=nil 1.0 cl=-1 " ..
    "chunked=false ka=false 100=false host=false []")
  ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    "n=42 GET / path=/ query=nil 1.0 cl=-1 chunked=false ka=true " ..
    "100=false host=false [Connection=Keep-Alive]")
  ok("GET / HTTP/1.0\r\nconnection: foo, keep-alive\r\n\r\n",
    "n=47 GET / path=/ query=nil 1.0 cl=-1 chunked=false ka=true " ..
    "100=false host=false [connection=foo, keep-alive]")
  -- close wins over keep-alive
  ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    "n=61 GET / path=/ query=nil 1.0 cl=-1 chunked=false ka=false " ..
    "100=false host=false [Connection=keep-alive|Connection=close]")
  -- a token that merely contains keep-alive is not keep-alive
  ok("GET / HTTP/1.0\r\nConnection: keep-alives\r\n\r\n",
    "n=43 GET / path=/ query=nil 1.0 cl=-1 chunked=false ka=false " ..
    "100=false host=false [Connection=keep-alives]")
end

T.http11_connection_tokens = function()
  local base = "GET / HTTP/1.1\r\nHost: a\r\nConnection: "
  local cases = {
    { "close", false }, { "CLOSE", false }, { "Upgrade, Close", false },
    { ",, close ,", false }, { "keep-alive", true }, { "closed", true },
    { "upgrade", true }, { "", true }, { "clo se", true },
  }
  for _, c in ipairs(cases) do
    local n, req = parse(base .. c[1] .. "\r\n\r\n")
    eq(n, #base + #c[1] + 4, "n for " .. q(c[1]))
    eq(req.keep_alive, c[2], "keep_alive for Connection: " .. q(c[1]))
  end
end

T.expect_continue = function()
  local cases = {
    { "1.1", "100-continue", true }, { "1.1", "100-Continue", true },
    { "1.1", "foo, 100-continue", true }, { "1.1", "100-continues", false },
    { "1.1", "200-ok", false }, { "1.0", "100-continue", false },
  }
  for _, c in ipairs(cases) do
    local r = "PUT /x HTTP/" .. c[1] .. "\r\nHost: a\r\nExpect: " .. c[2] ..
      "\r\nContent-Length: 3\r\n\r\n"
    local n, req = parse(r)
    eq(n, #r, "n")
    eq(req.expect_continue, c[3], "expect_continue for " .. q(r))
    eq(req.content_length, 3, "content_length")
  end
end

T.odd_but_valid_spacing = function()
  local r = "GET /p HTTP/1.1\r\nHost:h\r\nX-A:v\r\nX-B: \t v \t \r\n" ..
    "X-C:\r\nX-D:   \r\nX-E: a  b\t c\r\n" ..
    "X-!#$%&'*+.^_`|~1: \128\255ok\r\n\r\n"
  ok(r, "n=" .. #r .. " GET /p path=/p query=nil 1.1 cl=-1 chunked=false " ..
    "ka=true 100=false host=true [Host=h|X-A=v|X-B=v|X-C=|X-D=|" ..
    "X-E=a  b\t c|X-!#$%&'*+.^_`|~1=\128\255ok]")
end

T.bare_lf_line_ends = function()
  ok("GET / HTTP/1.1\nHost: a\n\n", "n=24 GET / path=/ query=nil 1.1 " ..
    "cl=-1 chunked=false ka=true 100=false host=true [Host=a]")
  ok("GET / HTTP/1.1\r\nHost: a\nX: b \r\n\n", "n=32 GET / path=/ " ..
    "query=nil 1.1 cl=-1 chunked=false ka=true 100=false host=true " ..
    "[Host=a|X=b]")
end

T.leading_empty_lines_are_skipped = function()
  local n, req, s, buf = parse("\r\n\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")
  eq(n, 5 + 28, "n includes the skipped lines")
  eq(req.method_off, 5, "method_off")
  eq(req:path(s):tostring(), "/x", "path")
  local _ = buf
end

T.target_forms = function()
  local function pq(target, path, query)
    local r = "OPTIONS " .. target .. " HTTP/1.1\r\nHost: a\r\n\r\n"
    local n, req, s, buf = parse(r)
    eq(n, #r, "n for " .. target)
    eq(req:target(s):tostring(), target, "target")
    eq(req:path(s):tostring(), path, "path of " .. target)
    local qs = req:query(s)
    eq(qs and qs:tostring(), query, "query of " .. target)
    local _ = buf
  end
  pq("*", "*", nil)
  pq("/p?", "/p", "")
  pq("/?a?b", "/", "a?b")
  pq("?x", "", "x")
  pq("http://h:8/a/b?c=%20", "http://h:8/a/b", "c=%20")
  pq("h:443", "h:443", nil)
  pq("/caf\195\169#frag", "/caf\195\169#frag", nil)
end

T.content_length_values = function()
  local function cl(values, want)
    local r = "POST / HTTP/1.1\r\nHost: a\r\n"
    for _, v in ipairs(values) do r = r .. "Content-Length: " .. v .. "\r\n" end
    local n, req = parse(r .. "\r\n")
    eq(n, #r + 2, "n")
    eq(req.content_length, want, "content_length for " .. concat(values, ","))
  end
  cl({ "0" }, 0)
  cl({ "007" }, 7)
  cl({ "5", "5" }, 5)
  cl({ " 42\t" }, 42)
  cl({ "9007199254740991" }, 9007199254740991)
  local n, req = parse("POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 12\r\n\r\n")
  eq(n, 48, "n")
  eq(req.content_length, 12, "name case-insensitive")
end

T.transfer_encoding_chunked = function()
  for _, v in ipairs({ "chunked", "CHUNKED", "Chunked ", ", chunked,", }) do
    local r = "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " .. v ..
      "\r\n\r\n"
    local n, req = parse(r)
    eq(n, #r, "n for " .. q(v))
    eq(req.chunked, true, "chunked for " .. q(v))
    eq(req.content_length, -1, "content_length")
    eq(req.keep_alive, true, "keep_alive")
  end
end

T.many_headers = function()
  local parts = { "GET / HTTP/1.1\r\n" }
  for k = 1, 64 do parts[#parts + 1] = ("X-H%d: v%d\r\n"):format(k, k) end
  parts[#parts + 1] = "Host: a\r\n\r\n"
  local r = concat(parts)
  local n, req, s, buf = parse(r, 65536, 65)
  eq(n, #r, "n")
  eq(req:header_count(), 65, "header_count")
  for k = 1, 64 do
    local name, value = req:header_at(s, k)
    eq(name:tostring(), "X-H" .. k, "name " .. k)
    eq(value:tostring(), "v" .. k, "value " .. k)
  end
  eq(req:header(s, "x-h64"):tostring(), "v64", "lookup of the 64th")
  eq(req.host_index, 65, "host_index")
  eq(req:header_at(s, 0), nil, "header_at(0)")
  eq(req:header_at(s, 66), nil, "header_at(66)")
  eq(req:header_at(s, 1.5), nil, "header_at(1.5)")
  -- one over the limit
  n, req = parse(r, 65536, 64)
  eq(n, -1, "65 headers, max 64")
  eq(req.status, 431, "status")
  local _ = buf
end

T.find_header_duplicates = function()
  local r = "GET / HTTP/1.1\r\nX-Dup: 1\r\nHost: a\r\nx-dup: 2\r\nX-DUP: 3\r\n\r\n"
  local n, req, s, buf = parse(r)
  eq(n, #r, "n")
  eq(req:find_header(s, "x-Dup"), 1, "first")
  eq(req:find_header(s, "x-dup", 2), 3, "second")
  eq(req:find_header(s, "x-dup", 4), 4, "third")
  eq(req:find_header(s, "x-dup", 5), nil, "none after")
  eq(req:header(s, "X-DUP"):tostring(), "1", "header gives the first")
  -- names differing only in a non-letter byte are not equal
  eq(req:find_header(s, "x_dup"), nil, "x_dup")
  eq(req:find_header(s, "x\rdup"), nil, "x-dup vs x\\rdup")
  local _ = buf
end

T.request_object_reuse = function()
  local req = P.new_request(4)
  local s1, b1 = mkbuf("GET /a?b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " ..
    "chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
  assert(P.parse_request(s1, req) > 0)
  eq(fmt(req, s1, 0), "n=0 GET /a?b path=/a query=b 1.1 cl=-1 chunked=true " ..
    "ka=false 100=true host=true [Host=a|Transfer-Encoding=chunked|" ..
    "Expect=100-continue|Connection=close]")
  local s2, b2 = mkbuf("PUT /c HTTP/1.0\r\nContent-Length: 2\r\n\r\nok")
  eq(P.parse_request(s2, req), 38, "second parse")
  eq(fmt(req, s2, 38), "n=38 PUT /c path=/c query=nil 1.0 cl=2 " ..
    "chunked=false ka=false 100=false host=false [Content-Length=2]")
  -- a failed parse leaves status set; the next success clears it
  local s3, b3 = mkbuf("BAD\r\n\r\n")
  eq(P.parse_request(s3, req), -1, "bad")
  eq(req.status, 400, "status")
  eq(P.parse_request(s2, req), 38, "third parse")
  eq(req.status, 0, "status cleared")
  local _ = { b1, b2, b3 }
end

T.parse_from_offset = function()
  local a = "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
  local b = "GET /two?z HTTP/1.1\r\nHost: b\r\n\r\n"
  local s, buf = mkbuf(a .. b)
  local req = P.new_request()
  eq(P.parse_request(s, req, nil, 0), #a, "first")
  eq(P.parse_request(s, req, nil, #a), #b, "second, from an offset")
  eq(req.method_off, #a, "offsets are from s.base")
  eq(req:path(s):tostring(), "/two", "path")
  eq(req:query(s):tostring(), "z", "query")
  eq(req:header(s, "host"):tostring(), "b", "host")
  eq(P.parse_request(s, req, nil, #a + #b), -2, "at the end: need more")
  eq(P.parse_request(s, req, #b, #a), #b, "limit counts from off")
  eq(P.parse_request(s, req, #b - 1, #a), -1, "one under, from off")
  eq(req.status, 431, "431 from off")
  raises("offset past the end", P.parse_request, s, req, nil, #a + #b + 1)
  local _ = buf
end

T.works_on_plain_structs = function()
  local buf = t.buffer("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
  local raw = ffi.new("struct { const uint8_t *base; uint32_t size; }",
    buf, 27)
  local req = P.new_request()
  eq(P.parse_request(raw, req), 27, "n")
  eq(req.path_len, 1, "path_len")
end

T.released_slice_raises = function()
  local s = mk("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
  local req, d = P.new_request(), P.new_chunked()
  eq(P.parse_request(s, req), 27, "before release")
  slice.release()
  raises("slice used after its handler returned", P.parse_request, s, req)
  raises("slice used after its handler returned", P.decode_chunked, s, 0, d)
  raises("slice used after its handler returned", req.method_is, req, s, "GET")
  raises("slice used after its handler returned", req.header, req, s, "host")
  raises("slice used after its handler returned", req.path, req, s)
end

T.new_request_validates = function()
  raises("max_headers", P.new_request, -1)
  raises("max_headers", P.new_request, 1.5)
  raises("max_headers", P.new_request, "8")
  eq(P.new_request().max_headers, P.DEFAULT_MAX_HEADERS, "default")
end

---------------------------------------------------------------------------
-- malformed requests

T.bad_request_line = function()
  local H = "\r\nHost: a\r\n\r\n"
  bad("GET  / HTTP/1.1" .. H, 400)           -- two spaces
  bad("GET /  HTTP/1.1" .. H, 400)
  bad("GET  HTTP/1.1" .. H, 400)            -- empty target
  bad("GET /HTTP/1.1" .. H, 400)             -- missing space
  bad("GET/ HTTP/1.1" .. H, 400)
  bad("GET / HTTP/1.1 " .. H, 400)           -- trailing space
  bad(" GET / HTTP/1.1" .. H, 400)           -- leading space
  bad("\tGET / HTTP/1.1" .. H, 400)
  bad(" / HTTP/1.1" .. H, 400)               -- empty method
  bad("GE(T / HTTP/1.1" .. H, 400)           -- bad method chars
  bad("G@T / HTTP/1.1" .. H, 400)
  bad("GET\t/ HTTP/1.1" .. H, 400)
  bad("G\0T / HTTP/1.1" .. H, 400)
  bad("GET /a\1b HTTP/1.1" .. H, 400)        -- control chars in target
  bad("GET /a\127b HTTP/1.1" .. H, 400)
  bad("GET /a\tb HTTP/1.1" .. H, 400)
  bad("GET /a\0 HTTP/1.1" .. H, 400)
  bad("GET /\r\n\r\n", 400)                  -- HTTP/0.9 style
  bad("GET / \r\n\r\n", 400)                 -- no version
  bad("GET / http/1.1" .. H, 400)            -- bad versions
  bad("GET / HTTPS/1.1" .. H, 400)
  bad("GET / HTTP/1.10" .. H, 400)
  bad("GET / HTTP/11" .. H, 400)
  bad("GET / HTTP/1" .. H, 400)
  bad("GET / HTTP/1.x" .. H, 400)
  bad("GET / HTTP/x.1" .. H, 400)
  bad("GET / HTTP/1.1\rHost: a\r\n\r\n", 400) -- bare CR
  bad("\rGET / HTTP/1.1" .. H, 400)
  bad("\r\rGET / HTTP/1.1" .. H, 400)
  bad("\r\n\rGET / HTTP/1.1" .. H, 400)
end

T.unsupported_versions_505 = function()
  for _, v in ipairs({ "2.0", "0.9", "1.2", "1.9", "3.1", "9.9", "0.0" }) do
    bad("GET / HTTP/" .. v .. "\r\nHost: a\r\n\r\n", 505)
    bad("GET / HTTP/" .. v .. "\n\n", 505)
  end
  -- a malformed line end after an unsupported version is still 400
  bad("GET / HTTP/2.0 \r\n\r\n", 400)
end

T.bad_header_lines = function()
  local R = "GET / HTTP/1.1\r\n"
  bad(R .. "Host a\r\n\r\n", 400)               -- no colon
  bad(R .. "Host: a\r\nNoColon\r\n\r\n", 400)
  bad(R .. "Host: a\r\nNoColon\n\n", 400)
  bad(R .. "Host : a\r\n\r\n", 400)             -- whitespace before colon
  bad(R .. "Host\t: a\r\n\r\n", 400)
  bad(R .. ": a\r\nHost: a\r\n\r\n", 400)       -- empty name
  bad(R .. "Host: a\r\nX: b\r\n c\r\n\r\n", 400) -- obs-fold
  bad(R .. "Host: a\r\nX: b\r\n\tc\r\n\r\n", 400)
  bad(R .. " Host: a\r\n\r\n", 400)             -- whitespace before 1st
  bad(R .. "Ho(st: a\r\n\r\n", 400)             -- bad name chars
  bad(R .. "Ho\1st: a\r\n\r\n", 400)
  bad(R .. "Host: a\r\nX: a\0b\r\n\r\n", 400)   -- control chars in values
  bad(R .. "Host: a\r\nX: a\127b\r\n\r\n", 400)
  bad(R .. "Host: a\r\nX: a\27b\r\n\r\n", 400)
  bad(R .. "Host: a\r\nX: a\0Y: b\r\n\r\n", 400)
  bad(R .. "Host: a\r\nX: \1\r\n\r\n", 400)
  bad(R .. "Host: a\r\nX: a\rb\r\n\r\n", 400)   -- bare CR in a value
  bad(R .. "Host: a\r\nX: a\r\r\n\r\n", 400)
  bad(R .. "Host: a\r\n\rX", 400)               -- bare CR as the end
  bad(R .. "Host: a\r\n\r\r\n", 400)
end

T.bad_content_length = function()
  local R = "POST / HTTP/1.1\r\nHost: a\r\n"
  for _, v in ipairs({ "abc", "", " ", "5, 5", "-1", "+5", "5 5", "0x10",
    "1.0", "9007199254740992", "99999999999999999999999" }) do
    bad(R .. "Content-Length: " .. v .. "\r\n\r\n", 400)
  end
  bad(R .. "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400)
  bad(R .. "Content-Length: 5\r\nContent-Length: 05x\r\n\r\n", 400)
end

T.bad_transfer_encoding = function()
  local R = "POST / HTTP/1.1\r\nHost: a\r\n"
  local TE = "Transfer-Encoding: "
  bad(R .. TE .. "gzip, chunked\r\n\r\n", 501)         -- unsupported coding
  bad(R .. TE .. "gzip\r\n" .. TE .. "chunked\r\n\r\n", 501)
  bad(R .. TE .. "deflate,chunked\r\n\r\n", 501)
  bad(R .. TE .. "gzip\r\n\r\n", 400)                  -- final not chunked
  bad(R .. TE .. "identity\r\n\r\n", 400)
  bad(R .. TE .. "chunked, gzip\r\n\r\n", 400)
  bad(R .. TE .. "chunked\r\n" .. TE .. "gzip\r\n\r\n", 400)
  bad(R .. TE .. "chunked;q=1\r\n\r\n", 400)
  bad(R .. TE .. "\r\n\r\n", 400)                      -- no coding
  bad(R .. TE .. "chunked, chunked\r\n\r\n", 400)      -- chunked twice
  bad(R .. TE .. "chunked\r\n" .. TE .. "chunked\r\n\r\n", 400)
  bad(R .. TE .. "chunked\r\nContent-Length: 5\r\n\r\n", 400) -- smuggling
  bad(R .. "Content-Length: 5\r\n" .. TE .. "chunked\r\n\r\n", 400)
  bad(R .. "Content-Length: 5\r\n" .. TE .. "gzip, chunked\r\n\r\n", 400)
  bad("POST / HTTP/1.0\r\n" .. TE .. "chunked\r\n\r\n", 400) -- HTTP/1.0
end

T.host_required_once = function()
  bad("GET / HTTP/1.1\r\n\r\n", 400)
  bad("GET / HTTP/1.1\r\nX-Host: a\r\nHosts: b\r\n\r\n", 400)
  bad("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400)
  bad("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400)
  eq((parse("GET / HTTP/1.1\r\nHost:\r\n\r\n")), 25, "empty Host is present")
end

---------------------------------------------------------------------------
-- size limits

T.max_header_bytes_boundary = function()
  local r = "GET /abc HTTP/1.1\r\nHost: example\r\nX: 0123456789\r\n\r\n"
  local n = #r
  eq((parse(r, n)), n, "exactly max")
  local m, req = parse(r, n - 1)
  eq(m, -1, "one over")
  eq(req.status, 431, "431")
  -- with more bytes after the head, the limit still only covers the head
  eq((parse(r .. ("x"):rep(100), n)), n, "body bytes do not count")
  for k = 0, n - 1 do
    local prefix = r:sub(1, k)
    eq((parse(prefix, n)), -2, "prefix " .. k .. " under the limit")
    local x, req2 = parse(prefix, k)
    if k == 0 then
      -- nothing seen yet, but nothing can fit in 0 bytes either
      eq(x, -1, "limit 0")
    else
      eq(x, -1, "prefix " .. k .. " at the limit")
    end
    eq(req2.status, 431, "status at prefix " .. k)
  end
end

T.default_max_header_bytes = function()
  eq(P.DEFAULT_MAX_HEADER_BYTES, 8192, "default")
  local pre = "GET / HTTP/1.1\r\nHost: a\r\nX: "
  local fill = 8192 - #pre - 4
  local r = pre .. ("v"):rep(fill) .. "\r\n\r\n"
  eq(#r, 8192, "length")
  eq((parse(r)), 8192, "8192 bytes fit")
  local n, req = parse(pre .. ("v"):rep(fill + 1) .. "\r\n\r\n")
  eq(n, -1, "8193 bytes")
  eq(req.status, 431, "8193 status")
  -- an incomplete head already past the limit
  n, req = parse(pre .. ("v"):rep(10000))
  eq(n, -1, "long incomplete line")
  eq(req.status, 431, "long incomplete status")
  n, req = parse(pre .. ("v"):rep(1000))
  eq(n, -2, "short incomplete line")
  -- endless empty lines before a request line
  n, req = parse(("\r\n"):rep(5000))
  eq(n, -1, "empty lines")
  eq(req.status, 431, "empty lines status")
end

T.too_many_headers = function()
  local r = "GET / HTTP/1.1\r\nHost: a\r\nB: 1\r\nC: 2\r\n\r\n"
  eq((parse(r, nil, 3)), #r, "3 headers, max 3")
  bad(r, 431, nil, 2)
  bad("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 431, nil, 0)
  eq((parse("GET / HTTP/1.0\r\n\r\n", nil, 0)), 18, "no headers, max 0")
  -- found as soon as the extra line is complete, before the head is
  local n, req = parse("GET / HTTP/1.1\r\nHost: a\r\nB: 1\r\nC: 2\r\nD: 3", nil, 2)
  eq(n, -1, "incomplete but over")
  eq(req.status, 431, "status")
end

---------------------------------------------------------------------------
-- pipelining, split at every byte, as the server uses the parser

local CHUNKED_BODY = "5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-T: 1\r\n\r\n"

local STREAM = concat({
  "GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
  "POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
  "PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
  CHUNKED_BODY,
  "\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
  "DELETE /c HTTP/1.1\nHost: h\nContent-Length: 0\n\n",
  "PATCH /d HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n" ..
    "Expect: 100-continue\r\n\r\nabc",
  "GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
})

local STREAM_WANT = {
  "n=32 GET /a?x=1 path=/a query=x=1 1.1 cl=-1 chunked=false ka=true " ..
    "100=false host=true [Host=h] body=",
  "n=54 POST /submit path=/submit query=nil 1.1 cl=11 chunked=false " ..
    "ka=true 100=false host=true [Host=h|Content-Length=11] body=hello world",
  "n=57 PUT /up path=/up query=nil 1.1 cl=-1 chunked=true ka=true " ..
    "100=false host=true [Host=h|Transfer-Encoding=chunked] " ..
    "body=hello, world",
  "n=45 GET /b path=/b query=nil 1.0 cl=-1 chunked=false ka=true " ..
    "100=false host=false [Connection=keep-alive] body=",
  "n=46 DELETE /c path=/c query=nil 1.1 cl=0 chunked=false ka=true " ..
    "100=false host=true [Host=h|Content-Length=0] body=",
  "n=71 PATCH /d path=/d query=nil 1.1 cl=3 chunked=false ka=true " ..
    "100=true host=true [Host=h|Content-Length=3|Expect=100-continue] " ..
    "body=abc",
  "n=50 GET /last path=/last query=nil 1.1 cl=-1 chunked=false ka=false " ..
    "100=false host=true [Host=h|Connection=close] body=",
}

-- A handler in the style of on_data: parses as many requests as it can,
-- returns the bytes consumed.  A head whose Content-Length body has not all
-- arrived is left unconsumed and parsed again later; a chunked body is
-- decoded as it arrives and consumed at once.
local function new_server()
  return { req = P.new_request(16), d = P.new_chunked(), mode = "head",
    out = {}, parts = {}, cur = nil, calls = 0 }
end

local function on_data(sv, s)
  sv.calls = sv.calls + 1
  local pos, size = 0, #s
  local req, d = sv.req, sv.d
  while true do
    if sv.mode == "head" then
      local n = P.parse_request(s, req, 8192, pos)
      if n == -2 then return pos end
      if n == -1 then error("parse failed with status " .. req.status, 0) end
      assert(n > 0 and pos + n <= size, "n out of range")
      local rec = fmt(req, s, n)
      if req.chunked then
        sv.cur = rec
        for k = #sv.parts, 1, -1 do sv.parts[k] = nil end
        d:reset()
        sv.mode = "chunked"
        pos = pos + n
      else
        local cl = req.content_length
        if cl < 0 then cl = 0 end
        if size - pos - n < cl then return pos end
        sv.out[#sv.out + 1] = rec .. " body=" ..
          s:tostring(pos + n + 1, pos + n + cl)
        pos = pos + n + cl
      end
    else
      local st, used = P.decode_chunked(s, pos, d, 1000)
      if st == -1 then error("chunked failed with status " .. d.status, 0) end
      for k = 1, d.n do sv.parts[#sv.parts + 1] = d:data(s, k):tostring() end
      pos = pos + used
      if st == 0 then
        eq(pos, size, "decoder consumed everything")
        return pos
      end
      sv.out[#sv.out + 1] = sv.cur .. " body=" .. concat(sv.parts)
      sv.mode = "head"
    end
  end
end

-- Feed pieces as the loop would: unconsumed bytes are offered again, in a
-- new contiguous buffer, with the next piece appended.
local function feed(pieces)
  local sv = new_server()
  local residue = ""
  for _, piece in ipairs(pieces) do
    local data = residue .. piece
    local s, buf = mkbuf(data)
    local used = on_data(sv, s)
    assert(used >= 0 and used <= #data, "consumed out of range")
    residue = data:sub(used + 1)
    slice.release()
    local _ = buf
  end
  return sv, residue
end

local function same_records(sv, residue, what)
  eq(residue, "", what .. ": residue")
  eq(sv.mode, "head", what .. ": mode")
  eq(#sv.out, #STREAM_WANT, what .. ": request count")
  for k = 1, #STREAM_WANT do
    eq(sv.out[k], STREAM_WANT[k], what .. ": request " .. k)
  end
end

T.pipeline_whole = function()
  local sv, residue = feed({ STREAM })
  same_records(sv, residue, "whole")
  eq(sv.calls, 1, "one call")
end

T.pipeline_every_cut = function()
  for k = 0, #STREAM do
    local sv, residue = feed({ STREAM:sub(1, k), STREAM:sub(k + 1) })
    same_records(sv, residue, "cut at " .. k)
  end
end

T.pipeline_byte_at_a_time = function()
  local pieces = {}
  for k = 1, #STREAM do pieces[k] = STREAM:sub(k, k) end
  local sv, residue = feed(pieces)
  same_records(sv, residue, "byte at a time")
  eq(sv.calls, #STREAM, "calls")
end

T.pipeline_random_splits = function()
  local seed = 12345
  local function rnd(n) -- small LCG: the same splits on every run
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  end
  for _ = 1, 500 do
    local pieces, at = {}, 1
    while at <= #STREAM do
      local len = 1 + rnd(40)
      pieces[#pieces + 1] = STREAM:sub(at, at + len - 1)
      at = at + len
    end
    local sv, residue = feed(pieces)
    same_records(sv, residue, "random split")
  end
end

-- The head parser alone: each request start, every prefix length.
T.pipeline_prefixes_exact = function()
  local starts, heads = {}, {}
  do
    local s, buf = mkbuf(STREAM)
    local req, d = P.new_request(), P.new_chunked()
    local pos = 0
    while pos < #STREAM do
      local n = P.parse_request(s, req, nil, pos)
      assert(n > 0, "whole parse at " .. pos)
      starts[#starts + 1], heads[#heads + 1] = pos, n
      pos = pos + n
      if req.chunked then
        d:reset()
        local st, used = P.decode_chunked(s, pos, d)
        eq(st, 1, "chunked whole")
        eq(used, #CHUNKED_BODY, "chunked used")
        pos = pos + used
      else
        pos = pos + math.max(req.content_length, 0)
      end
    end
    eq(pos, #STREAM, "ends at the end")
    local _ = buf
  end
  eq(#starts, 7, "requests")
  local req = P.new_request()
  for r = 1, #starts do
    local st, n = starts[r], heads[r]
    for k = st, #STREAM do
      local s, buf = mkbuf(STREAM:sub(1, k))
      local got = P.parse_request(s, req, nil, st)
      eq(got, k < st + n and -2 or n,
        ("request %d from %d, prefix %d"):format(r, st, k))
      local _ = buf
    end
  end
end

---------------------------------------------------------------------------
-- chunked decoder

-- Decode str whole from offset off; returns status, used, data, d.
local function dechunk(str, max_body, off)
  local s, buf = mkbuf(str)
  local d = P.new_chunked()
  local st, used = P.decode_chunked(s, off or 0, d, max_body)
  local parts = {}
  for k = 1, d.n do parts[k] = d:data(s, k):tostring() end
  local _ = buf
  return st, used, concat(parts), d
end

-- Decode str delivered in pieces (each call sees only its piece, as when
-- the handler consumed everything before); returns status, total used,
-- data, the decoder, and the number of calls made.
local function dechunk_pieces(pieces, max_body)
  local d = P.new_chunked()
  local parts, used_total, st = {}, 0, 0
  for i, piece in ipairs(pieces) do
    local s, buf = mkbuf(piece)
    local used
    st, used = P.decode_chunked(s, 0, d, max_body)
    for k = 1, d.n do parts[#parts + 1] = d:data(s, k):tostring() end
    used_total = used_total + used
    local _ = buf
    if st ~= 0 then return st, used_total, concat(parts), d, i end
    eq(used, #piece, "status 0 consumes the whole piece")
  end
  return st, used_total, concat(parts), d, #pieces
end

T.chunked_basic = function()
  local st, used, data, d = dechunk(CHUNKED_BODY .. "NEXT")
  eq(st, 1, "status")
  eq(used, #CHUNKED_BODY, "used")
  eq(data, "hello, world", "data")
  eq(d.n, 2, "ranges")
  eq(d.off[1], 9, "off[1]")
  eq(d.len[1], 5, "len[1]")
  eq(d.off[2], 19, "off[2]")
  eq(d.len[2], 7, "len[2]")
  eq(d.total, 12, "total")
  eq(d:done(), true, "done")
  eq(d:data(mk(CHUNKED_BODY), 3), nil, "data(3)")
  -- uppercase and lowercase hex, leading zeros, from an offset
  st, used, data = dechunk("xxA\r\n0123456789\r\n00a\r\nabcdefghij\r\n0\r\n\r\n",
    nil, 2)
  eq(st, 1, "hex status")
  eq(used, 37, "hex used")
  eq(data, "0123456789abcdefghij", "hex data")
  st, used, data = dechunk("0\r\n\r\n")
  eq(st, 1, "empty body")
  eq(used, 5, "empty used")
  eq(data, "", "empty data")
end

T.chunked_done_and_error_are_sticky = function()
  local s, buf = mkbuf("0\r\n\r\n5\r\n")
  local d = P.new_chunked()
  local st, used = P.decode_chunked(s, 0, d)
  eq(st, 1, "done")
  eq(used, 5, "used")
  st, used = P.decode_chunked(s, 5, d)
  eq(st, 1, "still done")
  eq(used, 0, "nothing more used")
  eq(d.n, 0, "no ranges")
  d:reset()
  st = P.decode_chunked(s, 5, d)
  eq(st, 0, "after reset: a new body")
  local s2, buf2 = mkbuf("zz")
  d:reset()
  eq((P.decode_chunked(s2, 0, d)), -1, "error")
  eq(d.status, 400, "status")
  eq((P.decode_chunked(s, 0, d)), -1, "error is sticky")
  d:reset()
  eq(d.status, 0, "reset status")
  eq((P.decode_chunked(s, 0, d)), 1, "reset decoder works")
  local _ = { buf, buf2 }
end

T.chunked_extensions = function()
  local valid = {
    "5;a=b\r\nhello\r\n0\r\n\r\n",
    "5;a\r\nhello\r\n0;z\r\n\r\n",
    "5;a;b=c;d\r\nhello\r\n0\r\n\r\n",
    "5 ; a = b ; c\r\nhello\r\n0\r\n\r\n",
    "5\t;\ta\t=\tb\r\nhello\r\n0\r\n\r\n",
    "5;a=\"q u;o\\\"te\\\\d\"\r\nhello\r\n0\r\n\r\n",
    "5;a=\"\"\r\nhello\r\n0\r\n\r\n",
    "5;a=\"x\" ;b\r\nhello\r\n0\r\n\r\n",
    "5;a=\"\128\"\r\nhello\r\n0\r\n\r\n",
  }
  for _, body in ipairs(valid) do
    local st, used, data, d = dechunk(body)
    if st ~= 1 then
      error(("%s: status %d (%d)"):format(q(body), st, d.status))
    end
    eq(used, #body, "used for " .. q(body))
    eq(data, "hello", "data for " .. q(body))
  end
end

-- Every malformed body: the exact status, and the same status and bytes
-- used from every split.  Returns the bytes used.
local function bad_chunked(body, status, max_body)
  local st, used, _, d = dechunk(body, max_body)
  if st ~= -1 or d.status ~= status then
    error(("%s: expected -1 status %d, got %d status %d"):format(q(body),
      status, st, d.status), 2)
  end
  for k = 0, #body do
    local st2, used2, _, d2 = dechunk_pieces({ body:sub(1, k),
      body:sub(k + 1) }, max_body)
    if st2 ~= -1 or d2.status ~= status or used2 ~= used then
      error(("%s cut at %d: expected -1 status %d used %d, got %d status " ..
        "%d used %d"):format(q(body), k, status, used, st2, d2.status,
        used2), 2)
    end
  end
  return used
end

-- After an error, `used` ends before the byte found wrong, or after the
-- size digit that took the size over a limit.
T.chunked_error_used = function()
  eq(bad_chunked("g\r\n", 400), 0, "bad first digit")
  eq(bad_chunked("5x\r\n", 400), 1, "bad byte after the digits")
  eq(bad_chunked("5;a b\r\n", 400), 4, "bad byte in an extension")
  eq(bad_chunked("5;a=\"\1\"\r\n", 400), 5, "bad byte in a quoted value")
  eq(bad_chunked("5\r\r", 400), 2, "CR for the LF of a size line")
  eq(bad_chunked("1\r\nxy", 400), 4, "data longer than its size")
  eq(bad_chunked("0\r\nA : 1\r\n\r\n", 400), 4, "bad trailer name")
  eq(bad_chunked("0\r\n\rX", 400), 4, "CR for the final LF")
  eq(bad_chunked("5\r\nhello\r\n6", 413, 10), 11, "size over max_body")
  eq(bad_chunked(("f"):rep(14) .. "\r\n", 400), 14, "size over 2^53")
  local long = ("0"):rep(P.MAX_CHUNK_LINE) .. "1\r\n"
  eq(bad_chunked(long, 400), P.MAX_CHUNK_LINE, "size line over its limit")
end

T.chunked_bad_extensions = function()
  bad_chunked("5;\r\nhello\r\n0\r\n\r\n", 400)         -- empty name
  bad_chunked("5;=x\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a=\r\nhello\r\n0\r\n\r\n", 400)       -- empty value
  bad_chunked("5 \r\nhello\r\n0\r\n\r\n", 400)         -- BWS without ';'
  bad_chunked("5;a \r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a b\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a=b c\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a=\"x\r\nhello\r\n0\r\n\r\n", 400)    -- unterminated quote
  bad_chunked("5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a=\"\\\r\"\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a=\"\0\"\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a@b\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5;a\nhello\r\n0\r\n\r\n", 400)          -- bare LF
  bad_chunked("5;" .. ("a"):rep(5000) .. "\r\nhello\r\n0\r\n\r\n", 400)
end

T.chunked_invalid_size = function()
  bad_chunked("g\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("0x5\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("-5\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("+5\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked(" 5\r\nhello\r\n0\r\n\r\n", 400)
  bad_chunked("5\r\nhello\r\nz\r\n\r\n", 400)
  bad_chunked(("f"):rep(20) .. "\r\n", 400)                -- overflow
  bad_chunked(("0"):rep(5000) .. "1\r\nx\r\n0\r\n\r\n", 400) -- line length
end

T.chunked_missing_crlf = function()
  bad_chunked("5\nhello\r\n0\r\n\r\n", 400)        -- bare LF after size
  bad_chunked("5\r\rhello\r\n0\r\n\r\n", 400)
  bad_chunked("5\rhello\r\n0\r\n\r\n", 400)
  bad_chunked("5\r\nhelloX\r\n0\r\n\r\n", 400)     -- data longer than size
  bad_chunked("5\r\nhell\r\n0\r\n\r\n", 400)       -- shorter
  bad_chunked("5\r\nhello\n0\r\n\r\n", 400)        -- bare LF after data
  bad_chunked("5\r\nhello\n\n0\r\n\r\n", 400)
  bad_chunked("5\r\nhello\rX0\r\n\r\n", 400)
  bad_chunked("5\r\nhello0\r\n\r\n", 400)
  bad_chunked("0\r\n\n", 400)                      -- bare LF at the end
  bad_chunked("0\r\n\rX", 400)
  bad_chunked("0\n\r\n", 400)
end

T.chunked_trailers = function()
  local body = "3\r\nabc\r\n0\r\nX-A: 1\r\nx-b:\r\nC: \t v \128\r\n\r\nNEXT"
  local st, used, data = dechunk(body)
  eq(st, 1, "status")
  eq(used, #body - 4, "used")
  eq(data, "abc", "data")
  bad_chunked("0\r\n x: 1\r\n\r\n", 400)            -- obs-fold
  bad_chunked("0\r\nA: 1\r\n\tb\r\n\r\n", 400)
  bad_chunked("0\r\nnocolon\r\n\r\n", 400)
  bad_chunked("0\r\nA : 1\r\n\r\n", 400)
  bad_chunked("0\r\n: 1\r\n\r\n", 400)
  bad_chunked("0\r\nA: 1\n\r\n", 400)               -- bare LF
  bad_chunked("0\r\nA: 1\rx\r\n\r\n", 400)
  bad_chunked("0\r\nA: \1\r\n\r\n", 400)            -- control byte
end

T.chunked_trailer_limit = function()
  -- MAX_TRAILER_BYTES counts every byte after the 0-size line, final CRLF
  -- included.
  local line = "X: " .. ("v"):rep(95) .. "\r\n" -- 100 bytes
  local fits = "0\r\n" .. line:rep(81) .. "X: " .. ("v"):rep(85) .. "\r\n\r\n"
  eq(#fits - 3, P.MAX_TRAILER_BYTES, "exactly the limit")
  eq((dechunk(fits)), 1, "at the limit")
  local over = "0\r\n" .. line:rep(81) .. "X: " .. ("v"):rep(86) .. "\r\n\r\n"
  bad_chunked(over, 400)
end

T.chunked_max_body = function()
  local st, used, data = dechunk("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 10)
  eq(st, 1, "exactly max_body")
  eq(used, 25, "used")
  eq(data, "helloworld", "data")
  bad_chunked("5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n", 413, 10)
  bad_chunked("b\r\nhello world\r\n0\r\n\r\n", 413, 10)
  bad_chunked("10\r\n", 413, 15)
  bad_chunked("5\r\nhello\r\n10\r\n", 413, 20)  -- 5 + 16 > 20
  eq((dechunk("5\r\nhello\r\nf\r\n" .. ("x"):rep(15) .. "\r\n0\r\n\r\n", 20)),
    1, "5 + 15 = max_body")
  bad_chunked("1\r\n", 413, 0)
  eq((dechunk("0000000000a\r\n0123456789\r\n0\r\n\r\n", 10)), 1,
    "leading zeros")
  eq((dechunk("0\r\n\r\n", 0)), 1, "empty body, max 0")
  -- found when the size digits arrive, before the data
  local _, used2, _, d = dechunk("5\r\nhello\r\n6", 10)
  eq(d.status, 413, "early 413")
  eq(used2, 11, "used up to the digit")
end

-- Every split position, and every pair of split positions, of a body with
-- extensions and trailers, followed by the next request.
local SPLIT_BODY = "4;name=\"v;x\"\r\nWiki\r\n05 ; e\r\npedia\r\n" ..
  "E\r\n in\r\n\r\nchunks.\r\n0;last\r\nT: x\r\nU: y\r\n\r\n"

T.chunked_every_split = function()
  local want = "Wikipedia in\r\n\r\nchunks."
  local st, used, data = dechunk(SPLIT_BODY .. "GET")
  eq(st, 1, "whole")
  eq(used, #SPLIT_BODY, "whole used")
  eq(data, want, "whole data")
  local n = #SPLIT_BODY
  for k = 0, n do
    local st1, used1, data1, _, calls = dechunk_pieces(
      { SPLIT_BODY:sub(1, k), SPLIT_BODY:sub(k + 1) .. "GET" })
    local what = "cut at " .. k
    eq(st1, 1, what .. ": status")
    eq(used1, n, what .. ": used")
    eq(data1, want, what .. ": data")
    eq(calls, k == n and 1 or 2, what .. ": calls")
  end
  for a = 0, n do
    for b = a, n do
      local st2, used2, data2 = dechunk_pieces({ SPLIT_BODY:sub(1, a),
        SPLIT_BODY:sub(a + 1, b), SPLIT_BODY:sub(b + 1) })
      if st2 ~= 1 or used2 ~= n or data2 ~= want then
        error(("cuts at %d, %d: status %d used %d data %s"):format(a, b, st2,
          used2, q(data2)))
      end
    end
  end
end

T.chunked_byte_at_a_time = function()
  local pieces = {}
  for k = 1, #SPLIT_BODY do pieces[k] = SPLIT_BODY:sub(k, k) end
  local st, used, data, d, calls = dechunk_pieces(pieces)
  eq(st, 1, "status")
  eq(used, #SPLIT_BODY, "used")
  eq(data, "Wikipedia in\r\n\r\nchunks.", "data")
  eq(calls, #SPLIT_BODY, "calls")
  eq(d.total, 23, "total")
end

-- Each prefix alone: status 0, everything consumed, the data so far.
T.chunked_prefixes_exact = function()
  local whole = "Wikipedia in\r\n\r\nchunks."
  -- data bytes decoded once prefix k is seen
  local data_at = {}
  do
    local got = 0
    local s, buf = mkbuf(SPLIT_BODY)
    local d = P.new_chunked()
    for k = 1, #SPLIT_BODY do
      -- feed byte k alone, at its own offset
      local one = slice.new(s.base + (k - 1), 1)
      P.decode_chunked(one, 0, d)
      got = got + (d.n > 0 and d.len[1] or 0)
      data_at[k] = got
    end
    local _ = buf
  end
  eq(data_at[#SPLIT_BODY], #whole, "all data")
  for k = 0, #SPLIT_BODY - 1 do
    local st, used, data = dechunk(SPLIT_BODY:sub(1, k))
    eq(st, 0, "prefix " .. k .. " status")
    eq(used, k, "prefix " .. k .. " used")
    eq(data, whole:sub(1, data_at[k] or 0), "prefix " .. k .. " data")
  end
end

---------------------------------------------------------------------------
-- mutations: no Lua errors, results in range, prefixes consistent

T.mutated_requests_are_consistent = function()
  local seeds = {
    "GET /a?b=c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n" ..
      "Transfer-Encoding: chunked\r\n\r\n",
    "GET / HTTP/1.0\nX: y\n\n",
  }
  local seed = 777
  local function rnd(n)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  end
  local alphabet = { 0, 9, 10, 13, 32, 58, 44, 63, 72, 47, 49, 46, 127, 200 }
  local req = P.new_request(8)
  local allowed = { [400] = true, [431] = true, [501] = true, [505] = true }
  for round = 1, 600 do
    local str = seeds[1 + rnd(#seeds)]
    for _ = 1, 1 + rnd(3) do
      local at = 1 + rnd(#str)
      local c = rnd(2) == 0 and alphabet[1 + rnd(#alphabet)] or rnd(256)
      local op = rnd(3)
      if op == 0 then
        str = str:sub(1, at - 1) .. string.char(c) .. str:sub(at + 1)
      elseif op == 1 then
        str = str:sub(1, at - 1) .. string.char(c) .. str:sub(at)
      else
        str = str:sub(1, at - 1) .. str:sub(at + 1)
      end
    end
    local s, buf = mkbuf(str)
    local n = P.parse_request(s, req, 4096)
    local status = req.status
    local what = ("round %d %s"):format(round, q(str))
    if n == -1 then
      assert(allowed[status], what .. ": status " .. status)
    else
      assert(n == -2 or (n >= 1 and n <= #str), what .. ": n " .. n)
    end
    for k = 0, #str - 1 do
      local sp, bp = mkbuf(str:sub(1, k))
      local m = P.parse_request(sp, req, 4096)
      if n > 0 then
        eq(m, k < n and -2 or n, what .. " prefix " .. k)
      elseif n == -2 then
        eq(m, -2, what .. " prefix " .. k)
      elseif m == -1 then
        eq(req.status, status, what .. " prefix " .. k .. " status")
      else
        eq(m, -2, what .. " prefix " .. k)
      end
      local _ = bp
    end
    local _ = buf
  end
end

T.mutated_chunked_split_consistent = function()
  local seed = 4242
  local function rnd(n)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  end
  local alphabet = { 0, 9, 10, 13, 32, 34, 59, 61, 92, 48, 65, 58, 127 }
  for round = 1, 300 do
    local str = SPLIT_BODY
    for _ = 1, 1 + rnd(2) do
      local at = 1 + rnd(#str)
      local c = alphabet[1 + rnd(#alphabet)]
      local op = rnd(3)
      if op == 0 then
        str = str:sub(1, at - 1) .. string.char(c) .. str:sub(at + 1)
      elseif op == 1 then
        str = str:sub(1, at - 1) .. string.char(c) .. str:sub(at)
      else
        str = str:sub(1, at - 1) .. str:sub(at + 1)
      end
    end
    local st, used, data, d = dechunk(str, 100)
    local what = ("round %d %s"):format(round, q(str))
    assert(st == -1 or st == 0 or st == 1, what)
    assert(used >= 0 and used <= #str, what .. ": used")
    if st == 0 then eq(used, #str, what .. ": status 0 uses all") end
    for k = 0, #str do
      local st2, used2, data2, d2 = dechunk_pieces(
        { str:sub(1, k), str:sub(k + 1) }, 100)
      eq(st2, st, what .. " cut " .. k .. ": status")
      if st == -1 then
        eq(d2.status, d.status, what .. " cut " .. k .. ": error status")
      else
        eq(used2, used, what .. " cut " .. k .. ": used")
        eq(data2, data, what .. " cut " .. k .. ": data")
      end
    end
  end
end

---------------------------------------------------------------------------
-- no garbage on the hot path

-- Compiled, parsing and decoding allocate nothing: every read goes through
-- s.base and lands in Lua numbers.  How LuaJIT links its traces depends on
-- hot counters it shares between code addresses and on a random penalty
-- after an aborted trace, so an unlucky run can leave part of a call in
-- the interpreter (where each pointer read boxes 24 bytes).  Each check
-- therefore gets a few attempts from freshly flushed traces; code that
-- allocates by itself (strings, tables, slices, closures) fails them all.
local function allocation_free(what, step, expect_acc)
  local function run(iters)
    local acc = 0
    for _ = 1, iters do acc = acc + step() end
    return acc
  end
  local tries = {}
  for attempt = 1, 6 do
    jit.flush()
    run(3000) -- compile the traces
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    local acc = run(20000)
    local grown = (collectgarbage("count") - before) * 1024
    collectgarbage("restart")
    eq(acc, 20000 * expect_acc, what .. ": results")
    tries[attempt] = ("%.1f"):format(grown / 20000)
    if grown < 20000 then return end -- under a byte a call: trace objects
  end
  error(("%s: bytes allocated per call in each attempt: %s"):format(what,
    concat(tries, ", ")))
end

T.parse_allocates_nothing = function()
  if not jit or not jit.status() then return end -- needs the compiler
  local r = "POST /submit?x=1 HTTP/1.1\r\nHost: example.com\r\n" ..
    "User-Agent: bench\r\nAccept: */*\r\nConnection: keep-alive\r\n" ..
    "Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
  local s, buf = mkbuf(r)
  local req = P.new_request()
  local parse = P.parse_request
  allocation_free("parse_request", function()
    local n = parse(s, req, 8192)
    if req:method_is(s, "POST") then n = n + 1 end
    return n + req.content_length
  end, #r - 5 + 1 + 5)
  local _ = buf
end

T.decode_allocates_nothing = function()
  if not jit or not jit.status() then return end
  local cb = "4;x=1\r\nWiki\r\n5\r\npedia\r\n1a\r\n" ..
    ("z"):rep(26) .. "\r\n0\r\nT: 1\r\n\r\n"
  local cs, cbuf = mkbuf(cb)
  local d = P.new_chunked()
  local decode = P.decode_chunked
  allocation_free("decode_chunked", function()
    d:reset()
    local st, used = decode(cs, 0, d, 1000)
    return st + used + d.n
  end, 1 + #cb + 3)
  local _ = cbuf
end

T.selftest = function()
  eq(P.selftest(), true, "selftest")
end

return T
