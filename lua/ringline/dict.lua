-- ringline.dict: the process-wide shared dictionary, from Lua, without copies.
--
-- Keys and values may be Lua strings or slices.  Reads that want the bytes
-- in Lua copy them (get); reads meant for a reply take a reference to the
-- stored value (get_blob) which conn:send_value sends without a copy.
-- Times are unix epoch milliseconds; 0 means no expiry.
local ffi = require "ffi"
require "ringline.cdef"
local slice = require "ringline.slice"

local C = ffi.C
local ffi_string, ffi_istype = ffi.string, ffi.istype
local type = type
local Slice = slice.type

local M = {}
local D = {}
D.__index = D

-- Out-parameters, reused: no allocation per call.
local blob_out = ffi.new("rl_blob *[1]")
local i64_out = ffi.new("int64_t[1]")
local u64_out = ffi.new("uint64_t[1]")
local u32_out = ffi.new("uint32_t[1]")
local size_out = ffi.new("size_t[1]")
local cursor_io = ffi.new("uint64_t[1]")

M.NX, M.XX, M.KEEPTTL = C.RL_DICT_NX, C.RL_DICT_XX, C.RL_DICT_KEEPTTL
local ENOENT, EEXIST, E2BIG, ENOMEM, EINVAL, ERANGE = -2, -17, -7, -12, -22, -34
M.errors = { [ENOENT] = "absent", [EEXIST] = "exists", [E2BIG] = "too big",
  [ENOMEM] = "out of memory", [EINVAL] = "not an integer",
  [ERANGE] = "overflow" }

-- (pointer, length) of a string or a slice.
local function bytes(x)
  if type(x) == "string" then return x, #x end
  if ffi_istype(Slice, x) then
    if x.epoch ~= slice.epoch() then
      error("slice used after its handler returned", 3)
    end
    return x.base, x.size
  end
  error("dict: key or value must be a string or a slice", 3)
end

-- Expiry is judged by the worker's batch time (ringline.unix_ms).
local now = require("ringline.timer").unix_ms
M.now_ms = now

-- The dictionary all workers share; only inside the ringline binary.
local shared
function M.shared()
  if not shared then
    local W = require("ringline.conn")._worker()
    if not W then error("dict: no worker (call from init or a handler)", 2) end
    shared = setmetatable({ d = C.rl_shared_dict(W) }, D)
  end
  return shared
end

-- A private dictionary (tests, per-worker caches).
function M.new(mem_limit, stripes)
  local d = C.rl_dict_new(mem_limit, stripes or 16)
  if d == nil then error("dict: out of memory", 2) end
  return setmetatable({ d = ffi.gc(d, C.rl_dict_free) }, D)
end

-- The value as a Lua string, or nil.
function D:get(key)
  local k, kl = bytes(key)
  if C.rl_dict_get(self.d, k, kl, now(), blob_out) ~= 0 then return nil end
  local b = blob_out[0]
  local s = ffi_string(b.data, b.len)
  C.rl_blob_unref(b)
  return s
end

-- A reference to the stored value (rl_blob *), or nil.  End it with
-- dict.release(b) once queued with conn:send_value (the send keeps its own).
function D:get_blob(key)
  local k, kl = bytes(key)
  if C.rl_dict_get(self.d, k, kl, now(), blob_out) ~= 0 then return nil end
  return blob_out[0]
end

-- As get_blob, with the memcached extras: blob, cas, flags, expire_at.
function D:get_cas(key)
  local k, kl = bytes(key)
  if C.rl_dict_get_cas(self.d, k, kl, now(), blob_out, u64_out, u32_out,
                       i64_out) ~= 0 then
    return nil
  end
  return blob_out[0], u64_out[0], u32_out[0], i64_out[0]
end

function M.release(b) C.rl_blob_unref(b) end

-- Store; flags from dict.NX/XX/KEEPTTL.  Returns true, or false and the
-- reason ("exists", "absent", "too big", "out of memory").  With want_old,
-- the second result is the previous value's blob (or nil), to release.
function D:set(key, value, expire_at, flags, want_old)
  local k, kl = bytes(key)
  local v, vl = bytes(value)
  local ret = C.rl_dict_set(self.d, k, kl, v, vl, expire_at or 0, flags or 0,
                            now(), want_old and blob_out or nil)
  local old = want_old and blob_out[0] ~= nil and blob_out[0] or nil
  if ret ~= 0 then return false, M.errors[ret] or ret, old end
  return true, old
end

