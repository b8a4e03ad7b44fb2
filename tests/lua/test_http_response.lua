-- Tests for the response head parser of lua/ringline/http/parser.lua: status
-- lines, framing (Content-Length, chunked, to the close), keep-alive, limits,
-- every split point of a pipelined pair, and malformed heads (502).
local P = require "ringline.http.parser"
local t = require "testutil"

local eq = t.eq
local mk = t.slice_of

local T = {}

local function parse(raw, max)
  local res = P.new_response(16)
  local s = mk(raw)
  return P.parse_response(s, res, max), res, s
end

T.simple_ok = function()
  local raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello"
  local n, res, s = parse(raw)
  eq(n, #raw - 5, "head length")
  eq(res.code, 200)
  eq(res:reason(s):tostring(), "OK")
  eq(res.minor, 1)
  eq(res.content_length, 5)
  eq(res.chunked, false)
  eq(res.until_close, false)
  eq(res.keep_alive, true)
  eq(res:header(s, "server"):tostring(), "x")
  eq(res:header_count(), 2)
end

T.reason_forms = function()
  local n, res, s = parse("HTTP/1.1 404 Not  Found here\r\n\r\n")
  eq(n > 0, true)
  eq(res.code, 404)
  eq(res:reason(s):tostring(), "Not  Found here")
  n, res, s = parse("HTTP/1.1 204 \r\n\r\n")
  eq(n, 17)
  eq(res:reason(s):tostring(), "")
  n, res = parse("HTTP/1.1 204\r\n\r\n")
  eq(n, 16, "no SP before an empty reason")
  eq(res.code, 204)
  n, res = parse("HTTP/1.0 200 OK\n\n")
  eq(n, 17, "bare LF")
  eq(res.minor, 0)
end

T.framing = function()
  local _, res = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
  eq(res.chunked, true); eq(res.keep_alive, true); eq(res.content_length, -1)
  _, res = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
  eq(res.chunked, false, "another coding before chunked: to the close")
  eq(res.until_close, true); eq(res.keep_alive, false)
  _, res = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" ..
    "Content-Length: 10\r\n\r\n")
  eq(res.chunked, true, "TE wins over CL"); eq(res.content_length, -1)
  eq(res.keep_alive, false, "not reused after TE with CL")
  _, res = parse("HTTP/1.1 200 OK\r\n\r\n")
  eq(res.until_close, true); eq(res.keep_alive, true)
  eq(P.response_has_body(res, false), true)
  eq(P.response_has_body(res, true), false, "HEAD")
  _, res = parse("HTTP/1.1 304 Not Modified\r\n\r\n")
  eq(P.response_has_body(res, false), false)
  _, res = parse("HTTP/1.1 100 Continue\r\n\r\n")
  eq(P.response_has_body(res, false), false)
end

T.keep_alive = function()
  local _, res = parse("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
  eq(res.keep_alive, false)
  _, res = parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
  eq(res.keep_alive, false)
  _, res = parse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n" ..
    "Content-Length: 0\r\n\r\n")
  eq(res.keep_alive, true)
end

T.malformed_is_502 = function()
  local bad = {
    "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
    "HTTP/1.1 099 x\r\n\r\n", "HTTP/2.0 200 OK\r\n\r\n",
    "HTTP/1.1  200 OK\r\n\r\n", "HTTX/1.1 200 OK\r\n\r\n",
    "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "HTTP/1.1 200 O\rK\r\n\r\n", "HTTP/1.1 200 OK\r\nA: \1\r\n\r\n",
  }
  for _, raw in ipairs(bad) do
    local n, res = parse(raw)
    eq(n, -1, ("%q"):format(raw))
    eq(res.status, 502, ("%q"):format(raw))
  end
end

T.limits = function()
  local raw = "HTTP/1.1 200 OK\r\nA: " .. ("x"):rep(100) .. "\r\n\r\n"
  local n, res = parse(raw, 50)
  eq(n, -1); eq(res.status, 431)
  n = parse(raw, #raw)
  eq(n, #raw)
  local many = { "HTTP/1.1 200 OK\r\n" }
  for k = 1, 17 do many[#many + 1] = "H" .. k .. ": v\r\n" end
  many[#many + 1] = "\r\n"
  n, res = parse(table.concat(many))
  eq(n, -1, "more headers than new_response(16)"); eq(res.status, 431)
end

-- Every prefix of a pair of responses is incomplete until the first head
-- is whole, then gives the same result; parsing from the offset gets the
-- second.
T.every_split = function()
  local a = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi"
  local b = "HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"
  local all = a .. b
  local head = #a - 2
  for k = 0, #all do
    local n, res = parse(all:sub(1, k))
    if k < head then
      eq(n, -2, "prefix " .. k)
    else
      eq(n, head, "prefix " .. k); eq(res.code, 200)
    end
  end
  local res = P.new_response()
  local s = mk(all)
  eq(P.parse_response(s, res, nil, #a), #b)
  eq(res.code, 301)
  eq(res:header(s, "location"):tostring(), "/x")
end

T.request_object_unchanged = function()
  -- The request parser shares the field loop: a request still parses.
  local req = P.new_request()
  local s = mk("POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
  eq(P.parse_request(s, req), s.size)
  eq(req.chunked, true); eq(req.keep_alive, true)
  eq(req.host, true); eq(req.host_index, 1)
end

return T
