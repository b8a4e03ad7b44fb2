-- Tests for lua/ringline/slice.lua: every method, against exact values and
-- against the Lua string functions on the same bytes.
local ffi = require "ffi"
local slice = require "ringline.slice"
local t = require "testutil"

local eq, same, pack, raises = t.eq, t.same, t.pack, t.raises
local mk = t.slice_of

local USED_AFTER = "slice used after its handler returned"

local T = {}

-- Strings with NULs, 0xff and repeats, so memchr/memmem and the byte
-- arithmetic see more than plain ASCII.
local SAMPLES = { "", "a", "ab", "aaaa", "hello world", "abcabcab\0x\255" }

local function q(v) return t.show(v) end

---------------------------------------------------------------------------
-- construction, length, identity

T.new_fields_and_defaults = function()
  local buf = t.buffer("hello")
  local s = slice.new(buf, 5)
  eq(s.size, 5, "len field")
  eq(s.bid, -1, "default bid")
  eq(s.epoch, slice.epoch(), "epoch field")
  eq(s.base, ffi.cast("const uint8_t *", buf), "ptr field")
  local s2 = slice.new(buf, 3, 7)
  eq(s2.bid, 7, "explicit bid")
  eq(s2:tostring(), "hel")
  eq(slice.is_slice(s), true, "is_slice(slice)")
  eq(slice.is_slice("hello"), false, "is_slice(string)")
  eq(slice.is_slice(buf), false, "is_slice(buffer)")
  eq(slice.is_slice(nil), false, "is_slice(nil)")
  eq(ffi.istype(slice.type, s), true, "slice.type")
  eq(s:valid(), true, "valid()")
end

