-- Tests for lua/ringline/http/static.lua: Range parsing, ETag matching,
-- HTTP dates (format and the three parse forms), mime lookup, path decoding.
local S = require "ringline.http.static"
local t = require "testutil"
local eq = t.eq

local T = {}

local function r(v, size)
  local k, a, b = S.parse_range(v, size)
  return k .. (a and (" " .. a .. "-" .. b) or "")
end

function T.range_forms()
  eq(r("bytes=0-4", 10), "ok 0-4")
  eq(r("bytes=5-", 10), "ok 5-9")
  eq(r("bytes=-3", 10), "ok 7-9")
  eq(r("bytes=-30", 10), "ok 0-9")
  eq(r("bytes=2-100", 10), "ok 2-9")
  eq(r("BYTES=1-1", 10), "ok 1-1")
  eq(r(" bytes=1-2 ", 10), "ok 1-2")
  eq(r("bytes=1-2 , ", 10), "ok 1-2")
  eq(r("bytes=10-", 10), "unsatisfiable")
  eq(r("bytes=-0", 10), "unsatisfiable")
  eq(r("bytes=10-20, 30-", 10), "unsatisfiable")
  eq(r("bytes=0-", 0), "unsatisfiable")
  eq(r("bytes=0-1,3-4", 10), "ignore")          -- several: whole file
  eq(r("bytes=0-1, 30-40", 10), "ok 0-1")         -- one satisfiable left
  eq(r("bytes=99999999999999999999-", 10), "unsatisfiable")
  eq(r("bytes=0-99999999999999999999", 10), "ok 0-9")
  eq(r("bytes=-99999999999999999999", 10), "ok 0-9")
end

function T.range_junk()
  for _, v in ipairs({ "", "bytes", "bytes=", "bytes=a-b", "bytes=5-2",
      "bytes=1 - 2", "bytes=1", "bytes=--1", "bytes=1-2x", "items=0-1",
      "bytes =0-1", "bytes=0x1-2", "bytes=+1-2", "bytes=1-2;3-4" }) do
    eq(r(v, 10), "ignore", v)
  end
  eq(r(nil, 10), "ignore")
end

function T.etag_match()
  local e = S.etag(6, 1700000000, 123, 99)
  eq(e, '"6-17979cfe362a007b-63"')
  eq(S.etag_match(e, e, true), true)
  eq(S.etag_match("*", e, true), true)
  eq(S.etag_match('"x", ' .. e, e, true), true)
  eq(S.etag_match('"x",W/' .. e, e, true), true)      -- weak comparison
  eq(S.etag_match('W/' .. e, e, false), false)         -- strong
  eq(S.etag_match('"x"', e, true), false)
  eq(S.etag_match(e:sub(1, -2), e, true), false)
  eq(S.etag_match('junk, ' .. e, e, true), false)
  eq(S.etag_match("", e, true), false)
end

function T.dates()
  eq(S.http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT")
  eq(S.http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT")
  eq(S.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777)
  eq(S.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", 2026), 784111777)
  eq(S.parse_http_date("Sun Nov  6 08:49:37 1994"), 784111777)
  eq(S.parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT"), nil)   -- wrong weekday
  eq(S.parse_http_date("Sun, 31 Feb 1994 08:49:37 GMT"), nil)
  eq(S.parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), nil)
  eq(S.parse_http_date("1994-11-06"), nil)
  eq(S.parse_http_date(""), nil)
  local rng = 12345
  for _ = 1, 2000 do
    rng = (rng * 1103515245 + 12345) % 2147483648
    local ts = rng * 2                               -- 1970 .. 2106
    eq(S.parse_http_date(S.http_date(ts)), ts, "round trip " .. ts)
  end
  eq(S.parse_http_date(S.http_date(951782400)), 951782400)      -- 2000-02-29
end

function T.mime()
  eq(S.mime_of("a/b.html"), "text/html; charset=utf-8")
  eq(S.mime_of("x.PNG"), "image/png")
  eq(S.mime_of("x.woff2"), "font/woff2")
  eq(S.mime_of("x.mjs"), "text/javascript")
  eq(S.mime_of("noext"), "application/octet-stream")
  eq(S.mime_of("x.unknown"), "application/octet-stream")
  eq(S.mime("JSON"), "application/json")
end

function T.decode_path()
  eq(S.decode_path("a%20b.txt"), "a b.txt")
  eq(S.decode_path(""), ".")
  eq(S.decode_path("sub/x.css"), "sub/x.css")
  for _, p in ipairs({ "..", ".", "a/..", "../x", "%2e%2e/x", "a/./b",
      "/etc/passwd", "%2fetc", "a%00b", "%zz", "%", "%4", "a\\b", "a%5cb" }) do
    eq(S.decode_path(p), nil, p)
  end
end

return T
