-- ringline.http.proxy: an HTTP/1.1 reverse proxy over cosockets: routes by Host
-- and path prefix, upstream pools with round robin and passive health,
-- keep-alive both ways, bodies streamed as slices.
--
--   local proxy = require "ringline.http.proxy"
--   return proxy.service{ listen = "tcp://0.0.0.0:8000",
--     routes = { { host = "*", prefix = "/", upstreams = { "127.0.0.1:8081" } } } }
--
-- One task per client connection reads a request head in place (peek,
-- parse), writes the upstream's head (the client's fields less the
-- hop-by-hop ones, with X-Forwarded-For/-Proto and Via), and relays the
-- body as it arrives: Content-Length bodies as received slices, chunked
-- ones with their framing as they came (checked by the decoder).  The
-- response comes back the same way.  Nothing holds a whole body: a send
-- past --high-water waits for the peer to drain, and while it waits the
-- other side is not read (paused), so a slow reader stops its writer.
-- Pipelined requests are answered in order: the next is not read until
-- this one's response has been relayed.
--
-- Failures: an upstream that refuses or fails to connect, or closes before
-- a response head, is marked failed (max_fails within fail_timeout take it
-- out of rotation for fail_timeout) and the request goes to the next one
-- when it can be sent again (no body); none left: 502.  No response head
-- within read_timeout: 504.  A reused keep-alive connection found closed
-- is retried on a new one without counting against the upstream.
local cosocket = require "ringline.cosocket"
local parser = require "ringline.http.parser"
local message = require "ringline.http.message"
local headers = require "ringline.http.proxy_headers"
local timer = require "ringline.timer"
local ringline = require "ringline"

local type, tostring, ipairs, pairs, next, error =
  type, tostring, ipairs, pairs, next, error
local parse_request = parser.parse_request
local read_head, request_mode, response_mode =
  message.read_head, message.request_mode, message.response_mode
local NONE, CHUNKED, CLOSE = message.NONE, message.CHUNKED, message.CLOSE

local M = {}

local DEFAULTS = {
  connect_timeout = 2000,   -- ms to connect to an upstream
  send_timeout = 60000,     -- ms a send may wait for either peer to drain
  read_timeout = 60000,     -- ms for the upstream's response head, and
                            -- between its body's pieces
  client_timeout = 60000,   -- ms a keep-alive client may idle, and
                            -- between a request body's pieces
  header_timeout = 10000,   -- ms to receive a whole request head
  keepalive = 32,           -- idle connections kept per upstream
  keepalive_timeout = 60000,
  max_fails = 1,            -- failures within fail_timeout that take an
  fail_timeout = 10000,     --   upstream out of rotation for fail_timeout
  max_header_bytes = 8192,
  max_headers = 100,
  proto = "http",           -- X-Forwarded-Proto
  via = "1.1 ringline",
}

-- -- Routes and upstreams ------------------------------------------------

local function new_upstream(addr)
  if type(addr) ~= "string" or addr == "" then
    error("http proxy: an upstream must be an address string", 3)
  end
  return { addr = addr, fails = 0, first_fail = 0, down_until = 0,
           requests = 0, failures = 0 }
end

