-- Tests for lua/ringline/util.lua: each helper against a plain reference.
local ffi = require "ffi"
local util = require "ringline.util"
local t = require "testutil"

local eq = t.eq

local T = {}

T.zeros = function()
  for _, n in ipairs({ 0, 1, 3, 64 }) do
    local z = util.zeros(n)
    eq(#z, n, "length of zeros(" .. n .. ")")
    for k = 1, n do eq(z[k], 0, "zeros(" .. n .. ")[" .. k .. "]") end
    eq(z[n + 1], nil, "nothing past n")
  end
  -- a new table each time: parser objects must not share their arrays
  local a, b = util.zeros(2), util.zeros(2)
  a[1] = 5
  eq(b[1], 0, "separate tables")
end

T.hex_value_every_byte = function()
  local digits = "0123456789abcdef"
  for c = 0, 255 do
    local ch = string.char(c):lower()
    local at = digits:find(ch, 1, true)
    local want = at and at - 1 or -1
    eq(util.hex_value[c], want, ("hex_value[%d]"):format(c))
  end
end

T.is_space_every_byte = function()
  -- isspace() in the C locale: SP and \t \n \v \f \r
  local spaces = { [32] = true, [9] = true, [10] = true, [11] = true,
    [12] = true, [13] = true }
  for c = 0, 255 do
    eq(util.is_space(c), spaces[c] == true, ("is_space(%d)"):format(c))
  end
end

-- Equal ignoring case the plain way: fold A-Z to a-z, then compare.
local function fold(c)
  if c >= 65 and c <= 90 then return c + 32 end
  return c
end

T.eq_nocase_every_byte_pair = function()
  -- Bytes that differ only in bit 0x20 but are not letters ('@' '`',
  -- '[' '{', 0xc1 0xe1) must stay different; letters must match.
  local b = { base = ffi.new("uint8_t[1]") }
  for x = 0, 255 do
    b.base[0] = x
    for y = 0, 255 do
      local want = fold(x) == fold(y)
      if util.eq_nocase(b, 0, string.char(y), 1) ~= want then
        error(("eq_nocase(%d, %d): expected %s"):format(x, y, tostring(want)))
      end
    end
  end
end

T.eq_nocase_offsets_and_lengths = function()
  local s = t.slice_of("xxContent-LENGTHyy")
  eq(util.eq_nocase(s, 2, "content-length", 14), true, "at an offset")
  eq(util.eq_nocase(s, 2, "content-lengtH", 14), true, "mixed case")
  eq(util.eq_nocase(s, 2, "content_length", 14), false, "'-' vs '_'")
  eq(util.eq_nocase(s, 0, "XXCONT", 6), true, "from the start")
  eq(util.eq_nocase(s, 5, "", 0), true, "zero bytes")
  -- only the first n bytes of each side are compared
  eq(util.eq_nocase(s, 2, "conTENT-x", 7), true, "prefix of n bytes")
end

return T
