-- ringline.slice: zero-copy views of received bytes, valid for one handler call.
--
-- A slice is an FFI struct (base, size, ring buffer id, epoch).  The
-- epoch is the handler call it was made in; the loop moves the epoch on when
-- the call returns, after which the bytes may go back to the ring, so every
-- method checks it first and raises instead of reading recycled memory.
-- Indexes are 1-based and inclusive, as for Lua strings.  Only tostring()
-- copies.
local ffi = require "ffi"
require "ringline.cdef"
local util = require "ringline.util"

-- libc, declared once per state even if another module declared it first.
pcall(ffi.cdef, [[
void *memchr(const void *s, int c, size_t n);
void *memmem(const void *haystack, size_t haystacklen,
             const void *needle, size_t needlelen);
int memcmp(const void *s1, const void *s2, size_t n);
]])

local C = ffi.C
local ffi_string, ffi_cast, ffi_istype = ffi.string, ffi.cast, ffi.istype
local error, type, tonumber = error, type, tonumber
local eq_nocase = util.eq_nocase
local u8p = ffi.typeof("const uint8_t *")
local uint64 = ffi.typeof("uint64_t")

local M = {}
local methods = {}
local Slice

local epoch = 1

local USED_AFTER = "slice used after its handler returned"

local function check(s)
  if s.epoch ~= epoch then error(USED_AFTER, 3) end
end

-- Normalise a Lua-style start index (negative counts from the end).
local function start_index(init, len)
  if init == nil then return 1 end
  if init < 0 then
    init = len + init + 1
    if init < 1 then init = 1 end
  elseif init == 0 then
    init = 1
  end
  return init
end

local function bounds(s, i, n)
  if type(i) ~= "number" or i < 1 or i + n - 1 > s.size then
    error(("slice read of %d bytes at %s out of bounds (length %d)")
      :format(n, tostring(i), s.size), 3)
  end
  return s.base + (i - 1)
end

function methods.len(s)
  check(s)
  return s.size
end

function methods.valid(s)
  return s.epoch == epoch
end

-- The byte at i (negative counts from the end), or nil outside the slice.
function methods.byte(s, i)
  check(s)
  local len = s.size
  i = i or 1
  if i < 0 then i = len + i + 1 end
  if i < 1 or i > len then return nil end
  return s.base[i - 1]
end

-- The bytes from i to j as a slice over the same memory (string.sub rules).
function methods.sub(s, i, j)
  check(s)
  local len = s.size
  i = start_index(i, len)
  j = j or -1
  if j < 0 then j = len + j + 1 elseif j > len then j = len end
  if i > j then return Slice(s.base, 0, s.bid, epoch) end
  return Slice(s.base + (i - 1), j - i + 1, s.bid, epoch)
end

-- Plain find of a string: first and last index of the match, or nil.
function methods.find(s, needle, init)
  check(s)
  local len = s.size
  init = start_index(init, len)
  local nl = #needle
  if nl == 0 then
    if init > len + 1 then return nil end
    return init, init - 1
  end
  if init + nl - 1 > len then return nil end
  local base = s.base + (init - 1)
  local p
  if nl == 1 then
    p = C.memchr(base, needle:byte(1), len - init + 1)
  else
    p = C.memmem(base, len - init + 1, needle, nl)
  end
  if p == nil then return nil end
  local at = tonumber(ffi_cast(u8p, p) - s.base) + 1
  return at, at + nl - 1
end

-- Index of the first byte equal to b (a number) from init, or nil.
function methods.find_byte(s, b, init)
  check(s)
  local len = s.size
  init = start_index(init, len)
  if init > len then return nil end
  if type(b) ~= "number" or b < 0 or b > 255 or b % 1 ~= 0 then
    error("find_byte expects a byte value 0..255, got " .. tostring(b), 2)
  end
  local p = C.memchr(s.base + (init - 1), b, len - init + 1)
  if p == nil then return nil end
  return tonumber(ffi_cast(u8p, p) - s.base) + 1
end

-- Same bytes as the Lua string str?
function methods.eq(s, str)
  check(s)
  local n = #str
  return s.size == n and C.memcmp(s.base, str, n) == 0
end

function methods.starts_with(s, str)
  check(s)
  local n = #str
  return s.size >= n and C.memcmp(s.base, str, n) == 0
end

function methods.ends_with(s, str)
  check(s)
  local n = #str
  return s.size >= n and C.memcmp(s.base + (s.size - n), str, n) == 0
end

-- ASCII case-insensitive equality with a Lua string (header names).
function methods.eq_nocase(s, str)
  check(s)
  local n = #str
  return s.size == n and eq_nocase(s, 0, str, n)
end

local MAX_EXACT = 9007199254740991 -- 2^53 - 1: larger is not exact in a double

