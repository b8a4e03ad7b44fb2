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
local peer_buf = ffi.new("char[?]", 128)

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

-- Queue n bytes at an FFI pointer (copied once), e.g. a string.buffer's
-- ref(): lets a response be built without making a Lua string.
function methods.send_ptr(c, p, n)
  if c.closed then return nil, "closed" end
  local ret = C.rl_conn_send(W, c._idx, c._gen, p, n, -1)
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
  local due = c._last + c._idle_ms
  local now = timer.now_ms()
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

-- Bytes queued and not yet sent.
function methods.unsent(c)
  if c.closed then return 0 end
  return tonumber(C.rl_conn_unsent(W, c._idx, c._gen))
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
  end,
  __tostring = function(c) return "conn " .. c.id end,
}

function M.bind(w)
  W = w
  id_base = C.rl_worker_id(w) * 2 ^ 44
end

-- conn.id is unique in the process while the connection lives: worker,
-- slot generation and slot.
function M.new(idx, gen)
  return setmetatable({
    _idx = idx, _gen = gen, id = id_base + gen * 1048576 + idx,
    state = {}, closed = false, _idle_ms = 0, _last = 0,
  }, mt)
end

M.methods = methods
return M
