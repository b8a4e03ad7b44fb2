-- ringline.conn: the connection object handlers get: send, close, id, peer, state.
local ffi = require "ffi"
require "ringline.cdef"
local slice = require "ringline.slice"
local timer = require "ringline.timer"

local C = ffi.C
local ffi_istype, ffi_string = ffi.istype, ffi.string
local type, setmetatable = type, setmetatable
local Slice = slice.type
local slice_epoch = slice.epoch

local M = {}
local methods = {}
local W               -- this state's worker
local id_base = 0     -- worker id in the top bits of conn ids
local peer_buf = ffi.new("char[?]", 1024)

local SEND_ERR = {}   -- -errno -> message, filled on first use

local function send_error(ret)
  local e = SEND_ERR[ret]
  if not e then
    e = ret == -32 and "closed" or ffi_string(C.rl_close_reason_text(ret))
    SEND_ERR[ret] = e
  end
  return nil, e
end

-- Queue a Lua string (copied once) or a slice (sent from the ring buffer
-- without a copy; the buffer stays leased until the send completes).
function methods.send(c, x)
  if c.closed then return nil, "closed" end
  local ret
  if type(x) == "string" then
    ret = C.rl_conn_send(W, c._idx, c._gen, x, #x, -1)
  elseif ffi_istype(Slice, x) then
    if x.epoch ~= slice_epoch() then
      error("slice used after its handler returned", 2)
    end
    ret = C.rl_conn_send(W, c._idx, c._gen, x.base, x.size, x.bid)
  else
    error("conn:send expects a string or a slice, got " .. type(x), 2)
  end
  if ret ~= 0 then return send_error(ret) end
  return true
end

-- Queue a dictionary value (an rl_blob from dict:get_blob), bytes off..off+len
-- (default: all): large values go out without a copy, the send holding its
-- own reference; the caller still releases its own.
function methods.send_value(c, b, off, len)
  if c.closed then return nil, "closed" end
  off = off or 0
  len = len or b.len - off
  local ret = C.rl_conn_send_blob(W, c._idx, c._gen, b, off, len)
  if ret ~= 0 then return send_error(ret) end
  return true
end

-- Queue n bytes at an FFI pointer (copied once), e.g. a string.buffer's
-- ref(): lets a response be built without making a Lua string.
function methods.send_ptr(c, p, n)
  if c.closed then return nil, "closed" end
  local ret = C.rl_conn_send(W, c._idx, c._gen, p, n, -1)
  if ret ~= 0 then return send_error(ret) end
  return true
end

-- Queue len bytes of an open regular file (an fd from C.rl_file_open_at)
-- from offset, after what is queued: the worker reads it with io_uring a
-- chunk at a time, so memory does not follow the file's size.  On true the
-- connection owns fd (closed once sent or at close); on nil, err the
-- caller still does.
function methods.send_file(c, fd, offset, len)
  if c.closed then return nil, "closed" end
  local ret = C.rl_conn_send_file(W, c._idx, c._gen, fd, offset, len)
  if ret ~= 0 then return send_error(ret) end
  return true
end

-- Close once everything queued has been sent.
function methods.close(c)
  if c.closed then return end
  C.rl_conn_close(W, c._idx, c._gen, C.RL_CLOSE_LOCAL, 0)
end

-- Close at once, dropping what is queued.
function methods.abort(c)
  if c.closed then return end
  C.rl_conn_close(W, c._idx, c._gen, C.RL_CLOSE_LOCAL, 1)
end

-- Close the connection (reason "timeout") when no bytes arrive for ms
-- milliseconds; 0 turns it off.  Checked lazily: one timer per connection,
-- re-armed only when it fires early.
local function idle_check(t)
  local c = t.conn
  if c.closed or c._idle_ms == 0 then return end
  local now = timer.now_ms()
  -- Sending counts as activity: a slow reader still taking a long
  -- response is not idle, nor is one that just finished taking it.
  if C.rl_conn_unsent(W, c._idx, c._gen) > 0 then c._last = now end
  local active = C.rl_conn_last_active_ms(W, c._idx, c._gen)
  if active > c._last then c._last = active end
  local due = c._last + c._idle_ms
  if now >= due then
    C.rl_conn_close(W, c._idx, c._gen, C.RL_CLOSE_TIMEOUT, 0)
  else
    c._idle_timer = timer.after(due - now, idle_check)
    c._idle_timer.conn = c
  end
end

function methods.set_timeout(c, ms)
  if type(ms) ~= "number" or ms < 0 then
    error("conn:set_timeout expects milliseconds >= 0", 2)
  end
  if c._idle_timer then c._idle_timer:cancel() end
  c._idle_ms, c._idle_timer = ms, nil
  if ms > 0 and not c.closed then
    c._last = timer.now_ms()
    c._idle_timer = timer.after(ms, idle_check)
    c._idle_timer.conn = c
  end
end

-- Half-close: no more sending once what is queued is out; reading goes on.
function methods.shutdown(c)
  if c.closed then return nil, "closed" end
  C.rl_conn_shutdown(W, c._idx, c._gen)
  return true
end

-- Stop reading from the connection (its bytes wait in the kernel), e.g.
-- while the connection they are forwarded to is backed up; resume later.
-- Bytes on_data leaves unconsumed while paused are offered to it again
-- right after the resume (next loop iteration), without waiting for the
-- peer to send more; the peer's EOF waits until then.
-- Held by a task: a SIGTERM leaves it open for the task to finish with.
function methods.hold(c, on)
  C.rl_conn_set_held(W, c._idx, c._gen, on and 1 or 0)
end

function methods.pause(c)
  if c.closed then return nil, "closed" end
  C.rl_conn_pause(W, c._idx, c._gen, 1)
  return true
end

function methods.resume(c)
  if c.closed then return nil, "closed" end
  C.rl_conn_pause(W, c._idx, c._gen, 0)
  return true
end

-- On (default): stop reading this connection while its own unsent bytes
-- are over --high-water.  Off: the handler applies backpressure itself
-- (a proxy pausing the other side of a pair).
function methods.set_backpressure(c, on)
  if c.closed then return nil, "closed" end
  C.rl_conn_set_backpressure(W, c._idx, c._gen, on and 1 or 0)
  return true
end

-- on_drain(conn) will fire once unsent bytes are at or below --low-water
-- (soon, if they already are): pair it with pausing a source.
function methods.want_drain(c)
  if c.closed then return nil, "closed" end
  C.rl_conn_want_drain(W, c._idx, c._gen)
  return true
end

-- Bytes queued and not yet sent.
function methods.unsent(c)
  if c.closed then return 0 end
  return tonumber(C.rl_conn_unsent(W, c._idx, c._gen))
end

-- false once the unsent bytes are over --high-water (or the connection is
-- gone).  A handler answering pipelined requests checks it as it goes and,
-- at false, returns the bytes consumed so far: the core holds the rest and
-- offers it again, in order, once the queue has drained to --low-water.
function methods.writable(c)
  return C.rl_conn_writable(W, c._idx, c._gen) == 1
end

local TLS_FIELDS = { version = C.RL_TLS_VERSION, cipher = C.RL_TLS_CIPHER,
  alpn = C.RL_TLS_ALPN, sni = C.RL_TLS_SNI, resumed = C.RL_TLS_RESUMED,
  peer_subject = C.RL_TLS_PEER_SUBJECT }

-- conn.tls: {version, cipher, alpn, sni, resumed, peer_subject} of a TLS
-- connection (alpn, sni and peer_subject nil when none; peer_subject only
-- for a verified certificate: a client's with --tls-client-ca, a server's
-- on an outbound connect), false for plain TCP; conn.alpn is its alpn.
local function tls_info(c)
  if c.closed then return nil end
  local t = {}
  for name, what in pairs(TLS_FIELDS) do
    local n = C.rl_conn_tls_info(W, c._idx, c._gen, what, peer_buf, 1024)
    if n < 0 then return nil end
    if n > 0 then t[name] = ffi_string(peer_buf, n) end
  end
  t.resumed = t.resumed == "1"
  return t
end

local mt = {
  __index = function(c, k)
    local m = methods[k]
    if m then return m end
    if k == "peer" then
      -- One getpeername per connection, and only if a handler asks.
      local n = C.rl_conn_peer(W, c._idx, c._gen, peer_buf, 128)
      local p = n > 0 and ffi_string(peer_buf, n) or "unknown"
      c.peer = p
      return p
    end
    if k == "tls" then
      -- Asked once per connection; false on a plain one.
      local t = tls_info(c) or false
      c.tls = t
      return t
    end
    if k == "alpn" then
      local t = c.tls
      return t and t.alpn or nil
    end
  end,
  __tostring = function(c) return "conn " .. c.id end,
}

-- Live connections of this worker by slot: the loop dispatches through it.
M.live = {}

function M._worker() return W end

function M.bind(w)
  W = w
  id_base = C.rl_worker_id(w) * 2 ^ 44
end

-- conn.id is unique in the process while the connection lives: worker,
-- slot generation and slot.  h: handlers of an outbound connection (nil for
-- accepted ones, which follow the service's current handlers).
function M.new(idx, gen, h)
  local c = setmetatable({
    _idx = idx, _gen = gen, id = id_base + gen * 1048576 + idx, _h = h,
    state = {}, closed = false, _idle_ms = 0, _last = 0,
  }, mt)
  M.live[idx] = c
  return c
end

local CONNECT_HANDLERS = { "on_open", "on_data", "on_close", "on_eof", "on_drain" }

-- An outbound connection: handlers get on_open(conn) once connected,
-- on_data/on_close/on_eof/on_drain as for accepted connections; a failed
-- or timed-out connect (or a host name that does not resolve: the reason
-- names it) calls on_close(conn, reason) without on_open.  Host names are
-- resolved off the worker thread; opts.timeout covers resolving and
-- connecting.  Returns the conn at once (sends may be queued), or nil and
-- an error.
--
-- "tls://host:port": TLS, on_open once the handshake is done.  opts.verify
-- (default true) checks the server's certificate against opts.ca (a PEM
-- file; default the system's store) and its name against opts.sni (default
-- the address's host); opts.alpn ("h2,http/1.1" or a list) is offered;
-- opts.cert and opts.key give a client certificate.  A handshake that fails
-- or a certificate that does not verify calls on_close(conn, why) without
-- on_open, why saying what failed ("tls handshake: certificate verify
-- failed: self-signed certificate").
local TLS_OPTS = { "ca", "sni", "alpn", "cert", "key" }

local function tls_options(opts)
  if not opts then return nil end
  local any = opts.verify ~= nil
  for _, k in ipairs(TLS_OPTS) do
    local v = opts[k]
    if v ~= nil then
      if k == "alpn" and type(v) == "table" then v = table.concat(v, ",") end
      if type(v) ~= "string" then error("connect: " .. k .. " must be a string", 3) end
      any = true
    end
  end
  if not any then return nil end
  local t = ffi.new("rl_tls_client")
  -- The strings stay referenced by opts for the call (C copies what it keeps).
  t.ca, t.sni, t.cert, t.key = opts.ca, opts.sni, opts.cert, opts.key
  local alpn = opts.alpn
  if type(alpn) == "table" then alpn = table.concat(alpn, ",") end
  t.alpn = alpn
  t.verify = opts.verify == false and 0 or 1
  return t, alpn
end

function M.connect(addr, h, opts)
  if type(addr) ~= "string" then error("connect: address must be a string", 2) end
  if type(h) ~= "table" then error("connect: handlers must be a table", 2) end
  for _, name in ipairs(CONNECT_HANDLERS) do
    if h[name] ~= nil and type(h[name]) ~= "function" then
      error("connect: " .. name .. " must be a function", 2)
    end
  end
  if not W then error("connect: no worker yet (call it from init or a handler)", 2) end
  local timeout = opts and opts.timeout or 5000
  local gen = ffi.new("uint32_t[1]")
  local tls, keep = nil, nil
  if addr:sub(1, 6) == "tls://" then tls, keep = tls_options(opts) end
  local idx = C.rl_conn_connect(W, addr, timeout, gen, tls)
  keep = nil
  if idx < 0 then
    local why = ffi.string(C.rl_conn_connect_error(W))
    return nil, why ~= "" and why or "invalid address " .. addr
  end
  local c = M.new(idx, gen[0], h)
  c.outbound = true
  if h.on_eof then C.rl_conn_set_eof_event(W, idx, gen[0], 1) end
  return c
end

M.methods = methods
return M