-- A decimal integer filling bytes i..j (default: the whole slice), with an
-- optional sign.  Returns the number, or nil and the reason.
function methods.to_int(s, i, j)
  check(s)
  local len = s.size
  i = i or 1
  j = j or len
  if i < 1 or j > len or i > j then return nil, "empty or out of bounds" end
  local p = s.base
  local k, neg = i - 1, false
  local c = p[k]
  if c == 45 or c == 43 then -- '-' '+'
    neg = c == 45
    k = k + 1
    if k > j - 1 then return nil, "not an integer" end
  end
  local v = 0
  for q = k, j - 1 do
    local d = p[q] - 48
    if d < 0 or d > 9 then return nil, "not an integer" end
    v = v * 10 + d
    if v > MAX_EXACT then return nil, "integer out of range" end
  end
  if neg then v = -v end
  return v
end

function methods.u8(s, i)
  check(s)
  return bounds(s, i, 1)[0]
end

function methods.u16be(s, i)
  check(s)
  local p = bounds(s, i, 2)
  return p[0] * 256 + p[1]
end

function methods.u16le(s, i)
  check(s)
  local p = bounds(s, i, 2)
  return p[1] * 256 + p[0]
end

-- The four bytes at p[k] as an unsigned number, big- or little-endian.
local function be32(p, k)
  return ((p[k] * 256 + p[k + 1]) * 256 + p[k + 2]) * 256 + p[k + 3]
end

local function le32(p, k)
  return ((p[k + 3] * 256 + p[k + 2]) * 256 + p[k + 1]) * 256 + p[k]
end

function methods.u32be(s, i)
  check(s)
  return be32(bounds(s, i, 4), 0)
end

function methods.u32le(s, i)
  check(s)
  return le32(bounds(s, i, 4), 0)
end

-- 64-bit reads return uint64_t cdata: a double cannot hold them exactly.
function methods.u64be(s, i)
  check(s)
  local p = bounds(s, i, 8)
  return uint64(be32(p, 0)) * 4294967296ULL + be32(p, 4)
end

function methods.u64le(s, i)
  check(s)
  local p = bounds(s, i, 8)
  return uint64(le32(p, 4)) * 4294967296ULL + le32(p, 0)
end

-- A Lua string copy of bytes i..j (default: all).
function methods.tostring(s, i, j)
  check(s)
  if i == nil and j == nil then return ffi_string(s.base, s.size) end
  local len = s.size
  i = start_index(i, len)
  j = j or -1
  if j < 0 then j = len + j + 1 elseif j > len then j = len end
  if i > j then return "" end
  return ffi_string(s.base + (i - 1), j - i + 1)
end

-- The raw pointer, for FFI code that knows the lifetime rules.
function methods.ptr(s)
  check(s)
  return s.base
end

Slice = ffi.metatype("rl_slice", {
  __index = methods,
  __len = function(s) check(s) return s.size end,
  __tostring = function(s) check(s) return ffi_string(s.base, s.size) end,
})

M.methods = methods
M.type = Slice

-- A slice over len bytes at ptr, valid until the current handler returns.
-- bid is the ring buffer the bytes live in (-1 if none).
function M.new(ptr, len, bid)
  return Slice(ptr, len, bid or -1, epoch)
end

-- End the current handler call: every slice made so far becomes invalid.
function M.release()
  epoch = epoch + 1
  if epoch >= 4294967295 then epoch = 1 end
end

function M.epoch()
  return epoch
end

-- For functions that take a slice or any cdata with base and size (the
-- parsers): raise if x is a slice whose handler call has returned.  The
-- error names the caller of the function that checks.
function M.check_live(x)
  if ffi_istype(Slice, x) and x.epoch ~= epoch then error(USED_AFTER, 3) end
end

function M.is_slice(x)
  return ffi_istype(Slice, x)
end

-- For self tests: a function that copies a Lua string into one buffer of
-- size bytes and returns a slice over the copy.  Each copy reuses the
-- buffer, so a slice is good until the next.
function M.scratch(size)
  local buf = ffi.new("uint8_t[?]", size)
  return function(str)
    assert(#str <= size, "scratch: string longer than the buffer")
    ffi.copy(buf, str, #str)
    return Slice(buf, #str, -1, epoch)
  end
end

function M.selftest()
  local mk = M.scratch(16)
  local s = mk("hello\r\n12345")
  assert(#s == 12 and s:byte(1) == 104 and s:byte(-1) == 53)
  assert(s:find("\r\n") == 6 and s:sub(8):to_int() == 12345)
  assert(s:sub(1, 5):eq("hello") and tostring(s:sub(-5)) == "12345")
  M.release()
  assert(not pcall(s.size, s))
  return true
end

return M
