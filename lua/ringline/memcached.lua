-- ringline.memcached: a memcached client (text protocol) for coroutines,
-- over a cosocket: get/gets (one key or many), the set family, cas,
-- incr/decr, delete, touch, flush_all, the worker's keep-alive pool.
--
--   local mc = require("ringline.memcached").new()
--   mc:set_timeout(1000)
--   assert(mc:connect("127.0.0.1:11211"))
--   mc:set("k", "v", 0, 7)                 -- key, value, exptime, flags
--   local v, flags = mc:get("k")           -- nil (no error) on a miss
--   mc:set_keepalive(10000, 32)
--
-- A refused store comes back as nil and the server's word ("NOT_STORED",
-- "EXISTS", "NOT_FOUND"); a server error as nil and its line; a lost
-- connection or timeout as nil and the reason (the socket is closed: a
-- reply half read cannot be resynchronised).
local cosocket = require "ringline.cosocket"

local tonumber, tostring, type, setmetatable, concat =
  tonumber, tostring, type, setmetatable, table.concat
local find, sub = string.find, string.sub

local M = {}
local MC = {}
MC.__index = MC

function M.new()
  return setmetatable({ sock = cosocket.tcp() }, MC)
end

function MC:connect(addr, opts) return self.sock:connect(addr, opts) end
function MC:set_timeout(ms) return self.sock:settimeout(ms) end
function MC:set_timeouts(c, s, r) return self.sock:settimeouts(c, s, r) end
function MC:set_keepalive(idle_ms, pool_size)
  return self.sock:setkeepalive(idle_ms, pool_size)
end
function MC:get_reused_times() return self.sock:getreusedtimes() end
function MC:close() return self.sock:close() end

-- An I/O failure closes the socket; the reason goes back to the caller.
local function lost(self, err)
  self.sock:close()
  return nil, err
end

local function check_key(key)
  if type(key) ~= "string" or #key == 0 or #key > 250 or find(key, "[%s%c]") then
    error("memcached key must be 1-250 bytes without spaces or control characters", 3)
  end
end

-- An error line from the server, or nil if line is not one.
local function server_error(line)
  if line == "ERROR" or sub(line, 1, 13) == "CLIENT_ERROR " or
     sub(line, 1, 13) == "SERVER_ERROR " then
    return line
  end
end

-- Read VALUE blocks up to END into out[key] = { value, flags, cas }.
local function read_values(self, out)
  local sock = self.sock
  while true do
    local line, err = sock:receive_line()
    if not line then return lost(self, err) end
    if line == "END" then return out end
    local key, flags, n, cas = line:match("^VALUE (%S+) (%d+) (%d+) ?(%d*)$")
    if not key then
      local e = server_error(line)
      if e then return nil, e end
      return lost(self, "protocol error: " .. line)
    end
    local v
    v, err = sock:receive(tonumber(n))
    if not v then return lost(self, err) end
    local crlf
    crlf, err = sock:receive(2)
    if not crlf then return lost(self, err) end
    if crlf ~= "\r\n" then return lost(self, "protocol error: value not ended by CRLF") end
    out[key] = { v, tonumber(flags), cas ~= "" and cas or nil }
  end
end

local function request(self, req)
  local ok, err = self.sock:send(req)
  if not ok then return lost(self, err) end
  return true
end

local function retrieve(self, cmd, keys)
  local multi = type(keys) == "table"
  local list = multi and keys or { keys }
  for i = 1, #list do check_key(list[i]) end
  local ok, err = request(self, cmd .. " " .. concat(list, " ") .. "\r\n")
  if not ok then return nil, err end
  return read_values(self, {})
end

-- get(key) -> value, flags | nil (miss) | nil, err.
-- get({ k1, k2, ... }) -> { [key] = { value, flags } } (misses absent).
function MC:get(keys)
  local res, err = retrieve(self, "get", keys)
  if not res or type(keys) == "table" then return res, err end
  local r = res[keys]
  if not r then return nil end
  return r[1], r[2]
end

-- gets(key) -> value, flags, cas | nil | nil, err; a table of keys as get.
function MC:gets(keys)
  local res, err = retrieve(self, "gets", keys)
  if not res or type(keys) == "table" then return res, err end
  local r = res[keys]
  if not r then return nil end
  return r[1], r[2], r[3]
end

-- One reply line; "STORED"-like words map to true, others to nil, word.
local function reply_line(self, yes)
  local line, err = self.sock:receive_line()
  if not line then return lost(self, err) end
  if line == yes then return true end
  return nil, line
end

local function store(self, cmd, key, value, exptime, flags, cas)
  check_key(key)
  value = tostring(value)
  local head = ("%s %s %d %d %d"):format(cmd, key, flags or 0, exptime or 0, #value)
  if cas then head = head .. " " .. tostring(cas) end
  local ok, err = request(self, head .. "\r\n" .. value .. "\r\n")
  if not ok then return nil, err end
  return reply_line(self, "STORED")
end

function MC:set(k, v, exptime, flags) return store(self, "set", k, v, exptime, flags) end
function MC:add(k, v, exptime, flags) return store(self, "add", k, v, exptime, flags) end
function MC:replace(k, v, exptime, flags) return store(self, "replace", k, v, exptime, flags) end
function MC:append(k, v) return store(self, "append", k, v, 0, 0) end
function MC:prepend(k, v) return store(self, "prepend", k, v, 0, 0) end
function MC:cas(k, v, cas, exptime, flags)
  return store(self, "cas", k, v, exptime, flags, cas)
end

local function arith(self, cmd, key, delta)
  check_key(key)
  local ok, err = request(self, ("%s %s %s\r\n"):format(cmd, key, tostring(delta or 1)))
  if not ok then return nil, err end
  local line
  line, err = self.sock:receive_line()
  if not line then return lost(self, err) end
  local n = tonumber(line)
  if n then return n end
  return nil, line
end

function MC:incr(key, delta) return arith(self, "incr", key, delta) end
function MC:decr(key, delta) return arith(self, "decr", key, delta) end

function MC:delete(key)
  check_key(key)
  local ok, err = request(self, "delete " .. key .. "\r\n")
  if not ok then return nil, err end
  return reply_line(self, "DELETED")
end

function MC:touch(key, exptime)
  check_key(key)
  local ok, err = request(self, ("touch %s %d\r\n"):format(key, exptime or 0))
  if not ok then return nil, err end
  return reply_line(self, "TOUCHED")
end

function MC:flush_all(delay)
  local ok, err = request(self, delay and ("flush_all %d\r\n"):format(delay) or "flush_all\r\n")
  if not ok then return nil, err end
  return reply_line(self, "OK")
end

function MC:version()
  local ok, err = request(self, "version\r\n")
  if not ok then return nil, err end
  local line
  line, err = self.sock:receive_line()
  if not line then return lost(self, err) end
  return (line:match("^VERSION (.*)$")) or nil, line
end

return M
