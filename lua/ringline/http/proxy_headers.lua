-- ringline.http.proxy_headers: the heads ringline.http.proxy writes: a request's
-- fields less hop-by-hop ones plus X-Forwarded-For/-Proto and Via, a
-- response's likewise, error responses; and the per-connection state the
-- proxy's tasks reuse (parsers, buffers, upstream socket).
--
-- Hop-by-hop (RFC 9110 7.6.1): Connection and every field it names,
-- Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding (chunked
-- bodies are relayed with their framing, and the field is written again),
-- Upgrade; and Expect on requests (100-continue is answered by the proxy).
-- Heads are copied from the parsed bytes into a buffer of the connection's
-- own: nothing per field but the copies.
local ffi = require "ffi"
local buffer = require "string.buffer"
local cosocket = require "ringline.cosocket"
local parser = require "ringline.http.parser"
local message = require "ringline.http.message"
local util = require "ringline.util"

local setmetatable, pairs = setmetatable, pairs
local eq_nocase = util.eq_nocase
local lower = string.lower
local CHUNKED = message.CHUNKED

local M = {}

M.CONTINUE = "HTTP/1.1 100 Continue\r\n\r\n"

local KEEP, DROP, XFF, VIA, LISTED = 0, 1, 2, 3, 4

-- name -> what to do with it, by length (request / response)
local function table_of(names)
  local t = {}
  for name, act in pairs(names) do
    local l = t[#name] or {}
    t[#name] = l
    l[#l + 1] = { name, act }
  end
  return t
end
local HOP = { connection = DROP, ["keep-alive"] = DROP,
  ["proxy-connection"] = DROP, te = DROP, trailer = DROP,
  ["transfer-encoding"] = DROP, upgrade = DROP, via = VIA }
local REQ_NAMES, RES_NAMES = {}, {}
for k, v in pairs(HOP) do REQ_NAMES[k], RES_NAMES[k] = v, v end
REQ_NAMES.expect = DROP
REQ_NAMES["x-forwarded-for"] = XFF
REQ_NAMES["x-forwarded-proto"] = DROP
local REQ_BY_LEN, RES_BY_LEN = table_of(REQ_NAMES), table_of(RES_NAMES)

local function classify(by_len, s, off, n, listed)
  local l = by_len[n]
  if l then
    for k = 1, #l do
      local e = l[k]
      if eq_nocase(s, off, e[1], n) then return e[2] end
    end
  end
  if listed and listed[lower(ffi.string(s.base + off, n))] then return LISTED end
  return KEEP
end

-- Fields named by the Connection fields other than close/keep-alive, as a
-- set of lowercase names; nil when there are none (the usual case: no
-- string is made).
local function connection_listed(s, msg)
  local set
  local h = msg:find_header(s, "connection")
  while h do
    local o, n = msg.value_off[h], msg.value_len[h]
    if not ((n == 5 and eq_nocase(s, o, "close", 5)) or
            (n == 10 and eq_nocase(s, o, "keep-alive", 10))) then
      for tok in ffi.string(s.base + o, n):gmatch("[^,%s]+") do
        tok = lower(tok)
        if tok ~= "close" and tok ~= "keep-alive" then
          set = set or {}
          set[tok] = true
        end
      end
    end
    h = msg:find_header(s, "connection", h + 1)
  end
  return set
end

-- Whether the bytes at s.base[off] begin with str (case-sensitive).
function M.bytes_eq(s, off, str)
  return ffi.C.memcmp(s.base + off, str, #str) == 0
end

-- The request's Host, lowercase, without a port.
function M.host_name(s, req)
  local h = req.host_index
  local v = lower(ffi.string(s.base + req.value_off[h], req.value_len[h]))
  return v:match("^(%[[^%]]*%])") or v:match("^([^:]*)")
end

local H = {}
H.__index = H

function M.new(o)
  return setmetatable({ o = o, free = {}, nfree = 0, errors = {} }, H)
end

local function ip_of(peer)
  return peer:match("^%[([^%]]+)%]") or peer:match("^([^:]+):%d+$") or peer
end

-- State for one client connection's task, from a free list.
function H:acquire(c)
  local ctx
  if self.nfree > 0 then
    ctx = self.free[self.nfree]
    self.free[self.nfree] = nil
    self.nfree = self.nfree - 1
  else
    ctx = { req = parser.new_request(self.o.max_headers),
      res = parser.new_response(self.o.max_headers), out = buffer.new(1024),
      us = cosocket.tcp(), rd = message.reader() }
  end
  ctx.ip = ip_of(c and c.peer or "unknown")
  -- A client that came over TLS is forwarded as https (unless proto says
  -- otherwise).
  ctx.proto = (c and self.o.proto == "http" and c.tls) and "https" or self.o.proto
  local us = ctx.us
  us:settimeouts(self.o.connect_timeout, self.o.send_timeout, self.o.read_timeout)
  return ctx
end

function H:release(ctx)
  if self.nfree < 256 then
    self.nfree = self.nfree + 1
    self.free[self.nfree] = ctx
  end
end

local function put_field(out, b, no, nl, vo, vl)
  out:putcdata(b + no, nl)
  out:put(": ")
  out:putcdata(b + vo, vl)
  out:put("\r\n")
end

-- All values of the fields of one kind joined, then ours.
local function put_merged(out, by_len, s, msg, name, act, mine)
  out:put(name, ": ")
  local b = s.base
  local noff, nlen, voff, vlen = msg.name_off, msg.name_len, msg.value_off,
    msg.value_len
  local n = #name
  for h = 1, msg.nheaders do
    if nlen[h] == n and classify(by_len, s, noff[h], n, nil) == act then
      out:putcdata(b + voff[h], vlen[h])
      out:put(", ")
    end
  end
  out:put(mine, "\r\n")
end

-- The fields of msg that are not hop-by-hop, as they came.
local function put_kept(out, by_len, s, msg)
  local b = s.base
  local listed = connection_listed(s, msg)
  local noff, nlen, voff, vlen = msg.name_off, msg.name_len, msg.value_off,
    msg.value_len
  for h = 1, msg.nheaders do
    local no, nl = noff[h], nlen[h]
    if classify(by_len, s, no, nl, listed) == KEEP then
      put_field(out, b, no, nl, voff[h], vlen[h])
    end
  end
end

-- The head to send upstream for request req parsed in s, into out.
function H:request_head(out, s, req, ctx)
  local b = s.base
  out:reset()
  out:putcdata(b + req.method_off, req.method_len)
  out:put(" ")
  out:putcdata(b + req.target_off, req.target_len)
  out:put(" HTTP/1.1\r\n")
  put_kept(out, REQ_BY_LEN, s, req)
  if not req.host then
    -- HTTP/1.0 without Host: the upstream's address, without a scheme.
    out:put("Host: ", ((ctx.us.addr or "upstream"):gsub("^%a+://", "")), "\r\n")
  end
  put_merged(out, REQ_BY_LEN, s, req, "X-Forwarded-For", XFF, ctx.ip)
  out:put("X-Forwarded-Proto: ", ctx.proto, "\r\n")
  put_merged(out, REQ_BY_LEN, s, req, "Via", VIA, self.o.via)
  if req.chunked then out:put("Transfer-Encoding: chunked\r\n") end
  out:put("\r\n")
end

-- The head to send the client for response res parsed in s, into out.
function H:response_head(out, s, res, req, keep_alive, mode, dechunk)
  local b = s.base
  out:reset()
  out:put("HTTP/1.1 ", res.code, " ")
  out:putcdata(b + res.reason_off, res.reason_len)
  out:put("\r\n")
  put_kept(out, RES_BY_LEN, s, res)
  put_merged(out, RES_BY_LEN, s, res, "Via", VIA, self.o.via)
  if mode == CHUNKED and not dechunk then out:put("Transfer-Encoding: chunked\r\n") end
  if not keep_alive then
    out:put("Connection: close\r\n")
  elseif req.minor == 0 then
    out:put("Connection: keep-alive\r\n")
  end
  out:put("\r\n")
end

local REASON = { [400] = "Bad Request", [404] = "Not Found",
  [408] = "Request Timeout", [413] = "Content Too Large",
  [431] = "Request Header Fields Too Large", [501] = "Not Implemented",
  [502] = "Bad Gateway", [504] = "Gateway Timeout",
  [505] = "HTTP Version Not Supported" }

-- A response of the proxy's own (made once per code and keep-alive).
function H:error_response(cs, code, keep)
  local key = keep and code or -code
  local r = self.errors[key]
  if not r then
    local reason = REASON[code] or "Error"
    local body = reason .. "\n"
    r = ("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s")
      :format(code, reason, #body, keep and "" or "Connection: close\r\n", body)
    self.errors[key] = r
  end
  cs:send(r)
end

return M
