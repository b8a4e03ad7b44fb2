-- ringline.redis: a Redis client (RESP2) for coroutines, over a cosocket:
-- any command, pipelining, the worker's keep-alive pool.
--
--   local redis = require "ringline.redis"
--   local red = redis.new()
--   red:set_timeout(1000)
--   local ok, err = red:connect("127.0.0.1:6379", { pool_size = 32, backlog = 1000 })
--   red:set("k", "v"); local v = red:get("k")     -- redis.null when missing
--   red:set_keepalive(10000, 32)
--   local v = red:get_slice("k")  -- a bulk reply as a slice over the receive
--                                 -- buffer, no copy, valid until the task's
--                                 -- next wait (red:command_slice(name, ...))
--
-- Replies: a status as its string ("OK"), an integer as a number, a bulk
-- string as a string (redis.null for a nil one), an array as a table; an
-- error reply returns false and its message; a lost connection or a
-- timeout returns nil and the reason (the connection is closed then: a
-- reply half read cannot be resynchronised).
local buffer = require "string.buffer"
local cosocket = require "ringline.cosocket"
local slice = require "ringline.slice"

local ffi_string = require("ffi").string
local tonumber, tostring, type, select, setmetatable =
  tonumber, tostring, type, select, setmetatable
local byte, sub = string.byte, string.sub
local Slice = slice.type

local M = {}
M.null = setmetatable({}, { __tostring = function() return "redis.null" end })
local null = M.null

local R = {}
local mt = {}

function M.new()
  return setmetatable({ sock = cosocket.tcp(), out = buffer.new(),
                        npipe = false }, mt)
end

local function read_reply(sock)
  local line, err = sock:receive_line()
  if not line then return nil, err end
  local t = byte(line, 1)
  if t == 36 then                         -- $ bulk
    local n = tonumber(sub(line, 2))
    if not n then return nil, "protocol error: bad bulk length" end
    if n < 0 then return null end
    local v, e = sock:receive(n)
    if not v then return nil, e end
    local crlf
    crlf, e = sock:receive(2)
    if not crlf then return nil, e end
    if crlf ~= "\r\n" then return nil, "protocol error: bulk not ended by CRLF" end
    return v
  elseif t == 43 then                     -- + status
    return sub(line, 2)
  elseif t == 58 then                     -- : integer
    return tonumber(sub(line, 2))
  elseif t == 45 then                     -- - error
    return false, sub(line, 2)
  elseif t == 42 then                     -- * array
    local n = tonumber(sub(line, 2))
    if not n then return nil, "protocol error: bad array length" end
    if n < 0 then return null end
    local arr = {}
    for i = 1, n do
      local v, e = read_reply(sock)
      if v == nil then return nil, e end
      if v == false then v = { false, e } end  -- an error inside an array
      arr[i] = v
    end
    return arr
  end
  return nil, "protocol error: unknown reply type " .. tostring(line)
end

local function put_arg(out, a)
  if type(a) ~= "string" then
    if type(a) == "number" and a % 1 == 0 then a = ("%d"):format(a)
    else a = tostring(a) end
  end
  out:put("$", #a, "\r\n", a, "\r\n")
end

-- Any command: red:command("GET", "k"), or red:get("k").
function R.command(self, name, ...)
  local out = self.out
  local n = select("#", ...)
  out:put("*", n + 1, "\r\n")
  put_arg(out, name)
  for i = 1, n do put_arg(out, (select(i, ...))) end
  if self.npipe then
    self.npipe = self.npipe + 1
    return true
  end
  local sock = self.sock
  local ok, err = sock:send_ptr(out:ref())
  out:reset()
  if not ok then return nil, err end
  local v, e = read_reply(sock)
  if v == nil then sock:close() end
  return v, e
end

-- A bulk reply read in place: "$n\r\n" and its payload are peeked, the
-- value is a slice of them (at most --max-unconsumed bytes); any other
-- reply is read as command() reads it.
local function read_reply_slice(sock)
  local s, err = sock:peek(1)
  if not s then return nil, err end
  if s.base[0] ~= 36 then return read_reply(sock) end
  local hl
  while true do
    for i = 1, s.size - 1 do
      if s.base[i] == 10 then hl = i + 1; break end
    end
    if hl then break end
    if s.size > 32 then return nil, "protocol error: bad bulk length" end
    s, err = sock:peek(s.size + 1)
    if not s then return nil, err end
  end
  if hl < 4 or s.base[hl - 2] ~= 13 then return nil, "protocol error: bad bulk length" end
  local n = tonumber(ffi_string(s.base + 1, hl - 3))
  if not n then return nil, "protocol error: bad bulk length" end
  if n < 0 then
    sock:skip(hl)
    return null
  end
  if s.size < hl + n + 2 then
    s, err = sock:peek(hl + n + 2)
    if not s then return nil, err end
  end
  if s.base[hl + n] ~= 13 or s.base[hl + n + 1] ~= 10 then
    return nil, "protocol error: bulk not ended by CRLF"
  end
  sock:skip(hl + n + 2)
  return Slice(s.base + hl, n, s.bid, s.epoch)
end

-- As command(), a bulk reply as a slice (see read_reply_slice).
function R.command_slice(self, name, ...)
  if self.npipe then return nil, "command_slice in a pipeline" end
  local out = self.out
  local n = select("#", ...)
  out:put("*", n + 1, "\r\n")
  put_arg(out, name)
  for i = 1, n do put_arg(out, (select(i, ...))) end
  local sock = self.sock
  local ok, err = sock:send_ptr(out:ref())
  out:reset()
  if not ok then return nil, err end
  local v, e = read_reply_slice(sock)
  if v == nil then sock:close() end
  return v, e
end

function R.get_slice(self, key) return R.command_slice(self, "GET", key) end

function R.init_pipeline(self)
  self.out:reset()
  self.npipe = 0
end

function R.cancel_pipeline(self)
  self.out:reset()
  self.npipe = false
end

-- Send what was queued since init_pipeline in one write; returns the
-- replies in order (an error reply as { false, message }).
function R.commit_pipeline(self)
  local n = self.npipe
  if not n then return nil, "no pipeline" end
  self.npipe = false
  local sock, out = self.sock, self.out
  if n == 0 then return {} end
  local ok, err = sock:send_ptr(out:ref())
  out:reset()
  if not ok then return nil, err end
  local res = {}
  for i = 1, n do
    local v, e = read_reply(sock)
    if v == nil then
      sock:close()
      return nil, e
    end
    if v == false then v = { false, e } end
    res[i] = v
  end
  return res
end

function R.connect(self, addr, opts) return self.sock:connect(addr, opts) end
function R.set_timeout(self, ms) return self.sock:settimeout(ms) end
function R.set_timeouts(self, c, s, r) return self.sock:settimeouts(c, s, r) end
function R.set_keepalive(self, idle_ms, pool_size)
  return self.sock:setkeepalive(idle_ms, pool_size)
end
function R.get_reused_times(self) return self.sock:getreusedtimes() end
function R.close(self) return self.sock:close() end

-- red:anything(...) is red:command("anything", ...).
mt.__index = function(self, k)
  local f = R[k]
  if f then return f end
  local cmd = k
  f = function(s, ...) return R.command(s, cmd, ...) end
  R[k] = f
  return f
end

return M