-- The len and ptr methods, called as functions (see method_syntax_len_ptr
-- for s:len() / s:ptr()).
T.len_and_hash = function()
  for _, str in ipairs(SAMPLES) do
    local s = mk(str)
    eq(#s, #str, "#s for " .. q(str))
    eq(slice.methods.len(s), #str, "methods.len(s) for " .. q(str))
    eq(type(slice.methods.len(s)), "number", "len() is a Lua number")
    eq(type(#s), "number", "#s is a Lua number")
  end
  local s, buf = mk("xyz")
  eq(slice.methods.ptr(s), ffi.cast("const uint8_t *", buf), "methods.ptr(s)")
  eq(slice.methods.ptr(s:sub(2))[0], 121, "methods.ptr of a sub-slice")
end

-- s:len() and s:ptr() are documented methods, but rl_slice has struct
-- fields with the same names, and an FFI metatype's __index is only
-- consulted for keys that are not fields: s:len() looks up the uint32_t
-- field and calls a number, s:ptr() calls a pointer.
T.method_syntax_len_ptr = function()
  local s, buf = mk("hello")
  local want = { len = 5, ptr = ffi.cast("const uint8_t *", buf) }
  local bad = {}
  for _, name in ipairs({ "len", "ptr" }) do
    local ok, r = pcall(function() return s[name](s) end)
    if not ok then
      bad[#bad + 1] = ("s:%s() raised: %s"):format(name, tostring(r))
    elseif r ~= want[name] then
      bad[#bad + 1] = ("s:%s() returned %s"):format(name, tostring(r))
    end
  end
  if #bad > 0 then error(table.concat(bad, "; ")) end
end

-- After release, s:len() and s:ptr() (method syntax, as handlers write it)
-- must raise the use-after-return error like every other method.
T.method_syntax_len_ptr_after_release = function()
  local s = mk("hello")
  slice.release()
  local bad = {}
  for _, name in ipairs({ "len", "ptr" }) do
    local ok, err = pcall(function() return s[name](s) end)
    if ok or not tostring(err):find(USED_AFTER, 1, true) then
      bad[#bad + 1] = ("s:%s() -> %s"):format(name,
        ok and "no error" or tostring(err))
    end
  end
  if #bad > 0 then
    error("expected " .. ("%q"):format(USED_AFTER) .. ", got: " ..
      table.concat(bad, "; "))
  end
end

-- slice.selftest() checks release with pcall(s.len, s): s.len is the
-- length field (a number), so that pcall fails because a number is not
-- callable, whatever the epoch.  It must fail for the right reason.
T.selftest_release_check_is_meaningful = function()
  local s = mk("hello\r\n12345")
  slice.release()
  raises(USED_AFTER, s.len, s)
end

T.tostring_whole = function()
  for _, str in ipairs(SAMPLES) do
    local s = mk(str)
    eq(tostring(s), str, "tostring(s)")
    eq(s:tostring(), str, "s:tostring()")
  end
end

-- tostring(i, j) follows string.sub for every i, j (and nil j).
T.tostring_range_grid = function()
  for _, str in ipairs(SAMPLES) do
    local s, n = mk(str), #str
    for i = -n - 2, n + 2 do
      eq(s:tostring(i), str:sub(i), ("tostring(%d) of %s"):format(i, q(str)))
      for j = -n - 2, n + 2 do
        eq(s:tostring(i, j), str:sub(i, j),
          ("tostring(%d, %d) of %s"):format(i, j, q(str)))
      end
    end
    eq(s:tostring(nil, 2), str:sub(1, 2), "tostring(nil, 2)")
    eq(s:tostring(nil, -2), str:sub(1, -2), "tostring(nil, -2)")
  end
end

---------------------------------------------------------------------------
-- byte

T.byte_exact = function()
  local s = mk("A\0\255z")
  eq(s:byte(), 65, "byte()")
  eq(s:byte(1), 65, "byte(1)")
  eq(s:byte(2), 0, "byte(2)")
  eq(s:byte(3), 255, "byte(3)")
  eq(s:byte(4), 122, "byte(4)")
  eq(s:byte(5), nil, "byte(5)")
  eq(s:byte(100), nil, "byte(100)")
  eq(s:byte(-1), 122, "byte(-1)")
  eq(s:byte(-2), 255, "byte(-2)")
  eq(s:byte(-4), 65, "byte(-4)")
  eq(s:byte(-5), nil, "byte(-5)")
  eq(s:byte(-100), nil, "byte(-100)")
  eq(s:byte(0), nil, "byte(0)")
  eq(type(s:byte(3)), "number", "byte() is a Lua number")
end

T.byte_grid = function()
  for _, str in ipairs(SAMPLES) do
    local s, n = mk(str), #str
    for i = -n - 2, n + 2 do
      -- string.byte(str, i) returns the byte or nothing.
      eq(s:byte(i), (str:byte(i)), ("byte(%d) of %s"):format(i, q(str)))
    end
  end
end

---------------------------------------------------------------------------
-- sub

T.sub_grid = function()
  for _, str in ipairs(SAMPLES) do
    local s, n = mk(str), #str
    for i = -n - 2, n + 2 do
      local r = s:sub(i)
      eq(slice.is_slice(r), true, "sub returns a slice")
      eq(tostring(r), str:sub(i), ("sub(%d) of %s"):format(i, q(str)))
      eq(#r, #str:sub(i), ("#sub(%d) of %s"):format(i, q(str)))
      for j = -n - 2, n + 2 do
        local r2 = s:sub(i, j)
        local want = str:sub(i, j)
        eq(tostring(r2), want, ("sub(%d, %d) of %s"):format(i, j, q(str)))
        eq(#r2, #want, ("#sub(%d, %d) of %s"):format(i, j, q(str)))
      end
    end
    eq(tostring(s:sub()), str, "sub() is the whole slice")
    eq(tostring(s:sub(nil, 2)), str:sub(1, 2), "sub(nil, 2)")
  end
end

T.sub_shares_memory_and_bid = function()
  local s, buf = mk("0123456789", 5)
  local base = ffi.cast("const uint8_t *", buf)
  local r = s:sub(3, 6)
  eq(tostring(r), "2345")
  eq(r.base, base + 2, "sub ptr points into the same buffer")
  eq(r.bid, 5, "sub keeps the buffer id")
  eq(s:sub(-3).base, base + 7, "sub(-3) ptr")
  -- Writing to the buffer shows through the sub-slice: no copy was made.
  buf[3] = 65
  eq(tostring(r), "2A45", "sub-slice sees buffer writes")
  -- Nested subs compose like string.sub.
  local str = "0123456789"
  buf[3] = 51
  for i = -4, 5 do
    for j = -4, 5 do
      eq(tostring(s:sub(3, -2):sub(i, j)), str:sub(3, -2):sub(i, j),
        ("sub(3,-2):sub(%d,%d)"):format(i, j))
    end
  end
  -- An empty sub-slice has length 0 and the original bid.
  local e = s:sub(5, 4)
  eq(#e, 0, "empty sub length")
  eq(e.bid, 5, "empty sub bid")
  eq(tostring(e), "", "empty sub string")
end

---------------------------------------------------------------------------
-- find

local FIND_HAY = {
  "", "a", "aaaa", "hello world", "abcabcab\0x\255",
}
local NEEDLES = {
  "", "a", "b", "c", "h", "d", "o", "z", "\0", "\255", "x\255", "\0x",
  "ab", "bc", "ca", "abc", "cab", "abcab", "aa", "aaa", "aaaa", "aaaaa",
  "hello", "world", "o w", "lo", "hello world", "hello world!", "zz",
  "abcabcab\0x\255", "abcabcab\0x\255z", "ab\0", "b\0x",
}

-- Plain find against string.find(str, needle, init, true) for every init.
-- One deliberate exception: an empty needle with init beyond len + 1.
-- LuaJIT 2.1's string.find clamps such an init to len + 1 (Lua 5.1
-- behaviour) and returns len + 1, len; slice:find returns nil there, like
-- Lua 5.2+.  That case is pinned separately in find_empty_needle.
T.find_grid = function()
  for _, str in ipairs(FIND_HAY) do
    local s, n = mk(str), #str
    for _, needle in ipairs(NEEDLES) do
      same(("find(%s) in %s"):format(q(needle), q(str)),
        pack(s:find(needle)), pack(str:find(needle, 1, true)))
      for init = -n - 2, n + 2 do
        if not (needle == "" and init > n + 1) then
          same(("find(%s, %d) in %s"):format(q(needle), init, q(str)),
            pack(s:find(needle, init)), pack(str:find(needle, init, true)))
        end
      end
    end
  end
end

T.find_exact = function()
  local s = mk("GET /index.html HTTP/1.1\r\n\r\n")
  same("start", pack(s:find("GET")), pack(1, 3))
  same("single byte", pack(s:find(" ")), pack(4, 4))
  same("single byte from init", pack(s:find(" ", 5)), pack(16, 16))
  same("multi byte", pack(s:find("\r\n")), pack(25, 26))
  same("multi byte from init", pack(s:find("\r\n", 26)), pack(27, 28))
  same("end", pack(s:find("\r\n\r\n")), pack(25, 28))
  same("absent", pack(s:find("POST")), pack(nil))
  same("absent byte", pack(s:find("Z")), pack(nil))
  same("negative init", pack(s:find("\r\n", -4)), pack(25, 26))
  same("negative init past match", pack(s:find("GET", -5)), pack(nil))
  same("init 0 acts as 1", pack(s:find("GET", 0)), pack(1, 3))
  same("very negative init", pack(s:find("GET", -1000)), pack(1, 3))
  same("init past end", pack(s:find("\n", 29)), pack(nil))
  same("last byte", pack(s:find("\n", 28)), pack(28, 28))
  same("needle longer than slice",
    pack(s:find("GET /index.html HTTP/1.1\r\n\r\nX")), pack(nil))
  same("no match straddling the end", pack(s:find("\n\n")), pack(nil))
  -- Plain: magic characters are literal.
  local m = mk("a.b%c(d)")
  same("dot literal", pack(m:find(".")), pack(2, 2))
  same("percent literal", pack(m:find("%c")), pack(4, 5))
  same("paren literal", pack(m:find("(d)")), pack(6, 8))
  -- A sub-slice reports indexes relative to itself, and does not see bytes
  -- of the buffer outside it.
  local sub = s:sub(5, 15) -- "/index.html"
  same("find in sub", pack(sub:find("index")), pack(2, 6))
  same("find in sub does not see outside", pack(sub:find("GET")), pack(nil))
  same("find in sub does not see past end", pack(sub:find("html ")), pack(nil))
  same("single byte in sub not past end", pack(sub:find(" ")), pack(nil))
end

T.find_empty_needle = function()
  local s = mk("abc")
  same("empty", pack(s:find("")), pack(1, 0))
  same("empty init 2", pack(s:find("", 2)), pack(2, 1))
  same("empty init len+1", pack(s:find("", 4)), pack(4, 3))
  same("empty init -1", pack(s:find("", -1)), pack(3, 2))
  same("empty init -10", pack(s:find("", -10)), pack(1, 0))
  -- Beyond len + 1: nil (Lua 5.2+ string.find; LuaJIT 2.1 would say 4, 3).
  same("empty init len+2", pack(s:find("", 5)), pack(nil))
  same("empty init 100", pack(s:find("", 100)), pack(nil))
  local z = mk("")
  same("empty in empty", pack(z:find("")), pack(1, 0))
  same("empty in empty init 2", pack(z:find("", 2)), pack(nil))
  same("byte in empty", pack(z:find("a")), pack(nil))
  same("multi in empty", pack(z:find("ab")), pack(nil))
end

---------------------------------------------------------------------------
-- find_byte

T.find_byte_grid = function()
  for _, str in ipairs(FIND_HAY) do
    local s, n = mk(str), #str
    for _, b in ipairs({ 0, 97, 98, 99, 104, 111, 120, 122, 255 }) do
      local c = string.char(b)
      eq(s:find_byte(b), (str:find(c, 1, true)),
        ("find_byte(%d) in %s"):format(b, q(str)))
      for init = -n - 2, n + 2 do
        eq(s:find_byte(b, init), (str:find(c, init, true)),
          ("find_byte(%d, %d) in %s"):format(b, init, q(str)))
      end
    end
  end
end

T.find_byte_exact = function()
  local s = mk("k: v\r\n\0\255")
  eq(s:find_byte(58), 2, "':'")
  eq(s:find_byte(13), 5, "CR")
  eq(s:find_byte(10), 6, "LF")
  eq(s:find_byte(0), 7, "NUL")
  eq(s:find_byte(255), 8, "0xff at the last byte")
  eq(s:find_byte(255, 8), 8, "init at the match")
  eq(s:find_byte(255, -1), 8, "negative init")
  eq(s:find_byte(107, 2), nil, "init past the only match")
  eq(s:find_byte(107, 0), 1, "init 0 acts as 1")
  eq(s:find_byte(107, -100), 1, "very negative init")
  eq(s:find_byte(65), nil, "absent")
  eq(s:find_byte(10, 9), nil, "init len+1")
  eq(s:find_byte(10, 100), nil, "init far past the end")
  eq(type(s:find_byte(58)), "number", "a Lua number")
  eq(mk(""):find_byte(0), nil, "empty slice")
  -- Only the bytes of the slice: a sub-slice does not see what follows.
  eq(s:sub(1, 4):find_byte(13), nil, "sub-slice end")
end

-- find_byte takes a byte value; a number outside 0..255 cannot be any byte
-- of the slice, so it must not report a match (nil or an error are fine).
T.find_byte_out_of_range_value = function()
  local s = mk("A\0\255")
  for _, b in ipairs({ 256 + 65, 256, -1, -256 + 65, 0x10000 + 255 }) do
    local ok, r = pcall(s.find_byte, s, b)
    if ok and r ~= nil then
      error(("find_byte(%d) matched byte %d at %d"):format(b, s:byte(r), r))
    end
  end
end

---------------------------------------------------------------------------
-- eq, starts_with, ends_with

T.eq_exact = function()
  local s = mk("a\0b")
  eq(s:eq("a\0b"), true, "same bytes with NUL")
  eq(s:eq("a\0c"), false, "differs after NUL")
  eq(s:eq("a"), false, "shorter")
  eq(s:eq("a\0bc"), false, "longer")
  eq(s:eq(""), false, "empty vs non-empty")
  eq(s:eq("A\0b"), false, "case matters")
  eq(mk(""):eq(""), true, "empty vs empty")
  eq(mk(""):eq("x"), false, "empty vs x")
  local h = mk("hello world")
  eq(h:sub(7):eq("world"), true, "sub eq")
  eq(h:sub(7, 10):eq("world"), false, "sub eq shorter")
  eq(mk("\255\254"):eq("\255\254"), true, "high bytes")
  eq(mk("\255\254"):eq("\254\255"), false, "high bytes swapped")
end

T.eq_grid = function()
  local words = { "", "a", "b", "ab", "ba", "abc", "abd", "\0", "a\0", "\255" }
  for _, x in ipairs(words) do
    local s = mk(x)
    for _, y in ipairs(words) do
      eq(s:eq(y), x == y, ("%s:eq(%s)"):format(q(x), q(y)))
      eq(s:starts_with(y), x:sub(1, #y) == y,
        ("%s:starts_with(%s)"):format(q(x), q(y)))
      eq(s:ends_with(y), #y <= #x and x:sub(#x - #y + 1) == y,
        ("%s:ends_with(%s)"):format(q(x), q(y)))
    end
  end
end

T.starts_with_exact = function()
  local s = mk("Content-Length: 5")
  eq(s:starts_with(""), true, "empty prefix")
  eq(s:starts_with("C"), true, "one byte")
  eq(s:starts_with("Content-"), true, "prefix")
  eq(s:starts_with("Content-Length: 5"), true, "whole")
  eq(s:starts_with("Content-Length: 55"), false, "longer than slice")
  eq(s:starts_with("content-"), false, "case matters")
  eq(s:starts_with("Length"), false, "not at start")
  eq(mk(""):starts_with(""), true, "empty/empty")
  eq(mk(""):starts_with("a"), false, "empty/a")
  -- A sub-slice must not look past its own end into the buffer.
  eq(s:sub(1, 7):starts_with("Content-"), false, "sub-slice end")
end

T.ends_with_exact = function()
  local s = mk("index.html\r\n")
  eq(s:ends_with(""), true, "empty suffix")
  eq(s:ends_with("\n"), true, "one byte")
  eq(s:ends_with("\r\n"), true, "CRLF")
  eq(s:ends_with("index.html\r\n"), true, "whole")
  eq(s:ends_with("/index.html\r\n"), false, "longer than slice")
  eq(s:ends_with("\n\r"), false, "swapped")
  eq(s:ends_with("html"), false, "not at end")
  eq(s:sub(1, 10):ends_with("html"), true, "sub-slice")
  eq(s:sub(2, 10):ends_with("index.html"), false, "sub-slice start")
  eq(mk(""):ends_with(""), true, "empty/empty")
  eq(mk(""):ends_with("a"), false, "empty/a")
end

---------------------------------------------------------------------------
-- eq_nocase

T.eq_nocase_exact = function()
  local s = mk("Content-Length")
  eq(s:eq_nocase("Content-Length"), true, "same")
  eq(s:eq_nocase("content-length"), true, "lower")
  eq(s:eq_nocase("CONTENT-LENGTH"), true, "upper")
  eq(s:eq_nocase("cONTENT-lENGTH"), true, "mixed")
  eq(s:eq_nocase("Content_Length"), false, "'-' vs '_'")
  eq(s:eq_nocase("Content-Lengt"), false, "shorter")
  eq(s:eq_nocase("Content-Lengths"), false, "longer")
  eq(s:eq_nocase(""), false, "empty")
  eq(mk(""):eq_nocase(""), true, "empty/empty")
  -- Pairs that differ only in bit 0x20 but are not letters.
  eq(mk("@"):eq_nocase("`"), false, "'@' vs '`'")
  eq(mk("`"):eq_nocase("@"), false, "'`' vs '@'")
  eq(mk("["):eq_nocase("{"), false, "'[' vs '{'")
  eq(mk("{"):eq_nocase("["), false, "'{' vs '['")
  eq(mk("\\"):eq_nocase("|"), false, "'\\' vs '|'")
  eq(mk("]"):eq_nocase("}"), false, "']' vs '}'")
  eq(mk("^"):eq_nocase("~"), false, "'^' vs '~'")
  eq(mk("_"):eq_nocase("\127"), false, "'_' vs DEL")
  eq(mk("\0"):eq_nocase(" "), false, "NUL vs space")
  eq(mk("\16"):eq_nocase("0"), false, "0x10 vs '0'")
  eq(mk("\13"):eq_nocase("-"), false, "CR vs '-'")
  eq(mk("\192"):eq_nocase("\224"), false, "0xc0 vs 0xe0")
  eq(mk("\193"):eq_nocase("\225"), false, "0xc1 vs 0xe1")
  eq(mk("Z"):eq_nocase("z"), true, "'Z' vs 'z'")
  eq(mk("A"):eq_nocase("a"), true, "'A' vs 'a'")
  eq(mk("a\0B"):eq_nocase("A\0b"), true, "NUL inside")
end

-- Every pair of single bytes: equal ignoring case exactly when the bytes
-- are equal or are the same ASCII letter.
T.eq_nocase_all_byte_pairs = function()
  local function letter(b) return (b >= 65 and b <= 90) or (b >= 97 and b <= 122) end
  local chars = {}
  for b = 0, 255 do chars[b] = string.char(b) end
  for a = 0, 255 do
    local s = mk(chars[a])
    for b = 0, 255 do
      local want = a == b or (letter(a) and letter(b) and
        (a == b + 32 or b == a + 32))
      local got = s:eq_nocase(chars[b])
      if got ~= want then
        error(("eq_nocase(0x%02x, 0x%02x): expected %s, got %s")
          :format(a, b, tostring(want), tostring(got)))
      end
    end
  end
end

---------------------------------------------------------------------------
-- to_int

local function int_case(str, want, why, i, j)
  local s = mk(str)
  local r = pack(s:to_int(i, j))
  local label = ("to_int(%s, %s) of %s"):format(tostring(i), tostring(j), q(str))
  if want == nil then
    same(label, r, pack(nil, why))
  else
    same(label, r, pack(want))
    eq(type(r[1]), "number", label .. " type")
  end
end

T.to_int_valid = function()
  int_case("0", 0)
  int_case("7", 7)
  int_case("123", 123)
  int_case("-123", -123)
  int_case("+123", 123)
  int_case("007", 7)
  int_case("-007", -7)
  int_case("+0", 0)
  int_case("4294967296", 4294967296)
  int_case("9007199254740991", 9007199254740991)
  int_case("-9007199254740991", -9007199254740991)
  int_case("+9007199254740991", 9007199254740991)
  int_case("0000000000000000000000009007199254740991", 9007199254740991)
  -- "-0" is zero (compares equal to 0).
  local v = mk("-0"):to_int()
  eq(v == 0, true, "-0 is zero")
end

T.to_int_invalid = function()
  local E, N, R = "empty or out of bounds", "not an integer", "integer out of range"
  int_case("", nil, E)
  int_case("-", nil, N)
  int_case("+", nil, N)
  int_case("--1", nil, N)
  int_case("+-1", nil, N)
  int_case("-+1", nil, N)
  int_case("12a", nil, N)
  int_case("a12", nil, N)
  int_case(" 12", nil, N)
  int_case("12 ", nil, N)
  int_case("1-2", nil, N)
  int_case("1.5", nil, N)
  int_case("1e3", nil, N)
  int_case("0x10", nil, N)
  int_case("12\0", nil, N)
  int_case("\255", nil, N)
  int_case("/", nil, N) -- '0' - 1
  int_case(":", nil, N) -- '9' + 1
  int_case("9007199254740992", nil, R)
  int_case("-9007199254740992", nil, R)
  int_case("+9007199254740992", nil, R)
  int_case("18446744073709551616", nil, R)
  int_case("99999999999999999999999999999", nil, R)
end

T.to_int_ranges = function()
  local E, N = "empty or out of bounds", "not an integer"
  local str = "len=12345;x-42y"
  int_case(str, 12345, nil, 5, 9)
  int_case(str, 1, nil, 5, 5)
  int_case(str, 5, nil, 9, 9)
  int_case(str, 234, nil, 6, 8)
  int_case(str, -42, nil, 12, 14)
  int_case(str, 42, nil, 13, 14)
  int_case(str, nil, N, 12, 12)  -- just "-"
  int_case(str, nil, N, 5, 10)   -- "12345;"
  int_case(str, nil, N, 4, 9)    -- "=12345"
  int_case(str, nil, N, 5)       -- j defaults to the end
  int_case(str, nil, E, 0, 3)    -- i < 1
  int_case(str, nil, E, -3, -1)  -- negative indexes are not counted back
  int_case(str, nil, E, 5, 16)   -- j > len
  int_case(str, nil, E, 6, 5)    -- i > j
  int_case(str, nil, E, 16)      -- i past the end
  int_case("987", 87, nil, 2)    -- i only
  int_case("987", 98, nil, 1, 2)
  int_case("987", 98, nil, nil, 2)
  -- On a sub-slice, indexes are relative to the sub-slice and the bytes
  -- after it are not read.
  local s = mk("x12345")
  same("sub to_int", pack(s:sub(2, 4):to_int()), pack(123))
  same("sub to_int range", pack(s:sub(2, 4):to_int(2, 3)), pack(23))
  same("sub to_int past end", pack(s:sub(2, 4):to_int(1, 4)), pack(nil, E))
end

---------------------------------------------------------------------------
-- fixed-width integer reads

local BIN = "\1\2\3\4\5\6\7\8\255\255\255\255\255\255\255\255\128\0"  -- 18 bytes

T.u8 = function()
  local s = mk(BIN)
  eq(#s, 18)
  eq(s:u8(1), 1, "u8(1)")
  eq(s:u8(8), 8, "u8(8)")
  eq(s:u8(9), 255, "u8(9)")
  eq(s:u8(17), 128, "u8(17)")
  eq(s:u8(18), 0, "u8(18), the last byte")
  eq(type(s:u8(9)), "number", "u8 is a Lua number")
  raises("out of bounds", s.u8, s, 19)
  raises("out of bounds", s.u8, s, 0)
  raises("out of bounds", s.u8, s, -1)
  raises("out of bounds", s.u8, s, nil)
  raises("out of bounds", s.u8, s, "1")
end

T.u16 = function()
  local s = mk(BIN)
  eq(s:u16be(1), 0x0102, "u16be(1)")
  eq(s:u16le(1), 0x0201, "u16le(1)")
  eq(s:u16be(8), 0x08ff, "u16be(8)")
  eq(s:u16le(8), 0xff08, "u16le(8)")
  eq(s:u16be(9), 0xffff, "u16be(9)")
  eq(s:u16le(9), 0xffff, "u16le(9)")
  eq(s:u16be(16), 0xff80, "u16be(16)")
  eq(s:u16le(16), 0x80ff, "u16le(16)")
  eq(s:u16be(17), 0x8000, "u16be(17), last two bytes")
  eq(s:u16le(17), 0x0080, "u16le(17), last two bytes")
  raises("out of bounds", s.u16be, s, 18)
  raises("out of bounds", s.u16le, s, 18)
  raises("out of bounds", s.u16be, s, 0)
  raises("out of bounds", s.u16le, s, -1)
  raises("out of bounds", s.u16be, s, nil)
end

T.u32 = function()
  local s = mk(BIN)
  eq(s:u32be(1), 0x01020304, "u32be(1)")
  eq(s:u32le(1), 0x04030201, "u32le(1)")
  eq(s:u32be(5), 0x05060708, "u32be(5)")
  eq(s:u32be(7), 0x0708ffff, "u32be(7)")
  eq(s:u32le(7), 0xffff0807, "u32le(7)")
  eq(s:u32be(9), 4294967295, "u32be(9) all 0xff")
  eq(s:u32le(9), 4294967295, "u32le(9) all 0xff")
  eq(s:u32be(15), 0xffff8000, "u32be(15), last four bytes")
  eq(s:u32le(15), 0x0080ffff, "u32le(15), last four bytes")
  eq(type(s:u32be(9)), "number", "u32be is a Lua number")
  eq(s:u32be(9) > 0, true, "u32be is unsigned")
  raises("out of bounds", s.u32be, s, 16)
  raises("out of bounds", s.u32le, s, 16)
  raises("out of bounds", s.u32be, s, 0)
  raises("out of bounds", s.u32le, s, nil)
end

T.u64 = function()
  local s = mk(BIN)
  local v = s:u64be(1)
  eq(ffi.istype("uint64_t", v), true, "u64be returns uint64_t cdata")
  eq(v, 0x0102030405060708ULL, "u64be(1)")
  eq(s:u64le(1), 0x0807060504030201ULL, "u64le(1)")
  eq(s:u64be(5), 0x05060708ffffffffULL, "u64be(5)")
  eq(s:u64le(5), 0xffffffff08070605ULL, "u64le(5)")
  eq(s:u64be(9), 0xffffffffffffffffULL, "u64be(9) all 0xff")
  eq(s:u64le(9), 0xffffffffffffffffULL, "u64le(9) all 0xff")
  eq(s:u64be(11), 0xffffffffffff8000ULL, "u64be(11), last eight bytes")
  eq(s:u64le(11), 0x0080ffffffffffffULL, "u64le(11), last eight bytes")
  eq(ffi.istype("uint64_t", s:u64le(11)), true, "u64le returns uint64_t")
  eq(tostring(s:u64be(9)), "18446744073709551615ULL", "exact, no rounding")
  raises("out of bounds", s.u64be, s, 12)
  raises("out of bounds", s.u64le, s, 12)
  raises("out of bounds", s.u64be, s, 0)
  raises("out of bounds", s.u64le, s, nil)
end

-- Reads on a sub-slice are bounded by the sub-slice, not the buffer.
T.int_reads_on_sub_slice = function()
  local s = mk(BIN):sub(3, 10) -- 03 04 05 06 07 08 ff ff
  eq(s:u8(1), 3)
  eq(s:u8(8), 255)
  eq(s:u16be(7), 0xffff, "u16be(7)")
  eq(s:u32be(5), 0x0708ffff)
  eq(s:u64be(1), 0x030405060708ffffULL)
  raises("out of bounds", s.u8, s, 9)
  raises("out of bounds", s.u16le, s, 8)
  raises("out of bounds", s.u32le, s, 6)
  raises("out of bounds", s.u64le, s, 2)
end

---------------------------------------------------------------------------
-- zero-length slices

T.zero_length = function()
  local function check_empty(s, label)
    eq(#s, 0, label .. " #s")
    eq(slice.methods.len(s), 0, label .. " len")
    eq(tostring(s), "", label .. " tostring")
    eq(s:tostring(1, 1), "", label .. " tostring(1,1)")
    eq(s:tostring(-1), "", label .. " tostring(-1)")
    eq(s:byte(), nil, label .. " byte()")
    eq(s:byte(1), nil, label .. " byte(1)")
    eq(s:byte(0), nil, label .. " byte(0)")
    eq(s:byte(-1), nil, label .. " byte(-1)")
    eq(#s:sub(1), 0, label .. " sub(1)")
    eq(#s:sub(-1, 1), 0, label .. " sub(-1, 1)")
    same(label .. " find('')", pack(s:find("")), pack(1, 0))
    same(label .. " find('a')", pack(s:find("a")), pack(nil))
    same(label .. " find('ab')", pack(s:find("ab")), pack(nil))
    eq(s:find_byte(0), nil, label .. " find_byte")
    eq(s:eq(""), true, label .. " eq('')")
    eq(s:eq("a"), false, label .. " eq('a')")
    eq(s:starts_with(""), true, label .. " starts_with('')")
    eq(s:ends_with(""), true, label .. " ends_with('')")
    eq(s:starts_with("a"), false, label .. " starts_with('a')")
    eq(s:ends_with("a"), false, label .. " ends_with('a')")
    eq(s:eq_nocase(""), true, label .. " eq_nocase('')")
    same(label .. " to_int", pack(s:to_int()), pack(nil, "empty or out of bounds"))
    raises("out of bounds", s.u8, s, 1)
    raises("out of bounds", s.u16be, s, 1)
    raises("out of bounds", s.u32le, s, 1)
    raises("out of bounds", s.u64be, s, 1)
    eq(s:valid(), true, label .. " valid")
  end
  check_empty(mk(""), "zero-size buffer")
  check_empty(mk("abc"):sub(2, 1), "empty sub-slice")
  check_empty(mk("abc"):sub(4), "sub past the end")
  check_empty(slice.new(t.buffer("xyz"), 0), "len 0 over a real buffer")
end

---------------------------------------------------------------------------
-- use after the handler returned

-- One call per method, with arguments that would succeed on a live slice.
local CALLS = {
  len = { },
  byte = { 1 },
  sub = { 1, 2 },
  find = { "b" },
  find_byte = { 98 },
  eq = { "abcdefgh" },
  starts_with = { "a" },
  ends_with = { "h" },
  eq_nocase = { "ABCDEFGH" },
  to_int = { },
  u8 = { 1 },
  u16be = { 1 },
  u16le = { 1 },
  u32be = { 1 },
  u32le = { 1 },
  u64be = { 1 },
  u64le = { 1 },
  tostring = { },
  ptr = { },
}
-- valid() is the one method that must not raise: it reports staleness.
local NO_RAISE = { valid = true }

-- The method functions are called from slice.methods: s.len and s.ptr are
-- the struct fields (method_syntax_len_ptr_after_release covers s:len()).
local M = slice.methods

local function all_raise(s, label)
  for name, args in pairs(CALLS) do
    local ok, err = pcall(M[name], s, unpack(args))
    if ok or not tostring(err):find(USED_AFTER, 1, true) then
      error(("%s: %s after release: expected %q, got %s"):format(label, name,
        USED_AFTER, ok and "no error" or tostring(err)))
    end
  end
  raises(USED_AFTER, function() return s:tostring(1, 2) end)
  raises(USED_AFTER, function() return s:find("bc", 2) end)
  raises(USED_AFTER, function() return s:to_int(1, 1) end)
  raises(USED_AFTER, function() return #s end)
  raises(USED_AFTER, function() return tostring(s) end)
  raises(USED_AFTER, function() return "x" .. tostring(s) end)
  eq(s:valid(), false, label .. " valid() after release")
end

T.release_every_method_covered = function()
  for name in pairs(slice.methods) do
    if not CALLS[name] and not NO_RAISE[name] then
      error("slice method " .. name .. " has no use-after-release test")
    end
  end
  for name in pairs(CALLS) do
    if not slice.methods[name] then error("no slice method " .. name) end
  end
end

T.release_invalidates = function()
  local s = mk("abcdefgh")
  -- Every call works while the slice is live.
  for name, args in pairs(CALLS) do
    local ok, err = pcall(M[name], s, unpack(args))
    if not ok then error(("live %s raised: %s"):format(name, tostring(err))) end
  end
  local before = slice.epoch()
  slice.release()
  eq(slice.epoch(), before + 1, "release moves the epoch on")
  all_raise(s, "slice")
end

T.release_invalidates_sub_slices = function()
  local s = mk("abcdefgh")
  local a, b, c = s:sub(2, 5), s:sub(3):sub(2), s:sub(5, 4)
  eq(tostring(b), "defgh")
  slice.release()
  all_raise(a, "sub")
  all_raise(b, "sub of sub")
  all_raise(c, "empty sub")
  -- Slices over zero bytes are invalidated too.
  local z = mk("")
  slice.release()
  raises(USED_AFTER, function() return #z end)
  raises(USED_AFTER, z.eq, z, "")
end

T.release_then_new_slices_are_valid = function()
  local s, buf = mk("abcdefgh", 3)
  slice.release()
  local fresh = slice.new(buf, 8, 3)
  eq(fresh:valid(), true, "fresh valid")
  eq(#fresh, 8)
  eq(tostring(fresh), "abcdefgh")
  eq(fresh:sub(2, 3):tostring(), "bc")
  eq(fresh:u32be(1), 0x61626364)
  eq(fresh.epoch, slice.epoch(), "fresh carries the new epoch")
  -- The old one stays dead even though the memory is the same.
  raises(USED_AFTER, function() return #s end)
  -- Several releases in a row: each kills what came before.
  slice.release()
  raises(USED_AFTER, function() return #fresh end)
  slice.release()
  slice.release()
  local newest = slice.new(buf, 2)
  eq(tostring(newest), "ab")
  eq(newest:valid(), true)
end

T.release_error_points_at_caller = function()
  local s = mk("abc")
  slice.release()
  -- The message is the fixed text, prefixed by the position of the code
  -- that called the method (not slice.lua).
  local err = raises(USED_AFTER, function()
    local v = s:byte(1)
    return v
  end)
  eq(err:sub(-#USED_AFTER), USED_AFTER, "message ends with the fixed text")
  if not err:find("test_slice.lua:", 1, true) then
    error("error position should name the caller, got " .. q(err))
  end
  err = raises(USED_AFTER, function()
    local v = #s
    return v
  end)
  eq(err:sub(-#USED_AFTER), USED_AFTER, "#s message")
end

-- check_live: what the parsers call on the slice (or plain cdata) they
-- are given.
T.check_live = function()
  local s = mk("abc")
  slice.check_live(s) -- a live slice passes
  local plain = ffi.new("struct { const uint8_t *base; size_t size; }")
  slice.check_live(plain) -- so does any other cdata with base and size
  slice.release()
  slice.check_live(plain)
  local function parse(x) slice.check_live(x) end -- as a parser does
  local caller_line
  local err = raises(USED_AFTER, function()
    caller_line = debug.getinfo(1, "l").currentline + 1
    parse(s)
  end)
  eq(err:sub(-#USED_AFTER), USED_AFTER, "message ends with the fixed text")
  -- The position is the line that called the parser.
  if not err:find("test_slice.lua:" .. caller_line .. ":", 1, true) then
    error("error position should name the parser's caller, got " .. q(err))
  end
end

return T
