-- ringline.http.server: HTTP/1.1 routing and responses over ringline connections.
--
-- Requests are parsed in place (ringline.http.parser): method, path, query,
-- headers and a Content-Length body are sub-slices of the received bytes.
-- A request stays unconsumed until it is complete, so its bytes are always
-- contiguous; responses are built in one reusable buffer per worker and sent
-- in order, which is what pipelining needs.
local ffi = require "ffi"
require "ringline.slice"       -- declares memcmp
local buffer = require "string.buffer"
local parser = require "ringline.http.parser"
local ringline = require "ringline"

local C = ffi.C
local type, tostring, pairs, error = type, tostring, pairs, error
local floor = math.floor
local parse_request, decode_chunked = parser.parse_request, parser.decode_chunked

local M = {}

local REASON = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [204] = "No Content",
  [206] = "Partial Content", [301] = "Moved Permanently", [302] = "Found",
  [304] = "Not Modified", [400] = "Bad Request", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed",
  [408] = "Request Timeout", [411] = "Length Required",
  [412] = "Precondition Failed",
  [413] = "Content Too Large", [414] = "URI Too Long",
  [416] = "Range Not Satisfiable",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [503] = "Service Unavailable",
  [505] = "HTTP Version Not Supported",
}

-- Status lines made once, not per response.
local STATUS_LINE = setmetatable({}, { __index = function(t, code)
  local line = ("HTTP/1.1 %d %s\r\n"):format(code, REASON[code] or "Status")
  t[code] = line
  return line
end })

local DEFAULTS = {
  max_header_bytes = 8192,
  max_headers = 64,
  max_body = 1048576,
  idle_timeout = 60000,      -- ms a keep-alive connection may sit idle
  header_timeout = 10000,    -- ms to deliver a complete request head
  server = "ringline",
}

-- -- Responses -------------------------------------------------------------

local Response = {}
Response.__index = Response

local out = buffer.new(4096)   -- the worker's response buffer, reused

local function reset_response(res, conn, head_only, keep_alive, minor)
  res.conn, res.head_only, res.keep_alive = conn, head_only, keep_alive
  res.status_code, res.sent, res.nheaders = 200, false, 0
  res.minor, res.file = minor, false
end

-- The Date header (RFC 9110 6.6.1), made once per second from the time the
-- batch was polled (ringline.unix_ms: no clock read per response).
local unix_ms = ringline.unix_ms
local date_sec, date_line = -1, ""
local os_date = os.date
local function date_header()
  local t = floor(unix_ms() / 1000)
  if t ~= date_sec then
    date_sec = t
    date_line = os_date("!Date: %a, %d %b %Y %H:%M:%S GMT\r\n", t)
  end
  return date_line
end

-- Set the status (default 200).
function Response:status(code)
  self.status_code = code
  return self
end

-- Add a header (name and value are strings).
function Response:header(name, value)
  local n = self.nheaders + 1
  self.nheaders = n
  self[2 * n - 1], self[2 * n] = name, value
  return self
end

local function put_head(res, len)
  out:reset()
  out:put(STATUS_LINE[res.status_code], "Server: ", res.server, "\r\n",
          date_header())
  for i = 1, res.nheaders do
    out:put(res[2 * i - 1], ": ", res[2 * i], "\r\n")
  end
  if not res.keep_alive then
    out:put("Connection: close\r\n")
  elseif res.minor == 0 then
    out:put("Connection: keep-alive\r\n")   -- HTTP/1.0 asked for it
  end
  if len then
    out:putf("Content-Length: %d\r\n\r\n", len)
  else
    out:put("\r\n")
  end
end

local function send_out(conn)
  local p, n = out:ref()
  return conn:send_ptr(p, n)
end

-- Send the response with body (a string, a slice or nil); once per request.
function Response:send(body, content_type)
  if self.sent then error("response already sent", 2) end
  self.sent = true
  if content_type then self:header("Content-Type", content_type) end
  local len = body and #body or 0
  put_head(self, len)
  local conn = self.conn
  if body and not self.head_only then
    if type(body) == "string" and len <= 1024 then
      out:put(body)        -- small bodies ride in the same send
      send_out(conn)
    else
      send_out(conn)
      conn:send(body)      -- a slice goes out without a copy
    end
  else
    send_out(conn)
  end
end

-- Send only the head: Content-Length len (the length the response would
-- have had, as for a HEAD), or no Content-Length when len is nil (a 304).
-- No body follows; once per request.
function Response:send_head(len, content_type)
  if self.sent then error("response already sent", 2) end
  self.sent = true
  if content_type then self:header("Content-Type", content_type) end
  put_head(self, len)
  send_out(self.conn)
