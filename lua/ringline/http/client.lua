-- ringline.http.client: an HTTP/1.1 client for coroutines, over cosockets and the
-- worker's keep-alive pool.
--
--   local http = require "ringline.http.client"
--   local httpc = http.new()
--   httpc:settimeouts(1000, 5000, 5000)          -- connect, send, read (ms)
--   local res, err = httpc:request_uri("http://127.0.0.1:8080/x?y=1", {
--     method = "POST", headers = { ["Content-Type"] = "text/plain" },
--     body = "hello",            -- a string or a slice (sent from its buffer)
--   })
--   res.status, res.reason, res.headers["content-type"], res.body
--
-- Options: method (GET), headers (name -> value or list of values), body,
-- keepalive (true: the connection goes back to the pool when the body
-- has been read whole; false: Connection: close), keepalive_timeout (ms,
-- 60000), pool_size (30), max_body (8 MiB: a longer body is an error),
-- max_header_bytes (16384), follow_redirects (0: a 3xx is returned as
-- it came; n: up to n hops, 303 and a POST's 301/302 as GET), stream
-- (true: res.body is not read; res:read() returns it piece by piece as
-- slices valid until the task's next wait, false at the end; res:discard()
-- reads and drops the rest, res:close() drops the connection).
-- https:// URIs go over TLS, the server's certificate and name verified:
-- ssl_verify (true; false: not checked), ssl_ca (a CA file, default the
-- system's store), ssl_server_name (the name sent and verified, default
-- the URI's host); keep-alive pools are per scheme, host and port.
--
-- Header names in res.headers are lowercase; a repeated header's values
-- are joined with ", " (Set-Cookie's too: res:header_list(name) keeps
-- them apart).  Errors are returned, never raised: nil and "timeout",
-- "closed", "connection refused", "bad response", "body too large", ...
-- A reused keep-alive connection that turns out closed before any byte of
-- the response is retried once on a new one, for a request without a
-- body or with a string or slice body that can be sent again.
local buffer = require "string.buffer"
local cosocket = require "ringline.cosocket"
local parser = require "ringline.http.parser"
local message = require "ringline.http.message"

local type, tostring, pairs, ipairs, setmetatable, tonumber =
  type, tostring, pairs, ipairs, setmetatable, tonumber
local lower = string.lower

local M = {}

local DEFAULTS = {
  keepalive_timeout = 60000, pool_size = 30, max_body = 8 * 1048576,
  max_header_bytes = 16384, follow_redirects = 0,
}
local CONNECT_MS, SEND_MS, READ_MS = 5000, 60000, 60000

local Client = {}
Client.__index = Client

function M.new()
  return setmetatable({ ct = CONNECT_MS, st = SEND_MS, rt = READ_MS,
    out = buffer.new(), res = parser.new_response(100),
    rd = message.reader() }, Client)
end

function Client:settimeouts(connect_ms, send_ms, read_ms)
  self.ct, self.st, self.rt = connect_ms or self.ct, send_ms or self.st,
    read_ms or self.rt
  return true
end

function Client:settimeout(ms) return self:settimeouts(ms, ms, ms) end

-- "http://host[:port][/path][?query]" -> host, port, target.
local function parse_uri(uri)
  local scheme, rest = uri:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "bad uri: " .. uri end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then return nil, "bad uri scheme: " .. scheme end
  local authority, target = rest:match("^([^/?#]*)([^#]*)")
  if authority == "" then return nil, "bad uri: no host" end
  if target == "" then target = "/" elseif target:byte(1) == 63 then target = "/" .. target end
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host then return nil, "bad uri: " .. uri end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if port < 1 or port > 65535 then return nil, "bad uri port" end
  return host, port, target, authority, scheme == "https"
end
M.parse_uri = parse_uri

-- The Location of a redirect, against the URI it answered.
local function resolve_location(base, loc)
  if loc:match("^%a[%w+.-]*://") then return loc end
  local origin = base:match("^(%a[%w+.-]*://[^/?#]*)")
  if loc:sub(1, 2) == "//" then return base:match("^(%a[%w+.-]*:)") .. loc end
  if loc:byte(1) == 47 then return origin .. loc end
  local dir = base:match("^(%a[%w+.-]*://[^?#]*/)") or (origin .. "/")
  return dir .. loc
end

local function put_headers(out, headers)
  for name, v in pairs(headers) do
    if type(v) == "table" then
      for _, x in ipairs(v) do out:put(name, ": ", tostring(x), "\r\n") end
    else
      out:put(name, ": ", tostring(v), "\r\n")
    end
  end
end

local function has_header(headers, want)
  for name in pairs(headers) do
    if lower(name) == want then return true end
  end
  return false
end

-- The response head's fields as a table (lowercase names).
local function headers_of(res, s)
  local h, list = {}, {}
  for i = 1, res:header_count() do
    local name, value = res:header_at(s, i)
    name, value = lower(name:tostring()), value:tostring()
    local old = h[name]
    h[name] = old and (old .. ", " .. value) or value
    local l = list[name]
    if not l then l = {}; list[name] = l end
    l[#l + 1] = value
  end
  return h, list
end

local Response = {}
Response.__index = Response

function Response:header_list(name) return self._list[lower(name)] or {} end

-- The next piece of a streamed body (see stream), false at the end.
function Response:read()
  local r, err = self._rd:next()
  if r == false then self._client:_finished(self) end
  if r == nil then self._client:_drop() end
  return r, err
end

function Response:discard()
  while true do
    local r, err = self:read()
    if r == false then return true end
    if not r then return nil, err end
  end
end

function Response:close() self._client:_drop() end

function Client:_drop()
  if self.sock then self.sock:close() end
  self.sock = nil
end

-- The body was read whole: back to the pool, or closed.
function Client:_finished(res)
  local sock = self.sock
  if not sock then return end
  self.sock = nil
  if res._reuse then
    sock:setkeepalive(res._opts.keepalive_timeout, res._opts.pool_size)
  else
    sock:close()
  end
end

function Client:close() self:_drop(); return true end

local function opt(params, name)
  local v = params[name]
  if v == nil then return DEFAULTS[name] end
  return v
end

-- One request and the head of its response on a connection to addr; retried
-- once on a new connection when a reused one was found closed.
function Client:_exchange(addr, authority, target, params, opts, tls)
  local method = params.method or "GET"
  local body = params.body
  local headers = params.headers or {}
  local out = self.out
  for attempt = 1, 2 do
    local sock = cosocket.tcp()
    sock:settimeouts(self.ct, self.st, self.rt)
    local ok, err = sock:connect(addr, tls)
    if not ok then return nil, err end
    self.sock = sock
    self.reused = sock:getreusedtimes() > 0
    out:reset()
    out:put(method, " ", target, " HTTP/1.1\r\n")
    if not has_header(headers, "host") then out:put("Host: ", authority, "\r\n") end
    if not has_header(headers, "user-agent") then out:put("User-Agent: ringline\r\n") end
    put_headers(out, headers)
    if body ~= nil and not has_header(headers, "content-length") then
      out:put("Content-Length: ", type(body) == "string" and #body or body.size, "\r\n")
    end
    if opts.keepalive == false then out:put("Connection: close\r\n") end
    out:put("\r\n")
    local inline = type(body) == "string" and #body <= 16384
    if inline then out:put(body) end
    local p, n = out:ref()
    ok, err = sock:send_ptr(p, n)
    if ok and body ~= nil and not inline then ok, err = sock:send(body) end
    local s, hn
    if ok then
      -- 1xx heads (100 Continue, 103) come before the final one.
      repeat
        s, hn = message.read_head(sock, self.res, opts.max_header_bytes)
        if s and self.res.code < 200 and self.res.code ~= 101 then
          sock:skip(hn)
          s = false
        end
      until s ~= false
      if not s then err = hn end
    end
    if s then return s, hn, method end
    local reused = sock:getreusedtimes() > 0
    self:_drop()
    if not (reused and err == "closed" and attempt == 1) then
      if err == "bad head" then
        return nil, self.res.status == 431 and "response head too large" or "bad response"
      end
      return nil, err
    end
  end
end

function Client:request_uri(uri, params)
  params = params or {}
  local opts = {}
  for k in pairs(DEFAULTS) do opts[k] = opt(params, k) end
  opts.keepalive = params.keepalive ~= false
  local hops = 0
  while true do
    local host, port, target, authority, https = parse_uri(uri)
    if not host then return nil, port end
    local addr = (host:find(":", 1, true) and ("[" .. host .. "]") or host) .. ":" .. port
    local tls
    if https then
      addr = "tls://" .. addr
      tls = { verify = params.ssl_verify ~= false, ca = params.ssl_ca,
        sni = params.ssl_server_name }
    end
    local s, hn, method = self:_exchange(addr, authority, target, params, opts, tls)
    if not s then return nil, hn end
    local res = self.res
    local code = res.code
    local r = setmetatable({ status = code, reason = res:reason(s):tostring(),
      _client = self, _opts = opts, _rd = self.rd }, Response)
    r.headers, r._list = headers_of(res, s)
    r._reuse = opts.keepalive and res.keep_alive
    self.sock:skip(hn)
    local mode, length = message.response_mode(res, method == "HEAD")
    self.rd:start(self.sock, mode, length, false, opts.max_body)
    local loc = r.headers.location
    if hops < opts.follow_redirects and loc and
       (code == 301 or code == 302 or code == 303 or code == 307 or code == 308) then
      local ok, err = r:discard()
      if not ok then return nil, err end
      hops = hops + 1
      uri = resolve_location(uri, loc)
      if code == 303 or ((code == 301 or code == 302) and method == "POST") then
        local p2 = {}
        for k, v in pairs(params) do p2[k] = v end
        p2.method, p2.body = (method == "HEAD") and "HEAD" or "GET", nil
        params = p2
      end
    elseif params.stream then
      return r
    else
      local b = buffer.new()
      while true do
        local piece, err = r:read()
        if piece == false then break end
        if not piece then return nil, err end
        b:putcdata(piece.base, piece.size)
      end
      r.body = b:tostring()
      return r
    end
  end
end

-- request{ uri = ..., ... }: the same as request_uri(uri, params).
function Client:request(params) return self:request_uri(params.uri, params) end

M.Client = Client
return M