-- routes: { host = "*" | name, prefix = "/...", upstreams = { addr... } }.
-- The longest prefix wins among the routes of the request's host, then
-- among the "*" routes.
local function compile_routes(list)
  if type(list) ~= "table" or #list == 0 then
    error("http proxy: at least one route with upstreams is needed", 3)
  end
  local by_host, any = {}, {}
  for _, r in ipairs(list) do
    local host = (r.host or "*"):lower()
    local prefix = r.prefix or "/"
    if prefix:byte(1) ~= 47 then error("http proxy: a route prefix starts with /", 3) end
    if type(r.upstreams) ~= "table" or #r.upstreams == 0 then
      error("http proxy: route " .. host .. " " .. prefix .. " has no upstreams", 3)
    end
    local ups = {}
    for k, a in ipairs(r.upstreams) do ups[k] = new_upstream(a) end
    local route = { host = host, prefix = prefix, upstreams = ups, rr = 0 }
    local l = any
    if host ~= "*" then
      l = by_host[host] or {}
      by_host[host] = l
    end
    l[#l + 1] = route
  end
  local function longest_first(a, b) return #a.prefix > #b.prefix end
  for _, l in pairs(by_host) do table.sort(l, longest_first) end
  table.sort(any, longest_first)
  return by_host, any
end

-- Routes file: one route per line, "HOST PREFIX ADDR[,ADDR...]"; # comments.
function M.read_routes(path)
  local f, err = io.open(path)
  if not f then error("http proxy: routes file: " .. tostring(err), 2) end
  local routes, n = {}, 0
  for line in f:lines() do
    n = n + 1
    line = line:gsub("#.*", "")
    if line:find("%S") then
      local host, prefix, addrs = line:match("^%s*(%S+)%s+(%S+)%s+(%S+)%s*$")
      if not host then
        f:close()
        error(("http proxy: %s:%d: expected HOST PREFIX ADDR[,ADDR...]"):format(path, n), 2)
      end
      local ups = {}
      for a in addrs:gmatch("[^,]+") do ups[#ups + 1] = a end
      routes[#routes + 1] = { host = host, prefix = prefix, upstreams = ups }
    end
  end
  f:close()
  return routes
end

-- -- The service -----------------------------------------------------------

function M.service(cfg)
  local o = {}
  for k, v in pairs(DEFAULTS) do
    local x = cfg[k]
    if x == nil then x = v end
    if type(x) ~= type(v) then error("http proxy: " .. k .. " must be a " .. type(v), 2) end
    o[k] = x
  end
  -- tls:// upstreams: cfg.upstream_tls = { ca, sni, verify, cert, key }
  -- (ringline.connect's options); one table for every connect.
  local ut = cfg.upstream_tls or {}
  if type(ut) ~= "table" then error("http proxy: upstream_tls must be a table", 2) end
  local copts = { timeout = o.connect_timeout, ca = ut.ca, sni = ut.sni,
    verify = ut.verify, cert = ut.cert, key = ut.key }
  local by_host, any = compile_routes(cfg.routes)
  local single = (not next(by_host)) and #any == 1 and any[1].prefix == "/" and any[1]
  local hdr = headers.new(o)
  M.stats = { requests = 0, bad_gateway = 0, gateway_timeout = 0, retries = 0 }
  local stats = M.stats

  -- The longest matching prefix in route list l.
  local function match(l, s, path_off, path_len)
    for k = 1, #l do
      local r = l[k]
      local p = r.prefix
      if #p <= path_len and headers.bytes_eq(s, path_off, p) then return r end
    end
  end

  -- The route of a parsed request.
  local function route_of(s, req)
    if single then return single end
    local path_off, path_len = req.path_off, req.path_len
    if req.host_index > 0 and next(by_host) then
      local l = by_host[headers.host_name(s, req)]
      if l then
        local r = match(l, s, path_off, path_len)
        if r then return r end
      end
    end
    return match(any, s, path_off, path_len)
  end

  -- Round robin over the upstreams in rotation; when none is, the next
  -- in turn (a request is better tried than refused).
  local function pick(route, tried)
    local ups, n = route.upstreams, #route.upstreams
    local now = timer.now_ms()
    for _ = 1, n do
      route.rr = route.rr % n + 1
      local u = ups[route.rr]
      if u.down_until <= now and u ~= tried then return u end
    end
    route.rr = route.rr % n + 1
    return ups[route.rr]
  end

  local function failed(u, why)
    u.failures = u.failures + 1
    local now = timer.now_ms()
    if now - u.first_fail > o.fail_timeout then u.fails, u.first_fail = 0, now end
    u.fails = u.fails + 1
    if u.fails >= o.max_fails and u.down_until <= now then
      u.down_until = now + o.fail_timeout
      u.fails = 0
      ringline.warn(("http proxy: upstream %s out of rotation for %d ms: %s")
        :format(u.addr, o.fail_timeout, tostring(why)))
    end
  end

  -- A connection to u with the head queued; true, or nil and the error.
  local function send_head(us, u, head_p, head_n)
    local ok, err = us:connect(u.addr, copts)
    if not ok then return nil, err, true end
    ok, err = us:send_ptr(head_p, head_n)
    if not ok then return nil, err, false end
    return true
  end

  -- Relay a body from one socket to another as it arrives.
  local function relay(rd, to)
    while true do
      local piece, err = rd:next()
      if piece == false then return true end
      if not piece then return nil, err, "read" end
      local ok, e = to:send(piece)
      if not ok then return nil, e, "send" end
    end
  end

  local function serve(cs)
    local c = cs:getconn()
    local ctx = hdr:acquire(c)
    local req, res, out = ctx.req, ctx.res, ctx.out
    local us = ctx.us
    local rd = ctx.rd
    while true do
      -- A request head: idle up to client_timeout for its first byte,
      -- then header_timeout for the rest.
      cs:settimeouts(nil, o.send_timeout, o.client_timeout)
      local s, err = cs:peek(1)
      if not s then break end
      cs:settimeouts(nil, nil, o.header_timeout)
      local n = parse_request(s, req, o.max_header_bytes)
      while n == -2 do
        s, err = cs:peek(s.size + 1)
        if not s then break end
        n = parse_request(s, req, o.max_header_bytes)
      end
      if not s then
        if err == "timeout" then hdr:error_response(cs, 408, false) end
        break
      end
      if n < 0 then
        hdr:error_response(cs, req.status, false)
        break
      end
      stats.requests = stats.requests + 1
      local head_req = req:method_is(s, "HEAD")
      local route = route_of(s, req)
      if not route then
        cs:skip(n)
        local keep = req.keep_alive and request_mode(req) == NONE
        hdr:error_response(cs, 404, keep)
        if not keep then break end
        goto continue
      end
      do
        hdr:request_head(out, s, req, ctx)
        local hp, hn = out:ref()
        cs:skip(n)
        local mode, length = request_mode(req)
        local retryable = mode == NONE
        if req.expect_continue and mode ~= NONE then
          cs:send(headers.CONTINUE)
        end
        -- An upstream with the head sent, the body relayed, a response head.
        local u, rs, rn, code, e2
        local tried = nil
        local tries = #route.upstreams
        local attempt = 0
        while true do
          attempt = attempt + 1
          u = pick(route, tried)
          u.requests = u.requests + 1
          local ok, e, at_connect = send_head(us, u, hp, hn)
          if ok and mode ~= NONE then
            cs:settimeouts(nil, nil, o.client_timeout)
            rd:start(cs, mode, length, true)
            local where
            ok, e, where = relay(rd, us)
            if not ok and where == "read" then
              -- The client went away or sent a bad body: nothing to answer.
              us:close()
              code = -1
              break
            end
          end
          if ok then
            rs, rn = read_head(us, res, o.max_header_bytes)
            -- 100 Continue was answered here; other 1xx are not relayed.
            while rs and res.code < 200 do
              us:skip(rn)
              rs, rn = read_head(us, res, o.max_header_bytes)
            end
            if rs then break end
            e = rn
          end
          local reused = us:getreusedtimes() > 0
          us:close()
          if e == "timeout" and not at_connect then
            failed(u, "timeout")
            code, e2 = 504, e
            break
          end
          if e == "bad head" then
            failed(u, "bad response head")
            code = 502
            break
          end
          if reused and not at_connect and retryable and attempt <= tries + 1 then
            stats.retries = stats.retries + 1  -- the pool's connection was stale
          else
            failed(u, e)
            tried = u
            if not retryable or attempt >= tries then
              code, e2 = 502, e
              break
            end
            stats.retries = stats.retries + 1
          end
        end
        if code then
          if code == -1 then break end
          if code == 504 then stats.gateway_timeout = stats.gateway_timeout + 1
          else stats.bad_gateway = stats.bad_gateway + 1 end
          local keep = req.keep_alive and retryable
          hdr:error_response(cs, code, keep, e2)
          if not keep then break end
          goto continue
        end
        u.fails = 0
        -- The response: head, then body.
        local rmode, rlength = response_mode(res, head_req)
        local client_ka = req.keep_alive and rmode ~= CLOSE
        local dechunk = rmode == CHUNKED and req.minor == 0
        if dechunk or cosocket.stopping then client_ka = false end
        hdr:response_head(out, rs, res, req, client_ka, rmode, dechunk)
        hp, hn = out:ref()
        us:skip(rn)
        cs:settimeouts(nil, o.send_timeout, nil)
        local ok = cs:send_ptr(hp, hn)
        if not ok then us:close(); break end
        us:settimeouts(nil, o.send_timeout, o.read_timeout)
        rd:start(us, rmode, rlength, not dechunk)
        local done, e, where = relay(rd, cs)
        if not done then
          us:close()
          if where == "read" then
            ringline.warn(("http proxy: upstream %s: response body: %s")
              :format(u.addr, tostring(e)))
          end
          break
        end
        if res.keep_alive and rmode ~= CLOSE then
          us:setkeepalive(o.keepalive_timeout, o.keepalive)
        else
          us:close()
        end
        if not client_ka then break end
      end
      ::continue::
    end
    us:close()
    hdr:release(ctx)
  end

  return {
    listen = cfg.listen,
    on_connect = serve,
  }
end

M.DEFAULTS = DEFAULTS
return M