end

-- Send len bytes of the open regular file fd from offset as the body
-- (conn:send_file: read by the worker, never copied into Lua); once per
-- request.  The response owns fd from this call on: it is handed to the
-- connection, or closed here (HEAD, len 0, or an error).  If the file
-- cannot be queued after the head was, the connection is closed (the
-- answer would be short).  Returns true, or nil and the error.
function Response:send_file(fd, offset, len, content_type)
  if self.sent then
    C.rl_file_close(fd)
    error("response already sent", 2)
  end
  self.sent = true
  if content_type then self:header("Content-Type", content_type) end
  put_head(self, len)
  local conn = self.conn
  local ok, err = send_out(conn)
  if ok and len > 0 and not self.head_only then
    ok, err = conn:send_file(fd, offset, len)
    if ok then
      self.file = true
      return true
    end
    conn:close()
  end
  C.rl_file_close(fd)
  if not ok then return nil, err end
  return true
end

-- -- Requests ---------------------------------------------------------------

local Request = {}
Request.__index = Request

function Request:method() return self._p:method(self._s) end
function Request:method_is(m) return self._p:method_is(self._s, m) end
function Request:path() return self._p:path(self._s) end
function Request:query() return self._p:query(self._s) end
function Request:header(name) return self._p:header(self._s, name) end
function Request:header_count() return self._p:header_count() end
function Request:header_at(i) return self._p:header_at(self._s, i) end
-- The body: a slice (Content-Length), a string (chunked), or nil.
function Request:body() return self._body end

-- -- The server --------------------------------------------------------------

local Server = {}
Server.__index = Server

-- M.new(opts): opts override DEFAULTS.
function M.new(opts)
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return setmetatable({ opts = o, routes = {} }, Server)
end

