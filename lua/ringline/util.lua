-- ringline.util: helpers the protocol parsers share (arrays, hex, byte tests).
local ffi = require "ffi"
local bit = require "bit"

local bor = bit.bor
local byte = string.byte

local M = {}

-- table.new preallocates, so that filling a table does not rehash it; a
-- Lua without it gets a plain table.
local table_new
do
  local ok, f = pcall(require, "table.new")
  table_new = ok and f or function() return {} end
end

-- A table with n zeros at 1..n: the offset and length arrays a parser
-- object fills on every request, made once so that parsing allocates
-- nothing.
function M.zeros(n)
  local t = table_new(n, 0)
  for k = 1, n do t[k] = 0 end
  return t
end

-- hex_value[c]: the value of the hex digit c (0-9, A-F, a-f), else -1.
local hex_value = ffi.new("int8_t[256]")
for c = 0, 255 do
  local h = -1
  if c >= 48 and c <= 57 then h = c - 48
  elseif c >= 65 and c <= 70 then h = c - 55
  elseif c >= 97 and c <= 102 then h = c - 87 end
  hex_value[c] = h
end
M.hex_value = hex_value

-- isspace() in the C locale (SP, HT, LF, VT, FF, CR): memcached and Redis
-- read numbers and split words with it.
function M.is_space(c)
  return c == 32 or (c >= 9 and c <= 13)
end

-- Whether the n bytes at b.base[o] equal the Lua string str (n bytes long)
-- ignoring ASCII case; b is anything with a byte pointer in .base.  Two
-- bytes that differ are equal only as the same letter in the other case:
-- x|0x20 is a lowercase letter only if x is that letter in either case.
function M.eq_nocase(b, o, str, n)
  for k = 0, n - 1 do
    local x, y = b.base[o + k], byte(str, k + 1)
    if x ~= y then
      local lx = bor(x, 0x20)
      if lx ~= bor(y, 0x20) or lx < 97 or lx > 122 then return false end
    end
  end
  return true
end

return M