-- memcached set/add/replace/cas: flags32 and a cas to match (0 = any).
function D:set_ex(key, value, expire_at, flags, flags32, cas)
  local k, kl = bytes(key)
  local v, vl = bytes(value)
  local ret = C.rl_dict_set_ex(self.d, k, kl, v, vl, expire_at or 0,
                               flags or 0, flags32 or 0, cas or 0, now(), nil)
  if ret ~= 0 then return false, M.errors[ret] or ret end
  return true
end

function D:del(key)
  local k, kl = bytes(key)
  return C.rl_dict_del(self.d, k, kl, now()) == 1
end

function D:exists(key)
  local k, kl = bytes(key)
  return C.rl_dict_exists(self.d, k, kl, now()) == 1
end

-- ms left, -1 without expiry, -2 absent.
function D:ttl_ms(key)
  local k, kl = bytes(key)
  return tonumber(C.rl_dict_ttl_ms(self.d, k, kl, now()))
end

function D:expire_at(key, at_ms)
  local k, kl = bytes(key)
  return C.rl_dict_expire_at(self.d, k, kl, at_ms, now()) == 1
end

function D:persist(key)
  local k, kl = bytes(key)
  return C.rl_dict_persist(self.d, k, kl, now()) == 1
end

function D:touch(key, expire_at)
  local k, kl = bytes(key)
  return C.rl_dict_touch(self.d, k, kl, expire_at, now()) == 1
end

-- Redis INCRBY: the new value (int64_t cdata), or nil and the reason.
function D:incr(key, delta)
  local k, kl = bytes(key)
  local ret = C.rl_dict_incr(self.d, k, kl, delta, now(), i64_out)
  if ret ~= 0 then return nil, M.errors[ret] or ret end
  return i64_out[0]
end

-- memcached incr/decr (unsigned, wraps / floors at 0).
function D:incr_u64(key, delta, decr)
  local k, kl = bytes(key)
  local ret = C.rl_dict_incr_u64(self.d, k, kl, delta, decr and 1 or 0, now(),
                                 u64_out)
  if ret ~= 0 then return nil, M.errors[ret] or ret end
  return u64_out[0]
end

-- APPEND (create = true) / memcached append/prepend: the new length.
function D:append(key, value, prepend, create)
  local k, kl = bytes(key)
  local v, vl = bytes(value)
  local ret = C.rl_dict_append(self.d, k, kl, v, vl, prepend and 1 or 0,
                               create and 1 or 0, now(), size_out)
  if ret ~= 0 then return nil, M.errors[ret] or ret end
  return tonumber(size_out[0])
end

function D:setrange(key, off, value)
  local k, kl = bytes(key)
  local v, vl = bytes(value)
  local ret = C.rl_dict_setrange(self.d, k, kl, off, v, vl, now(), size_out)
  if ret ~= 0 then return nil, M.errors[ret] or ret end
  return tonumber(size_out[0])
end

function D:count() return tonumber(C.rl_dict_count(self.d, now())) end
function D:flush() C.rl_dict_flush(self.d) end
function D:sweep(budget) return C.rl_dict_sweep(self.d, budget or 64, now()) end

-- One SCAN step: next cursor (a number) and a list of keys (strings).
local scan_buf_size = 65536
local scan_buf = ffi.new("uint8_t[?]", scan_buf_size)
function D:scan(cursor, count)
  cursor_io[0] = cursor
  local keys = {}
  local ret = C.rl_dict_scan_buf(self.d, cursor_io, count or 10, now(),
                                 scan_buf, scan_buf_size, size_out)
  if ret == -28 then
    -- One bucket's keys did not fit (-ENOSPC): grow to what it needs.
    scan_buf_size = tonumber(size_out[0])
    scan_buf = ffi.new("uint8_t[?]", scan_buf_size)
    ret = C.rl_dict_scan_buf(self.d, cursor_io, count or 10, now(),
                             scan_buf, scan_buf_size, size_out)
  end
  if ret < 0 then return nil, M.errors[ret] or ret end
  -- Records are 4-byte little-endian length then the key.
  local p, used, off = scan_buf, tonumber(size_out[0]), 0
  while off + 4 <= used do
    local n = p[off] + p[off + 1] * 256 + p[off + 2] * 65536 + p[off + 3] * 16777216
    keys[#keys + 1] = ffi_string(p + off + 4, n)
    off = off + 4 + n
  end
  return tonumber(cursor_io[0]), keys
end

function D:stats()
  local s = ffi.new("rl_dict_stats")
  C.rl_dict_stats_get(self.d, s)
  return { keys = tonumber(s.keys), bytes = tonumber(s.bytes),
    limit = tonumber(s.limit), hits = tonumber(s.hits),
    misses = tonumber(s.misses), evictions = tonumber(s.evictions),
    expired = tonumber(s.expired), sets = tonumber(s.sets) }
end

return M