-- Routes are matched on the request bytes (memcmp against the parser's
-- offsets): no string is made per request.
local function add_route(self, method, path, fn, is_prefix)
  local r = self.routes
  r[#r + 1] = { method = method, path = path, fn = fn, prefix = is_prefix }
  -- Exact routes first, then longer prefixes before shorter ones.
  table.sort(r, function(a, b)
    if a.prefix ~= b.prefix then return not a.prefix end
    return #a.path > #b.path
  end)
  return self
end

-- Route METHOD PATH exactly ("*" matches any method).
function Server:route(method, path, fn) return add_route(self, method, path, fn, false) end
-- Route every path under prefix.
function Server:prefix(method, prefix, fn) return add_route(self, method, prefix, fn, true) end
function Server:get(path, fn) return self:route("GET", path, fn) end
function Server:post(path, fn) return self:route("POST", path, fn) end

local function find_route(self, p, s, base, as_get)
  local plen, poff = p.path_len, p.path_off
  local routes = self.routes
  for k = 1, #routes do
    local r = routes[k]
    local rp = r.path
    local n = #rp
    if (r.prefix and plen >= n or plen == n) and
       C.memcmp(base + poff, rp, n) == 0 and
       (r.method == "*" or (as_get and r.method == "GET") or
        (not as_get and p:method_is(s, r.method))) then
      return r.fn
    end
  end
end

local function error_response(self, conn, code)
  local res = self._res
  reset_response(res, conn, false, false, 1)
  res.server = self.opts.server
  res:status(code):send(REASON[code] .. "\n", "text/plain")
  conn:close()
end

-- Answer one complete request.  s is the slice holding it.
local function dispatch(self, conn, st, s, body)
  local p = st.req
  local req, res = self._req, self._res
  req._p, req._s, req._body = p, s, body
  local head = p:method_is(s, "HEAD")
  reset_response(res, conn, head, p.keep_alive, p.minor)
  res.server = self.opts.server
  local base = s:ptr()
  -- Absolute form (RFC 9112 3.2.2): route on the path after the authority.
  if p.path_len > 0 and base[p.path_off] ~= 47 then   -- not '/'
    local q = p.path_off
    local e = q + p.path_len
    local k = q
    while k + 2 < e and not (base[k] == 58 and base[k + 1] == 47 and
                             base[k + 2] == 47) do k = k + 1 end   -- "://"
    if k + 2 < e then
      k = k + 3
      while k < e and base[k] ~= 47 do k = k + 1 end
      p.path_off, p.path_len = k, e - k
    end
  end
  local fn = find_route(self, p, s, base, false)
  if not fn and head then fn = find_route(self, p, s, base, true) end
  if not fn then
    res:status(404):send("not found\n", "text/plain")
  else
    local ok, err = pcall(fn, req, res)
    if not ok then
      ringline.error(("http %s %s: handler error: %s"):format(
        p:method(s):tostring(), p:path(s):tostring(), tostring(err)))
      if not res.sent then
        res.keep_alive = false
        res:status(500):send("internal server error\n", "text/plain")
      end
      conn:close()
      return false
    end
    if not res.sent then res:status(204):send(nil) end
  end
  if not p.keep_alive then
    conn:close()
    return false
  end
  return true
end

-- A request must arrive whole within header_timeout of its first byte,
-- however slowly it trickles in (slowloris).
local function start_request_timer(self, conn, st)
  st.req_timer = ringline.after(self.opts.header_timeout, function()
    st.req_timer = nil
    if not conn.closed then error_response(self, conn, 408) end
  end)
end

-- Offer bytes; returns bytes consumed.
local function on_data(self, conn, data)
  local st = conn.state
  local o = self.opts
  local total, off = #data, 0
  while off < total do
    local p = st.req
    local n = parse_request(data, p, o.max_header_bytes, off)
    if n == -2 then break end
    if n == -1 then
      error_response(self, conn, p.status or 400)
      return total
    end
    local head_end = off + n     -- the body starts here
    local body, used
    if p.chunked then
      -- Decode as bytes arrive, from where the last call stopped: the
      -- request stays unconsumed (so offsets from its start are stable)
      -- and the data pieces are collected, the one copy a chunked body
      -- needs since its pieces are not contiguous.
      local d, b = st.chunked, st.body
      if not st.in_chunked then
        st.in_chunked, st.chunk_pos = true, n
        d:reset()
        b:reset()
      end
      local status, u = decode_chunked(data, off + st.chunk_pos, d, o.max_body)
      if status == -1 then
        st.in_chunked = false
        error_response(self, conn, d.status or 400)
        return total
      end
      local base = data:ptr()
      for k = 1, d.n do b:putcdata(base + d.off[k], d.len[k]) end
      st.chunk_pos = st.chunk_pos + u
      if status == 0 then
        if p.expect_continue and not st.continued then
          st.continued = true
          conn:send("HTTP/1.1 100 Continue\r\n\r\n")
        end
        break
      end
      st.in_chunked = false
      body, used = b:tostring(), st.chunk_pos - n
    else
      local cl = p.content_length
      if cl > o.max_body then
        error_response(self, conn, 413)
        return total
      end
      if cl > 0 then
        if total - head_end < cl then
          if p.expect_continue and not st.continued then
            st.continued = true
            conn:send("HTTP/1.1 100 Continue\r\n\r\n")
          end
          break
        end
        body = data:sub(head_end + 1, head_end + cl)
        used = cl
      else
        used = 0
      end
    end
    st.continued = false
    local keep = dispatch(self, conn, st, data, body)
    off = head_end + used
    if not keep then return total end
    -- Past --high-water (a client that sends requests and does not read
    -- the answers), the rest of the pipeline stays where it is, in its
    -- receive buffer: the core offers it again once the queue drained, so
    -- such a client holds the mark and one answer, whatever it sends.
    if off < total and not conn:writable() then
      if st.req_timer then
        st.req_timer:cancel()
        st.req_timer = nil
      end
      return off
    end
  end
  -- Idle keep-alive connections are closed by the connection's timeout;
  -- a request started but not complete has its own deadline, counted from
  -- its first byte: a new partial request after a complete one restarts it.
  if off < total then
    if st.req_timer and off > 0 then
      st.req_timer:cancel()
      st.req_timer = nil
    end
    if not st.req_timer then start_request_timer(self, conn, st) end
  elseif st.req_timer then
    st.req_timer:cancel()
    st.req_timer = nil
  end
  return off
end

-- The ringline service table for this server; extra fields (listen, init,
-- ...) are copied from svc.
function Server:service(svc)
  local o = self.opts
  self._req = setmetatable({}, Request)
  self._res = setmetatable({}, Response)
  local t = {}
  for k, v in pairs(svc or {}) do t[k] = v end
  -- Room for the largest request that may wait unconsumed.
  t.max_unconsumed = t.max_unconsumed or
    (o.max_header_bytes + o.max_body + 65536)
  t.on_open = function(conn)
    conn.state.req = parser.new_request(o.max_headers)
    conn.state.chunked = parser.new_chunked()
    conn.state.body = buffer.new()
    conn:set_timeout(o.idle_timeout)
    if svc and svc.on_open then svc.on_open(conn) end
  end
  t.on_data = function(conn, data) return on_data(self, conn, data) end
  t.on_close = function(conn, reason)
    local st = conn.state
    if st.req_timer then st.req_timer:cancel() end
    if svc and svc.on_close then svc.on_close(conn, reason) end
  end
  return t
end

return M
