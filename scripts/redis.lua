-- redis.lua: a Redis-compatible (RESP2) string store on the shared dictionary.
--
-- Every worker serves the same data: the process-wide dictionary
-- (ringline.dict, sized by --dict-memory), LRU-evicting when full.  Values
-- are byte strings; TYPE says "string" or "none".
--
-- Settings (environment): RINGLINE_REDIS_LISTEN (default
-- tcp://0.0.0.0:6379; --listen overrides both).
--
-- Commands: PING ECHO GET SET SETNX SETEX PSETEX GETSET GETDEL GETEX MGET
-- MSET MSETNX DEL UNLINK EXISTS TOUCH EXPIRE PEXPIRE EXPIREAT PEXPIREAT
-- EXPIRETIME PEXPIRETIME TTL PTTL PERSIST INCR DECR INCRBY DECRBY
-- INCRBYFLOAT APPEND STRLEN GETRANGE SUBSTR SETRANGE TYPE DBSIZE FLUSHDB
-- FLUSHALL KEYS SCAN SELECT INFO COMMAND CLIENT HELLO AUTH CONFIG TIME
-- QUIT.  Replies and error texts are Redis 7.0's.
--
-- How a read is served: the received bytes are parsed in place
-- (ringline.resp), every complete command is executed and its reply
-- appended to one string.buffer per worker, and the buffer goes out with one
-- send per handler call (earlier past 64 KiB).  A GET value over 4 KiB is not
-- copied: the buffer is flushed, the stored value queued by reference
-- (conn:send_value), and the reply goes on.  A protocol error is answered
-- ("-ERR Protocol error: ...", the parser's text) and the connection closed.
--
-- Garbage: dispatch looks the command name up with ffi.string, which finds
-- the interned "GET" or "get" without allocating; keys and values go to the
-- dictionary as pointers into the received bytes.  GET, SET, SETNX, MGET,
-- MSET, INCR/DECR, EXISTS, DEL, PING allocate nothing per command once
-- compiled (measured: the only per-read garbage is the loop's slice).
-- Accepted: a command name in mixed case ("Get") costs one lower() string;
-- an inline argument with escapes is a string; the other commands (INFO,
-- KEYS, SCAN, CLIENT, INCRBYFLOAT, errors, ...) allocate freely.
--
-- Expiry: lazy on access (the dictionary), plus a sweep every 100 ms in each
-- worker that examines 200 keys with a TTL, repeated while most of them had
-- expired (at most 2 ms).
--
-- Differences from Redis 7.0 that are by design: one database (SELECT 0
-- only); strings only (commands of other types are unknown commands; TYPE
-- says string or none); no RESP3 (HELLO 3 is NOPROTO); no passwords (AUTH
-- and HELLO AUTH accept the user "default" with any password); keys are at
-- most 64 KiB; a command on several keys (MSET, MSETNX, DEL, EXISTS) is
-- atomic per key, not as a whole, and GETEX and EXPIRE with NX/XX/GT/LT
-- read then write; CLIENT LIST, connected_clients and the command and
-- connection counters of INFO cover the worker that answers; a key SET
-- with a past EXAT/PXAT is gone at once (Redis's DBSIZE still counts it
-- until touched); COMMAND DOCS is empty; CLIENT SETINFO is accepted (7.2).
local ffi = require "ffi"
local buffer = require "string.buffer"
local ringline = require "ringline"
local R = require "ringline.resp"
local dictmod = require "ringline.dict"
local bit = require "bit"

local C = ffi.C
local ffi_string = ffi.string
local type, tonumber, tostring = type, tonumber, tostring
local byte, sub, lower, upper, format, rep =
  string.byte, string.sub, string.lower, string.upper, string.format, string.rep
local concat = table.concat
local floor = math.floor
local parse_command = R.parse_command

pcall(ffi.cdef, [[
int getpid(void);
]])

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local LISTEN = env("RINGLINE_REDIS_LISTEN", "tcp://0.0.0.0:6379")
local VERSION = "7.0.0"

-- Limits, as Redis's defaults: proto-max-bulk-len 512 MiB, inline requests
-- 64 KiB, client-query-buffer-limit 1 GiB (the unconsumed bytes a
-- connection may keep).  A multibulk count above max_args is a protocol
-- error (Redis allows up to 2^31-1; each argument costs table slots).
local PROTO_MAX_BULK = 512 * 1024 * 1024
local LIMITS = { max_args = 1024 * 1024, max_bulk = PROTO_MAX_BULK,
                 max_inline = 64 * 1024 }
local QUERY_BUF_LIMIT = 1024 * 1024 * 1024

local INLINE_VALUE_MAX = 1024   -- larger GET values are sent by reference
local FLUSH_AT = 65536          -- reply bytes that trigger an early send
local SHRINK_AT = 1024 * 1024   -- a reply buffer past this is freed after use

local LLONG_MAX_DIV_1000 = 9223372036854775LL
local int64_t = ffi.typeof("int64_t")

---------------------------------------------------------------------------
-- State of the command being executed (set by on_data; upvalues of every
-- command function rather than arguments).

local DD                        -- rl_dict * of the shared dictionary
local dict                      -- its ringline.dict wrapper
local B = buffer.new(4096)      -- this worker's reply buffer
local S, CMD, CONN, ST          -- the slice, parsed command, connection, state
local NOW = 0                   -- unix ms, refreshed per handler call
local CLOSE = 1                 -- a command's result: close after replying

local blob_out = ffi.new("rl_blob *[1]")
local i64_out = ffi.new("int64_t[1]")
local size_out = ffi.new("size_t[1]")
local cas_out = ffi.new("uint64_t[1]")

local stats = { commands = 0, connections = 0, clients = 0 }
local clients = {}              -- this worker's connections (CLIENT LIST)
local start_ms = tonumber(C.rl_unix_ms())

-- The batch's time (ringline.unix_ms): no clock read per command; the
-- clock itself where time moves on within a batch.
local now = ringline.unix_ms
local function live_ms() return tonumber(C.rl_unix_ms()) end

-- Argument i: pointer (or string) and length, for the dictionary calls.
local function arg(i)
  local cmd = CMD
  if cmd.nesc > 0 and cmd.esc[i] > 0 then
    local str = cmd:arg_str(S, i)
    return str, #str
  end
  return S.base + cmd.off[i], cmd.len[i]
end

local function arg_str(i) return CMD:arg_str(S, i) end
local function arg_is(i, str) return CMD:arg_is(S, i, str) end
local function arg_int(i) return CMD:arg_int(S, i) end
local function arg_len(i) return CMD.len[i] end

---------------------------------------------------------------------------
-- Replies

local big = false                -- the reply buffer grew past SHRINK_AT
local sent = false               -- flush queued bytes since on_data looked

local function flush()
  local n = #B
  if n > 0 then
    sent = true
    if n > SHRINK_AT then big = true end
    local p, len = B:ref()
    CONN:send_ptr(p, len)
    B:reset()
  end
end

local function ok() B:put("+OK\r\n") end
local function null() B:put("$-1\r\n") end
local function err(msg) B:put("-", msg, "\r\n") end

-- Error text from user bytes: CR and LF become spaces, as Redis does.
local function err_user(msg)
  if msg:find("[\r\n]") then msg = msg:gsub("[\r\n]", " ") end
  B:put("-", msg, "\r\n")
end

-- Numbers go through putf("%d"): put(n) formats a number that came from
-- an FFI field as a float (~3x slower), and every reply has one.
local function int(n)
  B:putf(":%d\r\n", n)
end

local function bulk(str)
  B:put("$", #str, "\r\n", str, "\r\n")
end

local function bulk_arg(i)
  local cmd = CMD
  if cmd.nesc > 0 and cmd.esc[i] > 0 then return bulk(cmd:arg_str(S, i)) end
  local n = cmd.len[i]
  B:putf("$%d\r\n", n)
  B:putcdata(S.base + cmd.off[i], n)
  B:put("\r\n")
end

-- A stored value as a bulk reply; takes over the reference b.
local function bulk_blob(b)
  local n = b.len
  B:putf("$%d\r\n", n)
  if n <= INLINE_VALUE_MAX then
    B:putcdata(b.data, n)
  else
    flush()
    CONN:send_value(b, 0, n)
  end
  C.rl_blob_unref(b)
  B:put("\r\n")
end

local function array(n) B:put("*", n, "\r\n") end

local E_INT = "ERR value is not an integer or out of range"
local E_SYNTAX = "ERR syntax error"
local E_FLOAT = "ERR value is not a valid float"
local E_OOM = "OOM command not allowed when used memory > 'maxmemory'."
local E_BIG = "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
local E_KEY = "ERR key is longer than 65536 bytes"

-- A failed dictionary write (-E2BIG, -ENOMEM).
local function write_error(ret, what)
  if ret == -12 then err(E_OOM)
  elseif ret == -7 then err(what or E_KEY)
  else err("ERR dictionary error " .. tostring(ret)) end
end

local function expire_error(name)
  err("ERR invalid expire time in '" .. name .. "' command")
end

---------------------------------------------------------------------------
-- Commands

local COMMANDS = {}             -- name (lower and upper case) -> entry
local ORDER = {}                -- entries, for COMMAND

-- arity as Redis: n exactly, -n at least n.  flags/acl: for COMMAND.
local function def(name, arity, flags, first, last, step, acl, fn)
  local e = { name = name, arity = arity, fn = fn, flags = flags,
              first = first, last = last, step = step, acl = acl }
  COMMANDS[name] = e
  COMMANDS[upper(name)] = e
  ORDER[#ORDER + 1] = e
  return e
end

-- PING [message]
def("ping", -1, "fast", 0, 0, 0, "@fast @connection", function(argc)
  if argc > 2 then
    err("ERR wrong number of arguments for 'ping' command")
  elseif argc == 2 then
    bulk_arg(2)
  else
    B:put("+PONG\r\n")
  end
end)

def("echo", 2, "fast", 0, 0, 0, "@fast @connection", function()
  bulk_arg(2)
end)

def("get", 2, "readonly fast", 1, 1, 1, "@read @string @fast", function()
  local kp, kl = arg(2)
  if C.rl_dict_get(DD, kp, kl, NOW, blob_out) ~= 0 then return null() end
  bulk_blob(blob_out[0])
end)

-- The expiry argument i as an absolute unix time in ms (a number, or an
-- int64_t beyond 2^53), or nil after replying the error.  unit_s: seconds;
-- rel: relative to now.  Redis's getExpireMillisecondsOrReply.
local function expire_arg(i, unit_s, rel, name)
  local v = arg_int(i)
  if v == nil then err(E_INT) return nil end
  if v <= 0 or (unit_s and v > LLONG_MAX_DIV_1000) then
    expire_error(name)
    return nil
  end
  if type(v) == "number" and v < 1e12 then
    if unit_s then v = v * 1000 end
    if rel then v = v + NOW end
    return v
  end
  local x = int64_t(v)
  if unit_s then x = x * 1000 end
  if rel then x = x + NOW end
  if x <= 0 then expire_error(name) return nil end   -- wrapped around
  return x
end

-- SET's and GETEX's options (Redis's parseExtendedStringArgumentsOrReply).
local F_NX, F_XX, F_GET, F_KEEPTTL, F_PERSIST = 1, 2, 4, 8, 16
local F_EX, F_PX, F_EXAT, F_PXAT = 32, 64, 128, 256
local F_ANY_EXPIRE = F_EX + F_PX + F_EXAT + F_PXAT
local band, bor = bit.band, bit.bor

-- Returns flags and the index of the expire argument (0 if none), or nil
-- after replying "syntax error".
local function string_options(argc, first, is_set)
  local flags, ei = 0, 0
  local j = first
  while j <= argc do
    local n = arg_len(j)
    local more = j < argc
    if n == 2 and arg_is(j, "nx") and is_set and band(flags, F_XX) == 0 then
      flags = bor(flags, F_NX)
    elseif n == 2 and arg_is(j, "xx") and is_set and band(flags, F_NX) == 0 then
      flags = bor(flags, F_XX)
    elseif n == 3 and arg_is(j, "get") and is_set then
      flags = bor(flags, F_GET)
    elseif n == 7 and arg_is(j, "keepttl") and is_set
        and band(flags, F_PERSIST + F_ANY_EXPIRE) == 0 then
      flags = bor(flags, F_KEEPTTL)
    elseif n == 7 and arg_is(j, "persist") and not is_set
        and band(flags, F_KEEPTTL + F_ANY_EXPIRE) == 0 then
      flags = bor(flags, F_PERSIST)
    elseif n == 2 and arg_is(j, "ex") and more
        and band(flags, F_KEEPTTL + F_PERSIST + F_EXAT + F_PX + F_PXAT) == 0 then
      flags = bor(flags, F_EX); ei = j + 1; j = j + 1
    elseif n == 2 and arg_is(j, "px") and more
        and band(flags, F_KEEPTTL + F_PERSIST + F_EX + F_EXAT + F_PXAT) == 0 then
      flags = bor(flags, F_PX); ei = j + 1; j = j + 1
    elseif n == 4 and arg_is(j, "exat") and more
        and band(flags, F_KEEPTTL + F_PERSIST + F_EX + F_PX + F_PXAT) == 0 then
      flags = bor(flags, F_EXAT); ei = j + 1; j = j + 1
    elseif n == 4 and arg_is(j, "pxat") and more
        and band(flags, F_KEEPTTL + F_PERSIST + F_EX + F_EXAT + F_PX) == 0 then
      flags = bor(flags, F_PXAT); ei = j + 1; j = j + 1
    else
      err(E_SYNTAX)
      return nil
    end
    j = j + 1
  end
  return flags, ei
end

local function expire_of(flags, ei, name)
  if ei == 0 then return 0 end
  local unit_s = band(flags, F_EX + F_EXAT) ~= 0
  local rel = band(flags, F_EX + F_PX) ~= 0
  return expire_arg(ei, unit_s, rel, name)
end

-- The generic SET: key arg 2... value at vi, flags, expiry (0 = none).
local function set_generic(ki, vi, flags, at)
  local kp, kl = arg(ki)
  local vp, vl = arg(vi)
  local df = 0
  if band(flags, F_NX) ~= 0 then df = df + 1 end
  if band(flags, F_XX) ~= 0 then df = df + 2 end
  if band(flags, F_KEEPTTL) ~= 0 then df = df + 4 end
  local want_old = band(flags, F_GET) ~= 0
  local ret = C.rl_dict_set(DD, kp, kl, vp, vl, at, df, NOW,
                            want_old and blob_out or nil)
  if want_old then
    if ret == 0 or ret == -17 or ret == -2 then
      local old = blob_out[0]
      if old ~= nil then return bulk_blob(old) end
      return null()
    end
    return write_error(ret, E_KEY)
  end
  if ret == 0 then return ok() end
  if ret == -17 or ret == -2 then return null() end
  write_error(ret, E_KEY)
end

def("set", -3, "write denyoom", 1, 1, 1, "@write @string @slow", function(argc)
  if argc == 3 then
    local kp, kl = arg(2)
    local vp, vl = arg(3)
    local ret = C.rl_dict_set(DD, kp, kl, vp, vl, 0, 0, NOW, nil)
    if ret == 0 then return ok() end
    return write_error(ret, E_KEY)
  end
  local flags, ei = string_options(argc, 4, true)
  if not flags then return end
  local at = expire_of(flags, ei, "set")
  if not at then return end
  set_generic(2, 3, flags, at)
end)

def("setnx", 3, "write denyoom fast", 1, 1, 1, "@write @string @fast", function()
  local kp, kl = arg(2)
  local vp, vl = arg(3)
  local ret = C.rl_dict_set(DD, kp, kl, vp, vl, 0, 1, NOW, nil)
  if ret == 0 then return int(1) end
  if ret == -17 then return int(0) end
  write_error(ret, E_KEY)
end)

def("setex", 4, "write denyoom", 1, 1, 1, "@write @string @slow", function()
  local at = expire_arg(3, true, true, "setex")
  if not at then return end
  set_generic(2, 4, 0, at)
end)

def("psetex", 4, "write denyoom", 1, 1, 1, "@write @string @slow", function()
  local at = expire_arg(3, false, true, "psetex")
  if not at then return end
  set_generic(2, 4, 0, at)
end)

def("getset", 3, "write denyoom fast", 1, 1, 1, "@write @string @fast", function()
  set_generic(2, 3, F_GET, 0)
end)

-- Atomic: a store that expires at once hands back the old value and
-- removes the key under one lock.
def("getdel", 2, "write fast", 1, 1, 1, "@write @string @fast", function()
  local kp, kl = arg(2)
  local ret = C.rl_dict_set(DD, kp, kl, "", 0, -1, 2, NOW, blob_out)
  local old = blob_out[0]
  if (ret == 0 or ret == -2) and old ~= nil then return bulk_blob(old) end
  null()
end)

def("getex", -2, "write fast", 1, 1, 1, "@write @string @fast", function(argc)
  local flags, ei = string_options(argc, 3, false)
  if not flags then return end
  local kp, kl = arg(2)
  if C.rl_dict_get(DD, kp, kl, NOW, blob_out) ~= 0 then return null() end
  local b = blob_out[0]
  local at = expire_of(flags, ei, "getex")
  if not at then C.rl_blob_unref(b) return end
  bulk_blob(b)
  if band(flags, F_EXAT + F_PXAT) ~= 0 and at <= NOW then
    C.rl_dict_del(DD, kp, kl, NOW)
  elseif ei ~= 0 then
    C.rl_dict_expire_at(DD, kp, kl, at, NOW)
  elseif band(flags, F_PERSIST) ~= 0 then
    C.rl_dict_persist(DD, kp, kl, NOW)
  end
end)

def("mget", -2, "readonly fast", 1, -1, 1, "@read @string @fast", function(argc)
  array(argc - 1)
  for i = 2, argc do
    local kp, kl = arg(i)
    if C.rl_dict_get(DD, kp, kl, NOW, blob_out) == 0 then
      bulk_blob(blob_out[0])
    else
      null()
    end
  end
end)

local function wrong_args(name)
  err("ERR wrong number of arguments for '" .. name .. "' command")
end

def("mset", -3, "write denyoom", 1, -1, 2, "@write @string @slow", function(argc)
  if argc % 2 == 0 then return wrong_args("mset") end
  for i = 2, argc, 2 do
    local kp, kl = arg(i)
    local vp, vl = arg(i + 1)
    local ret = C.rl_dict_set(DD, kp, kl, vp, vl, 0, 0, NOW, nil)
    if ret ~= 0 then return write_error(ret, E_KEY) end
  end
  ok()
end)

def("msetnx", -3, "write denyoom", 1, -1, 2, "@write @string @slow", function(argc)
  if argc % 2 == 0 then return wrong_args("msetnx") end
  for i = 2, argc, 2 do
    local kp, kl = arg(i)
    if C.rl_dict_exists(DD, kp, kl, NOW) == 1 then return int(0) end
  end
  for i = 2, argc, 2 do
    local kp, kl = arg(i)
    local vp, vl = arg(i + 1)
    local ret = C.rl_dict_set(DD, kp, kl, vp, vl, 0, 0, NOW, nil)
    if ret ~= 0 then return write_error(ret, E_KEY) end
  end
  int(1)
end)

local function del(argc)
  local n = 0
  for i = 2, argc do
    local kp, kl = arg(i)
    n = n + C.rl_dict_del(DD, kp, kl, NOW)
  end
  int(n)
end
def("del", -2, "write", 1, -1, 1, "@keyspace @write @slow", del)
def("unlink", -2, "write fast", 1, -1, 1, "@keyspace @write @fast", del)

def("exists", -2, "readonly fast", 1, -1, 1, "@keyspace @read @fast", function(argc)
  local n = 0
  for i = 2, argc do
    local kp, kl = arg(i)
    n = n + C.rl_dict_exists(DD, kp, kl, NOW)
  end
  int(n)
end)

def("touch", -2, "readonly fast", 1, -1, 1, "@keyspace @read @fast", function(argc)
  local n = 0
  for i = 2, argc do
    local kp, kl = arg(i)
    if C.rl_dict_get(DD, kp, kl, NOW, nil) == 0 then n = n + 1 end
  end
  int(n)
end)

-- EXPIRE and friends, with Redis 7's NX / XX / GT / LT.
local X_NX, X_XX, X_GT, X_LT = 1, 2, 4, 8
local function expire_generic(argc, name, unit_s, base)
  local flags = 0
  for j = 4, argc do
    local n = arg_len(j)
    if n == 2 and arg_is(j, "nx") then flags = bor(flags, X_NX)
    elseif n == 2 and arg_is(j, "xx") then flags = bor(flags, X_XX)
    elseif n == 2 and arg_is(j, "gt") then flags = bor(flags, X_GT)
    elseif n == 2 and arg_is(j, "lt") then flags = bor(flags, X_LT)
    else
      return err_user("ERR Unsupported option " .. arg_str(j):match("^[^%z]*"))
    end
  end
  if band(flags, X_NX) ~= 0 and band(flags, X_XX + X_GT + X_LT) ~= 0 then
    return err("ERR NX and XX, GT or LT options at the same time are not compatible")
  end
  if band(flags, X_GT) ~= 0 and band(flags, X_LT) ~= 0 then
    return err("ERR GT and LT options at the same time are not compatible")
  end
  local v = arg_int(3)
  if v == nil then return err(E_INT) end
  local when
  if type(v) == "number" and v > -1e12 and v < 1e12 then
    when = unit_s and v * 1000 or v
    when = when + base
  else
    local x = int64_t(v)
    if unit_s then
      if x > LLONG_MAX_DIV_1000 or x < -LLONG_MAX_DIV_1000 then
        return expire_error(name)
      end
      x = x * 1000
    end
    if x > 9223372036854775807LL - base then return expire_error(name) end
    when = x + base
  end
  local kp, kl = arg(2)
  if flags ~= 0 then
    local t = C.rl_dict_ttl_ms(DD, kp, kl, NOW)
    if t == -2 then return int(0) end
    local cur = t == -1 and -1 or t + NOW
    if band(flags, X_NX) ~= 0 and cur ~= -1 then return int(0) end
    if band(flags, X_XX) ~= 0 and cur == -1 then return int(0) end
    if band(flags, X_GT) ~= 0 and (cur == -1 or when <= cur) then return int(0) end
    if band(flags, X_LT) ~= 0 and cur ~= -1 and when >= cur then return int(0) end
  end
  if when <= NOW then
    return int(C.rl_dict_del(DD, kp, kl, NOW))
  end
  int(C.rl_dict_expire_at(DD, kp, kl, when, NOW))
end

def("expire", -3, "write fast", 1, 1, 1, "@keyspace @write @fast", function(argc)
  expire_generic(argc, "expire", true, NOW)
end)
def("pexpire", -3, "write fast", 1, 1, 1, "@keyspace @write @fast", function(argc)
  expire_generic(argc, "pexpire", false, NOW)
end)
def("expireat", -3, "write fast", 1, 1, 1, "@keyspace @write @fast", function(argc)
  expire_generic(argc, "expireat", true, 0)
end)
def("pexpireat", -3, "write fast", 1, 1, 1, "@keyspace @write @fast", function(argc)
  expire_generic(argc, "pexpireat", false, 0)
end)

-- The ms left as a number if exact, else the int64_t.
local function ttl_of(i)
  local kp, kl = arg(i)
  local t = C.rl_dict_ttl_ms(DD, kp, kl, NOW)
  local n = tonumber(t)
  if n > -9e15 and n < 9e15 then return n end
  return t
end

-- A time in ms as the reply: as is, or in seconds rounded half up.
local function int_ms_or_s(t, ms)
  if ms then return int(t) end
  if type(t) == "number" then return int(floor((t + 500) / 1000)) end
  int((t + 500) / 1000)
end

local function ttl_generic(ms)
  local t = ttl_of(2)
  if t < 0 then return int(t) end
  int_ms_or_s(t, ms)
end
def("ttl", 2, "readonly fast", 1, 1, 1, "@keyspace @read @fast", function()
  ttl_generic(false)
end)
def("pttl", 2, "readonly fast", 1, 1, 1, "@keyspace @read @fast", function()
  ttl_generic(true)
end)

local function expiretime_generic(ms)
  local t = ttl_of(2)
  if t < 0 then return int(t) end
  int_ms_or_s(t + NOW, ms)
end
def("expiretime", 2, "readonly fast", 1, 1, 1, "@keyspace @read @fast", function()
  expiretime_generic(false)
end)
def("pexpiretime", 2, "readonly fast", 1, 1, 1, "@keyspace @read @fast", function()
  expiretime_generic(true)
end)

def("persist", 2, "write fast", 1, 1, 1, "@keyspace @write @fast", function()
  local kp, kl = arg(2)
  int(C.rl_dict_persist(DD, kp, kl, NOW))
end)

-- INCR family.  The dictionary checks the stored value (Redis's string2ll
-- rule) and overflow, atomically.
local function incr_by(delta)
  local kp, kl = arg(2)
  local ret = C.rl_dict_incr(DD, kp, kl, delta, NOW, i64_out)
  if ret == 0 then
    local v = i64_out[0]
    B:putf(":%d\r\n", v)
  elseif ret == -22 then err(E_INT)
  elseif ret == -34 then err("ERR increment or decrement would overflow")
  else write_error(ret, E_KEY) end
end

def("incr", 2, "write denyoom fast", 1, 1, 1, "@write @string @fast", function()
  incr_by(1)
end)
def("decr", 2, "write denyoom fast", 1, 1, 1, "@write @string @fast", function()
  incr_by(-1)
end)
def("incrby", 3, "write denyoom fast", 1, 1, 1, "@write @string @fast", function()
  local d = arg_int(3)
  if d == nil then return err(E_INT) end
  incr_by(d)
end)
def("decrby", 3, "write denyoom fast", 1, 1, 1, "@write @string @fast", function()
  local d = arg_int(3)
  if d == nil then return err(E_INT) end
  if d == -9223372036854775807LL - 1 then
    return err("ERR decrement would overflow")
  end
  incr_by(-d)
end)

---------------------------------------------------------------------------
-- INCRBYFLOAT: Redis computes in x87 80-bit long double (strtold, +,
-- "%.17Lf"), which LuaJIT cannot reach through the FFI.  This is that
-- arithmetic done exactly with big integers: parse rounds to 64 bits of
-- mantissa like glibc's strtold, add rounds the exact sum, format prints
-- the exact binary value rounded to 17 decimals, like glibc's printf.  Not
-- on any hot path.

local LD = {}
do
  local BASE = 16777216          -- limbs of 24 bits: products stay exact

  local function norm(a)
    local n = #a
    while n > 0 and a[n] == 0 do a[n] = nil; n = n - 1 end
    return a
  end

  local function small(x)        -- 0 <= x < 2^53
    local a, i = {}, 0
    while x > 0 do
      i = i + 1
      local lo = x % BASE
      a[i] = lo
      x = (x - lo) / BASE
    end
    return a
  end

  local function mul_small(a, m) -- m < 2^24
    local r, carry = {}, 0
    local n = #a
    for i = 1, n do
      local t = a[i] * m + carry
      local lo = t % BASE
      r[i] = lo
      carry = (t - lo) / BASE
    end
    while carry > 0 do
      n = n + 1
      local lo = carry % BASE
      r[n] = lo
      carry = (carry - lo) / BASE
    end
    return norm(r)
  end

  local function add_small(a, x) -- in place
    local i = 1
    while x > 0 do
      local t = (a[i] or 0) + x
      local lo = t % BASE
      a[i] = lo
      x = (t - lo) / BASE
      i = i + 1
    end
    return a
  end

  local function bitlen(a)
    local n = #a
    if n == 0 then return 0 end
    local top, b = a[n], 0
    while top >= 1 do top = floor(top / 2); b = b + 1 end
    return (n - 1) * 24 + b
  end

  local function shl(a, k)
    if #a == 0 then return {} end
    local q, b = floor(k / 24), k % 24
    local r = {}
    for i = 1, q do r[i] = 0 end
    local mul, carry = 2 ^ b, 0
    local n = #a
    for i = 1, n do
      local t = a[i] * mul + carry
      local lo = t % BASE
      r[i + q] = lo
      carry = (t - lo) / BASE
    end
    if carry > 0 then r[n + q + 1] = carry end
    return r
  end

  local function shr(a, k)
    local q, b = floor(k / 24), k % 24
    local n = #a
    if q >= n then return {} end
    local r = {}
    local div = 2 ^ b
    for i = q + 1, n do
      local hi = 0
      if i < n then hi = (a[i + 1] % div) * (BASE / div) end
      r[i - q] = floor(a[i] / div) + hi
    end
    return norm(r)
  end

  local function cmp(a, b)
    local na, nb = #a, #b
    if na ~= nb then return na < nb and -1 or 1 end
    for i = na, 1, -1 do
      local x, y = a[i], b[i]
      if x ~= y then return x < y and -1 or 1 end
    end
    return 0
  end

  local function add(a, b)
    local r, carry = {}, 0
    local n = #a > #b and #a or #b
    for i = 1, n do
      local t = (a[i] or 0) + (b[i] or 0) + carry
      if t >= BASE then r[i] = t - BASE; carry = 1 else r[i] = t; carry = 0 end
    end
    if carry > 0 then r[n + 1] = carry end
    return r
  end

  local function subtract(a, b)  -- a >= b
    local r, borrow = {}, 0
    for i = 1, #a do
      local t = a[i] - (b[i] or 0) - borrow
      if t < 0 then r[i] = t + BASE; borrow = 1 else r[i] = t; borrow = 0 end
    end
    return norm(r)
  end

  local function odd(a) return #a > 0 and a[1] % 2 == 1 end

  -- a / b for quotients of a few limbs: bit by bit.
  local function divmod(a, b)
    local s = bitlen(a) - bitlen(b)
    local q = {}
    if s < 0 then return q, a end
    for i = 1, floor(s / 24) + 1 do q[i] = 0 end
    local r = a
    for k = s, 0, -1 do
      local bs = shl(b, k)
      if cmp(r, bs) >= 0 then
        r = subtract(r, bs)
        local i = floor(k / 24) + 1
        q[i] = q[i] + 2 ^ (k % 24)
      end
    end
    return norm(q), r
  end

  local function divmod_small(a, m)  -- m <= 10^7
    local q, r = {}, 0
    for i = #a, 1, -1 do
      local t = r * BASE + a[i]
      local d = floor(t / m)
      q[i] = d
      r = t - d * m
    end
    return norm(q), r
  end

  local function mul_pow10(a, n)
    while n >= 7 do a = mul_small(a, 10000000); n = n - 7 end
    if n > 0 then a = mul_small(a, 10 ^ n) end
    return a
  end

  local function from_digits(d)
    local n = #d
    local first = (n - 1) % 7 + 1
    local r = small(tonumber(sub(d, 1, first)))
    for i = first + 1, n, 7 do
      r = add_small(mul_small(r, 10000000), tonumber(sub(d, i, i + 6)))
    end
    return r
  end

  local function to_dec(a)
    if #a == 0 then return "0" end
    local parts, n = {}, 0
    while #a > 0 do
      local r
      a, r = divmod_small(a, 10000000)
      n = n + 1
      parts[n] = r
    end
    local out = { format("%d", parts[n]) }
    for i = n - 1, 1, -1 do out[#out + 1] = format("%07d", parts[i]) end
    return concat(out)
  end

  -- A value: { neg, m = mantissa (< 2^64, empty for zero), e }:
  -- (-1)^neg * m * 2^e; or { neg, inf = true }.
  local EMIN = -16445            -- 2^-16445: the smallest denormal
  local EMAX = 16320             -- (2^64 - 1) * 2^16320: the largest finite
  local ONE = { 1 }

  local function zero(neg) return { neg = neg, m = {}, e = 0 } end

  -- n / d * 2^k rounded to 64 bits, to nearest, ties to even.
  local function round(neg, n, d, k)
    if #n == 0 then return zero(neg) end
    local e = bitlen(n) - bitlen(d) + k - 64
    if e < EMIN then e = EMIN end
    local q, r, den
    while true do
      local sh = k - e
      local a
      if sh >= 0 then a, den = shl(n, sh), d else a, den = n, shl(d, -sh) end
      q, r = divmod(a, den)
      if bitlen(q) <= 64 then break end
      e = e + 1
    end
    local c = cmp(shl(r, 1), den)
    if c > 0 or (c == 0 and odd(q)) then
      q = add_small(q, 1)
      if bitlen(q) > 64 then q = shr(q, 1); e = e + 1 end
    end
    if #q == 0 then return zero(neg) end
    if e > EMAX then return { neg = neg, inf = true } end
    return { neg = neg, m = q, e = e }
  end

  local function is_space(c) return c == 32 or (c >= 9 and c <= 13) end
  local function hexval(c)
    if c <= 57 then return c - 48 end
    if c >= 97 then return c - 87 end
    return c - 55
  end

  -- Redis's string2ld: strtold must take the whole string; leading blanks,
  -- NaN and results out of range (overflow, or underflow to zero) are
  -- refused.  nil when not a valid float.
  function LD.parse(s)
    local slen = #s
    if slen == 0 or slen >= 5120 then return nil end
    -- strtold stops at a NUL: Redis then sees it did not read everything.
    if s:find("\0", 1, true) then return nil end
    local c = byte(s, 1)
    if is_space(c) then return nil end
    local neg, rest = false, s
    if c == 43 or c == 45 then neg = c == 45; rest = sub(s, 2) end
    local low = lower(rest)
    if low == "inf" or low == "infinity" then return { neg = neg, inf = true } end
    if sub(low, 1, 2) == "0x" then
      local mant, frac, pos = rest:match("^0[xX](%x*)%.?(%x*)()")
      if not (mant and rest:find("^0[xX]%.?%x")) then return nil end
      if #frac > 0 and byte(rest, 3 + #mant) ~= 46 then return nil end
      local pexp = 0
      local tail = sub(rest, pos)
      if tail ~= "" then
        local sign, digs = tail:match("^[pP]([+-]?)(%d+)$")
        if not digs then return nil end
        digs = digs:gsub("^0+", "")
        pexp = #digs > 7 and 99999999 or (tonumber(digs) or 0)
        if sign == "-" then pexp = -pexp end
      end
      local all = mant .. frac
      local m = {}
      for i = 1, #all do m = add_small(mul_small(m, 16), hexval(byte(all, i))) end
      if #m == 0 then return zero(neg) end
      local k = pexp - 4 * #frac
      local bl = bitlen(m) + k
      if bl > 16400 or bl < EMIN - 2 then return nil end
      local v = round(neg, m, ONE, k)
      if v.inf or #v.m == 0 then return nil end
      return v
    end
    local ip, fp, tail = rest:match("^(%d*)%.?(%d*)(.*)$")
    if not ip or #ip + #fp == 0 then return nil end
    if #fp > 0 and byte(rest, #ip + 1) ~= 46 then return nil end
    local exp10 = 0
    if tail ~= "" then
      local sign, digs = tail:match("^[eE]([+-]?)(%d+)$")
      if not digs then return nil end
      digs = digs:gsub("^0+", "")
      exp10 = #digs > 7 and 99999999 or (tonumber(digs) or 0)
      if sign == "-" then exp10 = -exp10 end
    end
    local d = (ip .. fp):gsub("^0+", "")
    exp10 = exp10 - #fp
    local tz = #d:match("0*$")
    if tz > 0 then d = sub(d, 1, #d - tz); exp10 = exp10 + tz end
    if d == "" then return zero(neg) end
    local nd = #d
    if nd + exp10 > 4934 or nd + exp10 < -4952 then return nil end
    local n = from_digits(d)
    local v
    if exp10 >= 0 then
      v = round(neg, mul_pow10(n, exp10), ONE, 0)
    else
      v = round(neg, n, mul_pow10(ONE, -exp10), 0)
    end
    if v.inf or #v.m == 0 then return nil end
    return v
  end

  -- a + b, or nil when that is NaN or infinite.
  function LD.add(a, b)
    if a.inf or b.inf then return nil end
    if #a.m == 0 then
      if #b.m == 0 then return zero(a.neg and b.neg) end
      return b
    end
    if #b.m == 0 then return a end
    local emin = a.e < b.e and a.e or b.e
    local xa, xb = shl(a.m, a.e - emin), shl(b.m, b.e - emin)
    local v
    if a.neg == b.neg then
      v = round(a.neg, add(xa, xb), ONE, emin)
    else
      local c = cmp(xa, xb)
      if c == 0 then return zero(false) end
      if c > 0 then v = round(a.neg, subtract(xa, xb), ONE, emin)
      else v = round(b.neg, subtract(xb, xa), ONE, emin) end
    end
    if v.inf then return nil end
    return v
  end

  -- Redis's ld2string(LD_STR_HUMAN): "%.17Lf" without trailing zeros (nor
  -- a trailing point), and "-0" as "0".
  function LD.format(v)
    local t
    local m17 = #v.m > 0 and mul_pow10(v.m, 17) or {}
    if #m17 == 0 then
      t = m17
    elseif v.e >= 0 then
      t = shl(m17, v.e)
    else
      local s = -v.e
      local q = shr(m17, s)
      local r = subtract(m17, shl(q, s))
      local c = cmp(shl(r, 1), shl(ONE, s))
      if c > 0 or (c == 0 and odd(q)) then q = add_small(q, 1) end
      t = q
    end
    local d = to_dec(t)
    if #d < 18 then d = rep("0", 18 - #d) .. d end
    local ipart, fpart = sub(d, 1, #d - 17), sub(d, #d - 16)
    fpart = fpart:gsub("0+$", "")
    local out = (v.neg and "-" or "") .. ipart
    if fpart ~= "" then out = out .. "." .. fpart end
    if out == "-0" then out = "0" end
    return out
  end
end

-- Compare-and-swap on the value's cas id, so that concurrent INCRBYFLOATs
-- on other workers are not lost.  Keeps the expiry.
def("incrbyfloat", 3, "write denyoom fast", 1, 1, 1, "@write @string @fast", function()
  local kp, kl = arg(2)
  local incr
  for _ = 1, 1000 do
    local cur, cas
    if C.rl_dict_get_cas(DD, kp, kl, NOW, blob_out, cas_out, nil, nil) == 0 then
      local b = blob_out[0]
      cas = cas_out[0]
      cur = ffi_string(b.data, b.len)
      C.rl_blob_unref(b)
    end
    local v = LD.parse(cur or "0")
    if not v then return err(E_FLOAT) end
    incr = incr or LD.parse(arg_str(3))
    if not incr then return err(E_FLOAT) end
    local sum = LD.add(v, incr)
    if not sum then return err("ERR increment would produce NaN or Infinity") end
    local out = LD.format(sum)
    local ret
    if cas then
      ret = C.rl_dict_set_ex(DD, kp, kl, out, #out, 0, 4, 0, cas, NOW, nil)
    else
      ret = C.rl_dict_set(DD, kp, kl, out, #out, 0, 1, NOW, nil)
    end
    if ret == 0 then return bulk(out) end
    if ret ~= -17 and ret ~= -2 then return write_error(ret, E_KEY) end
    NOW = live_ms()
  end
  err("ERR too much contention on the key")
end)

def("append", 3, "write denyoom", 1, 1, 1, "@write @string @fast", function()
  local kp, kl = arg(2)
  local vp, vl = arg(3)
  local ret = C.rl_dict_append(DD, kp, kl, vp, vl, 0, 1, NOW, size_out)
  if ret == 0 then return int(tonumber(size_out[0])) end
  if ret == -7 and kl <= 65536 then return err(E_BIG) end
  write_error(ret, E_KEY)
end)

def("strlen", 2, "readonly fast", 1, 1, 1, "@read @string @fast", function()
  local kp, kl = arg(2)
  if C.rl_dict_get(DD, kp, kl, NOW, blob_out) ~= 0 then return int(0) end
  local b = blob_out[0]
  local n = b.len
  C.rl_blob_unref(b)
  int(n)
end)

local function getrange()
  local start, stop = arg_int(3), arg_int(4)
  if start == nil or stop == nil then return err(E_INT) end
  local kp, kl = arg(2)
  if C.rl_dict_get(DD, kp, kl, NOW, blob_out) ~= 0 then
    return B:put("$0\r\n\r\n")
  end
  local b = blob_out[0]
  local len = b.len
  if start < 0 and stop < 0 and start > stop then
    C.rl_blob_unref(b)
    return B:put("$0\r\n\r\n")
  end
  if start < 0 then start = len + start end
  if stop < 0 then stop = len + stop end
  if start < 0 then start = 0 end
  if stop < 0 then stop = 0 end
  if stop >= len then stop = len - 1 end
  if start > stop or len == 0 then
    C.rl_blob_unref(b)
    return B:put("$0\r\n\r\n")
  end
  start, stop = tonumber(start), tonumber(stop)
  local n = stop - start + 1
  B:putf("$%d\r\n", n)
  if n <= INLINE_VALUE_MAX then
    B:putcdata(b.data + start, n)
  else
    flush()
    CONN:send_value(b, start, n)
  end
  C.rl_blob_unref(b)
  B:put("\r\n")
end
def("getrange", 4, "readonly", 1, 1, 1, "@read @string @slow", getrange)
def("substr", 4, "readonly", 1, 1, 1, "@read @string @slow", getrange)

def("setrange", 4, "write denyoom", 1, 1, 1, "@write @string @slow", function()
  local off = arg_int(3)
  if off == nil then return err(E_INT) end
  if off < 0 then return err("ERR offset is out of range") end
  local kp, kl = arg(2)
  local vp, vl = arg(4)
  if vl == 0 then
    if C.rl_dict_get(DD, kp, kl, NOW, blob_out) ~= 0 then return int(0) end
    local b = blob_out[0]
    local n = b.len
    C.rl_blob_unref(b)
    return int(n)
  end
  if off + vl > PROTO_MAX_BULK then return err(E_BIG) end
  local ret = C.rl_dict_setrange(DD, kp, kl, off, vp, vl, NOW, size_out)
  if ret == 0 then return int(tonumber(size_out[0])) end
  write_error(ret, E_KEY)
end)

def("type", 2, "readonly fast", 1, 1, 1, "@keyspace @read @fast", function()
  local kp, kl = arg(2)
  if C.rl_dict_exists(DD, kp, kl, NOW) == 1 then
    B:put("+string\r\n")
  else
    B:put("+none\r\n")
  end
end)

def("dbsize", 1, "readonly fast", 0, 0, 0, "@keyspace @read @fast", function()
  int(tonumber(C.rl_dict_count(DD, NOW)))
end)

local function flush_generic(argc)
  if argc == 2 and (arg_is(2, "sync") or arg_is(2, "async")) or argc == 1 then
    C.rl_dict_flush(DD)
    return ok()
  end
  err(E_SYNTAX)
end
def("flushdb", -1, "write", 0, 0, 0, "@keyspace @write @slow @dangerous", flush_generic)
def("flushall", -1, "write", 0, 0, 0, "@keyspace @write @slow @dangerous", flush_generic)

---------------------------------------------------------------------------
-- KEYS and SCAN

-- Redis's stringmatchlen (case-sensitive), on Lua strings: * ? [abc] [^a]
-- [a-z] and \x.  Bytes past the end read as NUL, like the C strings Redis
-- walks; ranges compare signed chars.  skip[1]: once the rest of the
-- pattern failed after a '*', longer matches of an earlier '*' cannot help.
local function pb(p, i) return byte(p, i) or 0 end
local function signed(c) if c >= 128 then return c - 256 end return c end

local function smatch(p, pi, pl, s, si, sl, skip)
  while pl > 0 and sl > 0 do
    local c = pb(p, pi)
    if c == 42 then                                  -- '*'
      while pl > 0 and pb(p, pi + 1) == 42 do pi = pi + 1; pl = pl - 1 end
      if pl == 1 then return true end
      while sl > 0 do
        if smatch(p, pi + 1, pl - 1, s, si, sl, skip) then return true end
        if skip[1] then return false end
        si = si + 1; sl = sl - 1
      end
      skip[1] = true
      return false
    elseif c == 63 then                              -- '?'
      si = si + 1; sl = sl - 1
    elseif c == 91 then                              -- '['
      pi = pi + 1; pl = pl - 1
      local negate = pb(p, pi) == 94
      if negate then pi = pi + 1; pl = pl - 1 end
      local match = false
      local sc = pb(s, si)
      while true do
        local x = pb(p, pi)
        if x == 92 and pl >= 2 then
          pi = pi + 1; pl = pl - 1
          if pb(p, pi) == sc then match = true end
        elseif x == 93 then
          break
        elseif pl == 0 then
          pi = pi - 1; pl = pl + 1
          break
        elseif pl >= 3 and pb(p, pi + 1) == 45 then
          local lo, hi, ch = signed(x), signed(pb(p, pi + 2)), signed(sc)
          if lo > hi then lo, hi = hi, lo end
          pi = pi + 2; pl = pl - 2
          if ch >= lo and ch <= hi then match = true end
        elseif x == sc then
          match = true
        end
        pi = pi + 1; pl = pl - 1
      end
      if negate then match = not match end
      if not match then return false end
      si = si + 1; sl = sl - 1
    else
      if c == 92 and pl >= 2 then pi = pi + 1; pl = pl - 1 end  -- '\'
      if pb(p, pi) ~= pb(s, si) then return false end
      si = si + 1; sl = sl - 1
    end
    pi = pi + 1; pl = pl - 1
    if sl == 0 then
      while pb(p, pi) == 42 do pi = pi + 1; pl = pl - 1 end
      break
    end
  end
  return pl == 0 and sl == 0
end

local function glob(pattern, str)
  return smatch(pattern, 1, #pattern, str, 1, #str, { false })
end

def("keys", 2, "readonly", 0, 0, 0, "@keyspace @read @slow @dangerous", function()
  local pattern = arg_str(2)
  local all = pattern == "*"
  local seen, out, n = {}, {}, 0
  local cursor = 0
  repeat
    local keys
    cursor, keys = dict:scan(cursor, 1024)
    if not cursor then break end
    for i = 1, #keys do
      local k = keys[i]
      if not seen[k] and (all or glob(pattern, k)) then
        seen[k] = true
        n = n + 1
        out[n] = k
      end
    end
  until cursor == 0
  array(n)
  for i = 1, n do bulk(out[i]) end
end)

-- strtoul as Redis's parseScanCursorOrReply uses it: a uint64_t, or nil.
local function scan_cursor(str)
  local c = byte(str, 1)
  if c and (c == 32 or (c >= 9 and c <= 13)) then return nil end
  local p, neg = 1, false
  if c == 43 or c == 45 then neg = c == 45; p = 2 end
  local digits = sub(str, p)
  if digits == "" then
    if str == "" then return 0ULL end
    return nil
  end
  if digits:find("[^0-9]") then return nil end
  local v = 0ULL
  for i = 1, #digits do
    local d = byte(digits, i) - 48
    if v > (18446744073709551615ULL - d) / 10 then return nil end
    v = v * 10 + d
  end
  if neg then v = 0ULL - v end
  return v
end

def("scan", -2, "readonly", 0, 0, 0, "@keyspace @read @slow", function(argc)
  local cursor = scan_cursor(arg_str(2))
  if not cursor then return err("ERR invalid cursor") end
  local count, pattern, typename = 10, nil, nil
  local i = 3
  while i <= argc do
    local more = argc - i >= 1
    if arg_is(i, "count") and more then
      count = arg_int(i + 1)
      if count == nil then return err(E_INT) end
      if count < 1 then return err(E_SYNTAX) end
      i = i + 2
    elseif arg_is(i, "match") and more then
      pattern = arg_str(i + 1)
      if pattern == "*" then pattern = nil end
      i = i + 2
    elseif arg_is(i, "type") and more then
      typename = arg_str(i + 1)
      i = i + 2
    else
      return err(E_SYNTAX)
    end
  end
  if count > 1e9 then count = 1e9 end
  -- Like Redis: visit buckets until count keys are found, at most 10 times
  -- count steps.
  -- Buckets are many and mostly empty when the keys are few: visit at
  -- least 4096 (64 per call) before giving up on finding count keys.
  local found, n = {}, 0
  local steps = count * 10 > 4096 and count * 10 or 4096
  local per = count < 64 and 64 or (count < 1024 and count or 1024)
  repeat
    local keys
    cursor, keys = dict:scan(cursor, per)
    if not cursor then cursor = 0 break end
    for k = 1, #keys do
      n = n + 1
      found[n] = keys[k]
    end
    steps = steps - per
  until cursor == 0 or n >= count or steps <= 0
  local out, m = {}, 0
  local type_ok = typename == nil or lower(typename) == "string"
  for k = 1, n do
    local key = found[k]
    if type_ok and (not pattern or glob(pattern, key)) then
      m = m + 1
      out[m] = key
    end
  end
  array(2)
  bulk(format("%d", cursor))
  array(m)
  for k = 1, m do bulk(out[k]) end
end)

---------------------------------------------------------------------------
-- Connection and server commands

-- getIntFromObjectOrReply's errors.
local function int32_arg(i)
  local v = arg_int(i)
  if v == nil then err(E_INT) return nil end
  if v < -2147483648 or v > 2147483647 then
    err("ERR value is out of range, value must between -2147483648 and 2147483647")
    return nil
  end
  return v
end

def("select", 2, "loading stale fast", 0, 0, 0, "@keyspace @fast", function()
  local id = int32_arg(2)
  if id == nil then return end
  if id ~= 0 then return err("ERR DB index is out of range") end
  ok()
end)

local timespec = ffi.new("rl_timespec")   -- declared by ringline.timer
def("time", 1, "loading stale fast", 0, 0, 0, "@fast", function()
  C.clock_gettime(0, timespec)              -- CLOCK_REALTIME
  array(2)
  bulk(format("%d", tonumber(timespec.tv_sec)))
  bulk(format("%d", floor(tonumber(timespec.tv_nsec) / 1000)))
end)

def("quit", -1, "allow_busy loading stale fast", 0, 0, 0, "@fast @connection", function()
  ok()
  return CLOSE
end)

local function valid_name(str)
  return not str:find("[^!-~]")
end

local function auth_user(user)
  return user == "default"
end

def("auth", -2, "noscript loading stale fast no_auth allow_busy", 0, 0, 0,
    "@fast @connection", function(argc)
  if argc > 3 then return err(E_SYNTAX) end
  if argc == 2 then
    return err("ERR AUTH <password> called without any password configured " ..
               "for the default user. Are you sure your configuration is correct?")
  end
  if auth_user(arg_str(2)) then return ok() end
  err("WRONGPASS invalid username-password pair or user is disabled.")
end)

def("hello", -1, "noscript loading stale fast no_auth allow_busy", 0, 0, 0,
    "@fast @connection", function(argc)
  local j = 2
  if argc >= 2 then
    local ver = arg_int(2)
    if ver == nil then
      return err("ERR Protocol version is not an integer or out of range")
    end
    if ver ~= 2 then return err("NOPROTO unsupported protocol version") end
    j = 3
  end
  while j <= argc do
    local more = argc - j
    if arg_is(j, "auth") and more >= 2 then
      if not auth_user(arg_str(j + 1)) then
        return err("WRONGPASS invalid username-password pair or user is disabled.")
      end
      j = j + 3
    elseif arg_is(j, "setname") and more >= 1 then
      local name = arg_str(j + 1)
      if not valid_name(name) then
        return err("ERR Client names cannot contain spaces, newlines or special characters.")
      end
      ST.name = name ~= "" and name or nil
      j = j + 2
    else
      return err_user("ERR Syntax error in HELLO option '" ..
                      arg_str(j):match("^[^%z]*") .. "'")
    end
  end
  array(14)
  bulk("server"); bulk("redis")
  bulk("version"); bulk(VERSION)
  bulk("proto"); int(2)
  bulk("id"); int(CONN.id)
  bulk("mode"); bulk("standalone")
  bulk("role"); bulk("master")
  bulk("modules"); array(0)
end)

-- Container commands: CLIENT, CONFIG, COMMAND.  Each subcommand has its
-- arity; errors name them "client|setname".
local function container(name, arity, acl, subs)
  local upname = upper(name)
  def(name, arity, "", 0, 0, 0, acl, function(argc)
    local sub_name = arg_str(2)
    local s = sub_name and subs[lower(sub_name)]
    if argc >= 2 and not s then
      local shown = sub_name:match("^[^%z]*"):sub(1, 128)
      return err_user("ERR unknown subcommand '" .. shown .. "'. Try " ..
                      upname .. " HELP.")
    end
    if not s then return subs[""].fn(argc) end
    local ar = s.arity
    if (ar > 0 and ar ~= argc) or argc < -ar then
      return wrong_args(name .. "|" .. s.name)
    end
    return s.fn(argc)
  end)
end

local function client_line(c)
  local st = c.state
  local now_s = floor(NOW / 1000)
  return format("id=%d addr=%s laddr=? fd=-1 name=%s age=%d idle=%d flags=N " ..
    "db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 " ..
    "multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=%s " ..
    "user=default redir=-1 resp=2\n",
    c.id, c.peer, st.name or "", now_s - floor((st.since or NOW) / 1000),
    now_s - floor((st.seen or NOW) / 1000),
    st.last and st.last.name or "NULL")
end

local function help(lines)
  array(#lines)
  for i = 1, #lines do B:put("+", lines[i], "\r\n") end
end

container("client", -2, "@slow @connection", {
  id = { name = "id", arity = 2, fn = function() int(CONN.id) end },
  getname = { name = "getname", arity = 2, fn = function()
    if ST.name then bulk(ST.name) else null() end
  end },
  setname = { name = "setname", arity = 3, fn = function()
    local name = arg_str(3)
    if not valid_name(name) then
      return err("ERR Client names cannot contain spaces, newlines or special characters.")
    end
    ST.name = name ~= "" and name or nil
    ok()
  end },
  setinfo = { name = "setinfo", arity = 4, fn = function() ok() end },
  ["no-evict"] = { name = "no-evict", arity = 3, fn = function()
    if arg_is(3, "on") or arg_is(3, "off") then return ok() end
    err(E_SYNTAX)
  end },
  ["no-touch"] = { name = "no-touch", arity = 3, fn = function()
    if arg_is(3, "on") or arg_is(3, "off") then return ok() end
    err(E_SYNTAX)
  end },
  info = { name = "info", arity = 2, fn = function()
    bulk(client_line(CONN))
  end },
  list = { name = "list", arity = -2, fn = function()
    local out = {}
    for c in pairs(clients) do out[#out + 1] = client_line(c) end
    bulk(concat(out))
  end },
  help = { name = "help", arity = 2, fn = function()
    help({ "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
      "GETNAME", "    Return the name of the current connection.",
      "ID", "    Return the ID of the current connection.",
      "INFO", "    Return information about the current client connection.",
      "LIST", "    Return information about client connections (this worker's).",
      "SETNAME <name>", "    Assign the name <name> to the current connection.",
      "HELP", "    Print this help." })
  end },
})

local CONFIG = {
  save = function() return "" end,
  appendonly = function() return "no" end,
  databases = function() return "1" end,
  maxmemory = function() return format("%d", dict:stats().limit) end,
  ["maxmemory-policy"] = function() return "allkeys-lru" end,
  ["proto-max-bulk-len"] = function() return format("%d", PROTO_MAX_BULK) end,
  ["client-query-buffer-limit"] = function() return format("%d", QUERY_BUF_LIMIT) end,
  port = function() return LISTEN:match(":(%d+)$") or "0" end,
  maxclients = function() return "65536" end,
  timeout = function() return "0" end,
  appendfsync = function() return "everysec" end,
}
local CONFIG_NAMES = {}
for k in pairs(CONFIG) do CONFIG_NAMES[#CONFIG_NAMES + 1] = k end
table.sort(CONFIG_NAMES)

container("config", -2, "@slow", {
  get = { name = "get", arity = -3, fn = function(argc)
    local seen, out = {}, {}
    for i = 3, argc do
      local pat = lower(arg_str(i))
      for _, k in ipairs(CONFIG_NAMES) do
        if not seen[k] and glob(pat, k) then
          seen[k] = true
          out[#out + 1] = k
        end
      end
    end
    array(#out * 2)
    for _, k in ipairs(out) do bulk(k); bulk(CONFIG[k]()) end
  end },
  set = { name = "set", arity = -4, fn = function()
    err_user("ERR Unknown option or number of arguments for CONFIG SET - '" ..
             arg_str(3):match("^[^%z]*") .. "'")
  end },
  resetstat = { name = "resetstat", arity = 2, fn = function() ok() end },
  rewrite = { name = "rewrite", arity = 2, fn = function()
    err("ERR The server is running without a config file")
  end },
  help = { name = "help", arity = 2, fn = function()
    help({ "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
      "GET <pattern>", "    Return parameters matching the glob-like <pattern> and their values.",
      "HELP", "    Print this help." })
  end },
})

local function command_info(e)
  array(10)
  bulk(e.name)
  int(e.arity)
  local flags = {}
  for f in e.flags:gmatch("%S+") do flags[#flags + 1] = f end
  array(#flags)
  for _, f in ipairs(flags) do B:put("+", f, "\r\n") end
  int(e.first); int(e.last); int(e.step)
  local acl = {}
  for f in e.acl:gmatch("%S+") do acl[#acl + 1] = f end
  array(#acl)
  for _, f in ipairs(acl) do B:put("+", f, "\r\n") end
  array(0); array(0); array(0)
end

local function all_commands()
  array(#ORDER)
  for _, e in ipairs(ORDER) do command_info(e) end
end

container("command", -1, "@slow @connection", {
  [""] = { name = "", arity = -1, fn = all_commands },
  count = { name = "count", arity = 2, fn = function() int(#ORDER) end },
  list = { name = "list", arity = -2, fn = function()
    array(#ORDER)
    for _, e in ipairs(ORDER) do bulk(e.name) end
  end },
  info = { name = "info", arity = -2, fn = function(argc)
    if argc == 2 then return all_commands() end
    array(argc - 2)
    for i = 3, argc do
      local e = COMMANDS[lower(arg_str(i))]
      if e then command_info(e) else B:put("*-1\r\n") end
    end
  end },
  docs = { name = "docs", arity = -2, fn = function() array(0) end },
  help = { name = "help", arity = 2, fn = function()
    help({ "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
      "(no subcommand)", "    Return details about all Redis commands.",
      "COUNT", "    Return the total number of commands in this Redis server.",
      "LIST", "    Return a list of all commands in this Redis server.",
      "INFO [<command-name> ...]", "    Return details about multiple Redis commands.",
      "DOCS [<command-name> ...]", "    Return documentation details (none here).",
      "HELP", "    Print this help." })
  end },
})

-- INFO sections.
local function rss_bytes()
  local f = io.open("/proc/self/statm", "r")
  if not f then return 0 end
  local line = f:read("*l") or ""
  f:close()
  local pages = tonumber(line:match("^%d+%s+(%d+)")) or 0
  return pages * 4096
end

local function human(n)
  local units = { "B", "K", "M", "G", "T" }
  local i = 1
  while n >= 1024 and i < #units do n = n / 1024; i = i + 1 end
  if i == 1 then return format("%dB", n) end
  return format("%.2f%s", n, units[i])
end

local RUN_ID = format("%08x%08x%08x%08x%08x", math.random(0, 2^31),
  math.random(0, 2^31), math.random(0, 2^31), math.random(0, 2^31),
  math.random(0, 2^31)):sub(1, 40)

local INFO_SECTIONS = { "server", "clients", "memory", "persistence", "stats",
                        "replication", "keyspace" }
local INFO = {
  server = function(out)
    local up = floor((NOW - start_ms) / 1000)
    out[#out + 1] = "# Server"
    out[#out + 1] = "redis_version:" .. VERSION
    out[#out + 1] = "redis_git_sha1:00000000"
    out[#out + 1] = "redis_git_dirty:0"
    out[#out + 1] = "redis_mode:standalone"
    out[#out + 1] = "server_name:ringline"
    out[#out + 1] = "ringline_version:" .. ringline.version
    out[#out + 1] = "ringline_worker:" .. ringline.worker_id()
    out[#out + 1] = "ringline_workers:" .. ringline.workers()
    out[#out + 1] = "os:Linux"
    out[#out + 1] = "arch_bits:64"
    out[#out + 1] = "multiplexing_api:io_uring"
    out[#out + 1] = "process_id:" .. C.getpid()
    out[#out + 1] = "run_id:" .. RUN_ID
    out[#out + 1] = "tcp_port:" .. (LISTEN:match(":(%d+)$") or "0")
    out[#out + 1] = "uptime_in_seconds:" .. up
    out[#out + 1] = "uptime_in_days:" .. floor(up / 86400)
  end,
  clients = function(out)
    out[#out + 1] = "# Clients"
    out[#out + 1] = "connected_clients:" .. stats.clients
    out[#out + 1] = "maxclients:65536"
    out[#out + 1] = "blocked_clients:0"
  end,
  memory = function(out)
    local s = dict:stats()
    local rss = rss_bytes()
    out[#out + 1] = "# Memory"
    out[#out + 1] = "used_memory:" .. s.bytes
    out[#out + 1] = "used_memory_human:" .. human(s.bytes)
    out[#out + 1] = "used_memory_rss:" .. rss
    out[#out + 1] = "used_memory_rss_human:" .. human(rss)
    out[#out + 1] = "maxmemory:" .. s.limit
    out[#out + 1] = "maxmemory_human:" .. human(s.limit)
    out[#out + 1] = "maxmemory_policy:allkeys-lru"
    out[#out + 1] = "mem_allocator:libc"
  end,
  persistence = function(out)
    out[#out + 1] = "# Persistence"
    out[#out + 1] = "loading:0"
    out[#out + 1] = "rdb_changes_since_last_save:0"
    out[#out + 1] = "rdb_bgsave_in_progress:0"
    out[#out + 1] = "aof_enabled:0"
  end,
  stats = function(out)
    local s = dict:stats()
    local w = ringline.stats()
    out[#out + 1] = "# Stats"
    out[#out + 1] = "total_connections_received:" .. stats.connections
    out[#out + 1] = "total_commands_processed:" .. stats.commands
    out[#out + 1] = "total_net_input_bytes:" .. (w.bytes_in or 0)
    out[#out + 1] = "total_net_output_bytes:" .. (w.bytes_out or 0)
    out[#out + 1] = "rejected_connections:" .. (w.rejected or 0)
    out[#out + 1] = "expired_keys:" .. s.expired
    out[#out + 1] = "evicted_keys:" .. s.evictions
    out[#out + 1] = "keyspace_hits:" .. s.hits
    out[#out + 1] = "keyspace_misses:" .. s.misses
  end,
  replication = function(out)
    out[#out + 1] = "# Replication"
    out[#out + 1] = "role:master"
    out[#out + 1] = "connected_slaves:0"
  end,
  keyspace = function(out)
    out[#out + 1] = "# Keyspace"
    local n = tonumber(C.rl_dict_count(DD, NOW))
    if n > 0 then
      out[#out + 1] = format("db0:keys=%d,expires=0,avg_ttl=0", n)
    end
  end,
}

def("info", -1, "loading stale", 0, 0, 0, "@slow @dangerous", function(argc)
  local want = {}
  local any = false
  if argc == 1 then
    any = true
  else
    for i = 2, argc do
      local s = lower(arg_str(i))
      if s == "all" or s == "everything" or s == "default" then any = true
      else want[s] = true end
    end
  end
  local parts = {}
  for _, name in ipairs(INFO_SECTIONS) do
    if any or want[name] then
      local out = {}
      INFO[name](out)
      parts[#parts + 1] = concat(out, "\r\n") .. "\r\n"
    end
  end
  bulk(concat(parts, "\r\n"))
end)

---------------------------------------------------------------------------
-- Dispatch

-- The unknown command error: name and arguments quoted, each shown up to
-- a NUL and together cut at about 128 bytes, as Redis formats them.
local function unknown_command(argc)
  local name = arg_str(1):match("^[^%z]*"):sub(1, 128)
  local args = {}
  local len = 0
  for i = 2, argc do
    if len >= 128 then break end
    local a = arg_str(i):match("^[^%z]*"):sub(1, 128 - len)
    local piece = "'" .. a .. "' "
    args[#args + 1] = piece
    len = len + #piece
  end
  err_user("ERR unknown command '" .. name .. "', with args beginning with: " ..
           concat(args))
end

local function execute(argc)
  local cmd = CMD
  local h
  local n = cmd.len[1]
  if n <= 16 then
    local name
    if cmd.nesc > 0 and cmd.esc[1] > 0 then
      name = cmd:arg_str(S, 1)
    else
      name = ffi_string(S.base + cmd.off[1], n)
    end
    h = COMMANDS[name]
    if not h then h = COMMANDS[lower(name)] end
  end
  if not h then return unknown_command(argc) end
  stats.commands = stats.commands + 1
  ST.last = h
  local ar = h.arity
  if (ar > 0 and ar ~= argc) or argc < -ar then return wrong_args(h.name) end
  return h.fn(argc)
end

local function on_data(conn, data)
  local st = conn.state
  local cmd = st.cmd
  local size = #data
  local off = 0
  S, CMD, CONN, ST = data, cmd, conn, st
  NOW = now()
  -- A command that raised left its partial reply here: not for this one.
  B:reset()
  sent = false      -- the last call's final flush was another story
  local k = 0
  while off < size do
    local n = parse_command(data, off, cmd, LIMITS)
    if n < 0 then
      if n == -1 then
        B:put("-ERR ", cmd.err, "\r\n")
        flush()
        conn:close()
        return size
      end
      break
    end
    off = off + n
    local argc = cmd.argc
    if argc > 0 then
      if execute(argc) == CLOSE then
        flush()
        conn:close()
        return size
      end
      if #B >= FLUSH_AT then flush() end
      if sent then
        -- Over high water: the rest of the pipeline waits, held, for
        -- the queue to drain (output bounded where it is made).
        sent = false
        if not conn:writable() then break end
      end
      k = k + 1
      if k >= 64 then         -- a long pipeline: read the clock again
        k = 0
        NOW = live_ms()
      end
    end
  end
  flush()
  st.seen = NOW
  if big then B:free(); big = false end
  S, CMD, CONN, ST = nil, nil, nil, nil
  return off
end

---------------------------------------------------------------------------

-- Background expiry: each worker checks a little of the keys with a TTL
-- every 100 ms, more while it keeps finding expired ones (at most ~2 ms).
local function sweep()
  local t0 = live_ms()
  for _ = 1, 20 do
    local deleted = C.rl_dict_sweep(DD, 200, live_ms())
    if deleted < 50 or live_ms() - t0 >= 2 then break end
  end
end

return {
  listen = LISTEN,
  max_unconsumed = QUERY_BUF_LIMIT,

  init = function()
    dict = dictmod.shared()
    DD = dict.d
    ringline.every(100, sweep)
  end,

  on_open = function(conn)
    local st = conn.state
    st.cmd = R.new_command(16)
    st.since = tonumber(C.rl_unix_ms())
    clients[conn] = true
    stats.clients = stats.clients + 1
    stats.connections = stats.connections + 1
  end,

  on_data = on_data,

  on_close = function(conn)
    if clients[conn] then
      clients[conn] = nil
      stats.clients = stats.clients - 1
    end
  end,

  -- Hot reload: keep counting the connections and commands of the version
  -- before (shared, not copied: a rejected reload leaves them to it).
  reload = function(old)
    local o = old and old._state
    if o then clients, stats = o.clients, o.stats end
  end,
  _state = setmetatable({}, { __index = function(_, k)
    if k == "clients" then return clients end
    if k == "stats" then return stats end
  end }),

  -- Internals, for tests.
  _ld = LD,
  _glob = glob,
}
