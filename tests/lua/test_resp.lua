-- Tests for lua/ringline/resp.lua: RESP2 request parsing (multibulk and
-- inline), Redis's protocol errors and limits, split and byte-at-a-time
-- input, argument accessors, integer rules and reply builders.
local ffi = require "ffi"
local buffer = require "string.buffer"
local slice = require "ringline.slice"
local R = require "ringline.resp"
local t = require "testutil"

local eq, raises = t.eq, t.raises
local mk = t.slice_of
local show = t.show
local concat = table.concat

local T = {}

local E_MBULK = "Protocol error: invalid multibulk length"
local E_BULK = "Protocol error: invalid bulk length"
local E_INLINE = "Protocol error: too big inline request"
local E_QUOTES = "Protocol error: unbalanced quotes in request"
local E_CRLF = "Protocol error: expected CRLF after bulk data"
local function E_DOLLAR(x) return "Protocol error: expected '$', got '" .. x .. "'" end

---------------------------------------------------------------------------
-- helpers

local function args_of(cmd, s)
  local a = {}
  for i = 1, cmd.argc do a[i] = cmd:arg_str(s, i) end
  return a
end

local function fmt_cmd(a)
  local out = {}
  for i = 1, #a do out[i] = show(a[i]) end
  return "{" .. concat(out, ", ") .. "}"
end

local function fmt_list(list)
  local out = {}
  for i = 1, #list do out[i] = fmt_cmd(list[i]) end
  return "[" .. concat(out, " ") .. "]"
end

-- Every command (with arguments) parsed from the start of s until a
-- result below 0.  Returns the commands, that result, cmd.err and the
-- offset where parsing stopped.
local function parse_from(s, cmd, limits)
  local out, off = {}, 0
  while true do
    local n = R.parse_command(s, off, cmd, limits)
    if n < 0 then return out, n, cmd.err, off end
    assert(n > 0, "parse_command returned 0")
    if cmd.argc > 0 then out[#out + 1] = args_of(cmd, s) end
    off = off + n
  end
end

local function parse_all(str, limits)
  return parse_from(mk(str), R.new_command(2), limits)
end

-- One command from str: n and the arguments as strings.
local function one(str, limits)
  local s = mk(str)
  local cmd = R.new_command(2)
  local n = R.parse_command(s, 0, cmd, limits)
  return n, args_of(cmd, s), cmd, s
end

local function same_cmd(what, got, want)
  eq(fmt_cmd(got), fmt_cmd(want), what)
end

local function same_list(what, got, want)
  eq(fmt_list(got), fmt_list(want), what)
end

-- str must fail with exactly msg (after any complete commands before it).
local function errors(str, msg, limits)
  local _, r, err = parse_all(str, limits)
  eq(r, -1, "result for " .. show(str))
  eq(err, msg, "error for " .. show(str))
end

---------------------------------------------------------------------------
-- multibulk

T.multibulk_offsets = function()
  local str = "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nrest"
  local s = mk(str)
  local cmd = R.new_command()
  eq(R.parse_command(s, 0, cmd), 22, "n")
  eq(cmd.argc, 2, "argc")
  eq(cmd.off[1], 8, "off[1]"); eq(cmd.len[1], 3, "len[1]")
  eq(cmd.off[2], 17, "off[2]"); eq(cmd.len[2], 3, "len[2]")
  eq(cmd.nesc, 0, "nesc")
  eq(cmd:arg_len(1), 3, "arg_len")
  eq(cmd:arg_str(s, 1), "GET", "arg_str 1")
  eq(cmd:arg_str(s, 2), "key", "arg_str 2")
  local a = cmd:arg(s, 2)
  eq(slice.is_slice(a), true, "arg is a slice")
  eq(a:tostring(), "key", "arg slice bytes")
  eq(a.base, s.base + 17, "arg slice points into the buffer")
  eq(cmd:arg_is(s, 1, "get"), true, "arg_is lower")
  eq(cmd:arg_is(s, 1, "GeT"), true, "arg_is mixed")
  eq(cmd:arg_is(s, 1, "GETX"), false, "arg_is longer")
  eq(cmd:arg_is(s, 1, "GE"), false, "arg_is shorter")
  eq(cmd:arg_is(s, 1, "SET"), false, "arg_is other")
  eq(cmd:arg_is(s, 3, "GET"), false, "arg_is out of range")
  eq(cmd:arg(s, 0), nil, "arg 0")
  eq(cmd:arg(s, 3), nil, "arg 3")
  eq(cmd:arg_str(s, 3), nil, "arg_str 3")
  eq(cmd:arg_len(3), nil, "arg_len 3")
  eq(cmd:arg_len(1.5), nil, "arg_len 1.5")
  eq(cmd:arg_int(s, 3), nil, "arg_int 3")
end

T.multibulk_at_offset = function()
  local str = "xxxxx*1\r\n$4\r\nPING\r\n"
  local s = mk(str)
  local cmd = R.new_command()
  eq(R.parse_command(s, 5, cmd), 14, "n")
  eq(cmd.off[1], 13, "offset counts from s.base, not from off")
  eq(cmd:arg_str(s, 1), "PING")
  eq(R.parse_command(s, #str, cmd), -2, "at the end")
  eq(cmd.want, 1, "want at the end")
  raises("offset", R.parse_command, s, #str + 1, cmd)
end

T.multibulk_binary_payloads = function()
  local payload = "a\r\nb\0c\r\r\n\n\255\0"
  local str = "*4\r\n$3\r\nSET\r\n$2\r\n\r\n\r\n$" .. #payload .. "\r\n" ..
    payload .. "\r\n$0\r\n\r\n"
  local n, a = one(str)
  eq(n, #str, "n")
  same_cmd("binary", a, { "SET", "\r\n", payload, "" })
  -- Bytes that look like protocol inside a payload are data.
  local inner = "*1\r\n$4\r\nPING\r\n"
  str = "*2\r\n$4\r\nECHO\r\n$" .. #inner .. "\r\n" .. inner .. "\r\n"
  n, a = one(str)
  eq(n, #str)
  same_cmd("protocol inside", a, { "ECHO", inner })
end

T.multibulk_many_args_grow = function()
  -- More arguments than the command object was made for.
  local parts = { "*100\r\n" }
  local want = {}
  for k = 1, 100 do
    local v = ("v%d"):format(k)
    parts[#parts + 1] = ("$%d\r\n%s\r\n"):format(#v, v)
    want[k] = v
  end
  local str = concat(parts)
  local s = mk(str)
  local cmd = R.new_command(2)
  eq(R.parse_command(s, 0, cmd), #str)
  eq(cmd.argc, 100)
  same_cmd("100 args", args_of(cmd, s), want)
end

T.empty_commands = function()
  local cmd = R.new_command()
  for _, str in ipairs({ "*0\r\n", "*-1\r\n", "*-5\r\n", "\r\n", "\n",
    "   \t \r\n", "*-9223372036854775808\r\n" }) do
    local s = mk(str)
    eq(R.parse_command(s, 0, cmd), #str, "n for " .. show(str))
    eq(cmd.argc, 0, "argc for " .. show(str))
  end
  -- Skipped before a complete command: counted in n.
  local str = "*0\r\n\r\n\n*-1\r\nPING\r\n"
  local s = mk(str)
  eq(R.parse_command(s, 0, cmd), #str, "skipped before a command")
  eq(cmd.argc, 1)
  eq(cmd:arg_str(s, 1), "PING")
  -- Skipped before an incomplete command: returned with argc 0.
  s = mk("\r\n*0\r\n*1\r\n$4\r\nPI")
  eq(R.parse_command(s, 0, cmd), 6, "skipped before an incomplete one")
  eq(cmd.argc, 0)
  eq(R.parse_command(s, 6, cmd), -2)
  -- Skipped before an error: the error.
  s = mk("\r\n*x\r\n")
  eq(R.parse_command(s, 0, cmd), -1)
  eq(cmd.err, E_MBULK)
end

T.incomplete_and_want = function()
  local cmd = R.new_command()
  local cases = {
    { "", 1 }, { "*", 2 }, { "*1", 3 }, { "*1\r", 4 }, { "*1\r\n", 5 },
    { "*1\r\n$", 6 }, { "*1\r\n$5", 7 }, { "*1\r\n$5\r\n", 15 },
    { "*1\r\n$5\r\nhel", 15 }, { "*1\r\n$5\r\nhello", 15 },
    { "*1\r\n$5\r\nhello\r", 15 }, { "PING", 5 }, { "PING\r", 6 },
    { "*2\r\n$1\r\na\r\n", 12 },
  }
  for _, c in ipairs(cases) do
    local s = mk(c[1])
    eq(R.parse_command(s, 0, cmd), -2, "result for " .. show(c[1]))
    eq(cmd.want, c[2], "want for " .. show(c[1]))
    eq(cmd.argc, 0, "argc for " .. show(c[1]))
  end
  -- want is relative to off.
  local s = mk("abc*1\r\n$5\r\nhe")
  eq(R.parse_command(s, 3, cmd), -2)
  eq(cmd.want, 15)
end

-- Declared sizes are only checked, never used to size anything: parsing
-- the start of a command that announces 1048576 arguments (8 MiB of
-- slots if preallocated) or a 512 MiB bulk allocates next to nothing.  The
-- bound allows for interpreted runs (the JIT may not have compiled these
-- paths yet), where each access to s.base boxes a pointer.
T.huge_declared_sizes_allocate_nothing = function()
  local cmd = R.new_command()
  local cases = {
    { "*1048576\r\n$3\r\nGET\r\n$3\r\nkey\r\n", 28 + 1 },
    { "*1048576\r\n", 10 + 1 },
    { "*1\r\n$536870912\r\nabc", 16 + 536870912 + 2 },
    { "*2\r\n$3\r\nSET\r\n$536870912\r\n" .. ("x"):rep(1000),
      25 + 536870912 + 2 },
    { "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\n", 32 + 536870912 + 2 },
    { "*1\r\n$" .. ("9"):rep(9) .. "\r\n", nil }, -- over the limit
  }
  for _, c in ipairs(cases) do
    local s = mk(c[1])
    -- Up to 5 tries: a parse can coincide with the string table growing
    -- or a trace being compiled (tens of KiB, seen in CI once); buffering
    -- the declared size would be hundreds of MiB every time.
    local grown
    for _ = 1, 5 do
      collectgarbage()
      collectgarbage("stop")
      local before = collectgarbage("count")
      local r = R.parse_command(s, 0, cmd)
      grown = collectgarbage("count") - before
      collectgarbage("restart")
      if c[2] then
        eq(r, -2, "result for " .. show(c[1]:sub(1, 40)))
        eq(cmd.want, c[2], "want for " .. show(c[1]:sub(1, 40)))
      else
        eq(r, -1, "result for " .. show(c[1]))
        eq(cmd.err, E_BULK)
      end
      if grown <= 16 then break end
    end
    if grown > 16 then
      error(("%.2f KiB allocated for %s"):format(grown, show(c[1]:sub(1, 40))))
    end
  end
end

---------------------------------------------------------------------------
-- protocol errors

T.multibulk_count_errors = function()
  for _, str in ipairs({ "*abc\r\n", "*\r\n", "*01\r\n", "*-0\r\n",
    "*+1\r\n", "* 1\r\n", "*1 \r\n", "*1.0\r\n", "*1\n", "*1\rX",
    "*0x10\r\n", "*1048577\r\n", "*99999999999999999999\r\n",
    "*-9223372036854775809\r\n", "*-99999999999999999999\r\n",
    "*\0\r\n" }) do
    errors(str, E_MBULK)
  end
  -- Exactly the limit is fine (and waits for its arguments).
  local _, r = parse_all("*1048576\r\n")
  eq(r, -2, "count at the limit")
  -- A lower limit.
  errors("*4\r\n", E_MBULK, { max_args = 3 })
  local n = one("*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", { max_args = 3 })
  eq(n, 25, "count at a lower limit")
end

T.expected_dollar_errors = function()
  errors("*1\r\n:3\r\n", E_DOLLAR(":"))
  errors("*2\r\n$3\r\nGET\r\nkey\r\n", E_DOLLAR("k"))
  errors("*1\r\n*1\r\n", E_DOLLAR("*"))
  errors("*1\r\n\r\n", E_DOLLAR(" "))  -- CR shown as a space
  errors("*1\r\n\n", E_DOLLAR(" "))    -- LF too
  errors("*1\r\n\0", E_DOLLAR("\0"))
  errors("*1\r\n\255", E_DOLLAR("\255"))
end

T.bulk_length_errors = function()
  for _, str in ipairs({ "*1\r\n$-1\r\n", "*1\r\n$-0\r\n", "*1\r\n$-\r\n",
    "*1\r\n$\r\n", "*1\r\n$abc\r\n", "*1\r\n$01\r\n", "*1\r\n$+1\r\n",
    "*1\r\n$ 1\r\n", "*1\r\n$1 \r\n", "*1\r\n$3\n", "*1\r\n$3\rX",
    "*1\r\n$536870913\r\n", "*1\r\n$9223372036854775808\r\n",
    "*1\r\n$99999999999999999999999\r\n" }) do
    errors(str, E_BULK)
  end
  local _, r = parse_all("*1\r\n$536870912\r\n")
  eq(r, -2, "bulk at the default limit")
  errors("*1\r\n$11\r\n", E_BULK, { max_bulk = 10 })
  local n, a = one("*1\r\n$10\r\n0123456789\r\n", { max_bulk = 10 })
  eq(n, 21, "bulk at a lower limit")
  same_cmd("bulk at a lower limit", a, { "0123456789" })
end

T.bulk_crlf_errors = function()
  errors("*1\r\n$3\r\nabcXY", E_CRLF)
  errors("*1\r\n$3\r\nabc\rX", E_CRLF)
  errors("*1\r\n$3\r\nabc\n\r", E_CRLF)
  errors("*1\r\n$3\r\nabcd\r\n", E_CRLF)
  errors("*2\r\n$1\r\na\r\n$0\r\nX\r\n", E_CRLF)
  -- The first wrong byte is enough.
  errors("*1\r\n$3\r\nabcX", E_CRLF)
end

T.inline_quote_errors = function()
  for _, str in ipairs({ "GET \"abc\r\n", "GET 'abc\r\n", "GET \"a\"b\r\n",
    "GET 'a'b\r\n", "GET \"a\"\"b\"\r\n", "GET 'a'\"b\"\r\n",
    "GET \"a\\\"\r\n", "GET \"abc\\\r\n", "GET a'b'c\r\n", "GET ab\"\n",
    "\"\n", "'\n", "GET \"a\0b\"\n", "GET 'a\\'\n",
    "GET 'a\\\\'\n" }) do -- in single quotes \\ is two bytes, then \'

    errors(str, E_QUOTES)
  end
end

T.inline_too_big = function()
  local lim = { max_inline = 16 }
  local _, r = parse_all(("a"):rep(16), lim)
  eq(r, -2, "max_inline bytes without LF: wait")
  errors(("a"):rep(17), E_INLINE, lim)
  local out = parse_all(("a"):rep(16) .. "\n", lim)
  same_list("a line of max_inline bytes", out, { { ("a"):rep(16) } })
  out = parse_all(("a"):rep(15) .. "\r\n", lim)
  same_list("max_inline bytes with the CR", out, { { ("a"):rep(15) } })
  errors(("a"):rep(16) .. "\r\n", E_INLINE, lim)
  errors(("a"):rep(17) .. "\n", E_INLINE, lim)
  errors("x y\n" .. ("b"):rep(40), E_INLINE, lim)
  -- The default, 64 KiB.
  local big = ("a"):rep(65536)
  _, r = parse_all(big)
  eq(r, -2, "64 KiB without LF")
  errors(big .. "a", E_INLINE)
  out = parse_all(big .. "\n")
  eq(#out, 1, "64 KiB line")
  eq(#out[1][1], 65536)
  -- Counts and lengths have no such wait: a long line is already invalid.
  errors("*" .. ("1"):rep(30), E_MBULK)
  errors("*1\r\n$" .. ("1"):rep(30), E_BULK)
end

-- The error is the same at every prefix that already shows it.
T.errors_on_every_prefix = function()
  local cases = {
    { "PING\r\n*2\r\n$3\r\nGET\r\n$01\r\nk\r\n", E_BULK },
    { "PING\r\n*2\r\n$3\r\nGET\r\n:1\r\n", E_DOLLAR(":") },
    { "*1\r\n$1\r\na\r\n*12a\r\n", E_MBULK },
    { "*1\r\n$4\r\nPING\r\n*1\r\n$2\r\nabc\r\n", E_CRLF },
    { "GET a\nSET \"x\"y z\n", E_QUOTES },
  }
  for _, c in ipairs(cases) do
    local str, msg = c[1], c[2]
    local all, r, err = parse_all(str)
    eq(r, -1, "full " .. show(str))
    eq(err, msg, "full " .. show(str))
    for k = 0, #str do
      local got, rk, ek = parse_all(str:sub(1, k))
      if rk == -1 then
        eq(ek, msg, ("error at prefix %d of %s"):format(k, show(str)))
      else
        eq(rk, -2, "prefix result")
      end
      same_list("commands before the error",
        got, { unpack(all, 1, #got) })
    end
  end
end

---------------------------------------------------------------------------
-- inline

T.inline_commands = function()
  local cases = {
    { "PING\r\n", { "PING" } },
    { "PING\n", { "PING" } },
    { "set a b\r\n", { "set", "a", "b" } },
    { "  set\t a  \t b  \r\n", { "set", "a", "b" } },
    { "GET a\rb\r\n", { "GET", "a", "b" } },           -- CR inside: a blank
    { "GET a\vb c\n", { "GET", "a\vb", "c" } },        -- \v ends no word
    { "\v\fGET\n", { "GET" } },                        -- but is skipped
    { "SET k \"hello world\"\r\n", { "SET", "k", "hello world" } },
    { "SET k 'hello world'\r\n", { "SET", "k", "hello world" } },
    { "SET k \"\"\r\n", { "SET", "k", "" } },
    { "SET k ''\n", { "SET", "k", "" } },
    { "SET k \"a\\nb\\r\\t\\b\\a\\\\\\\"\"\n",
      { "SET", "k", "a\nb\r\t\b\a\\\"" } },
    { "SET k \"\\x41\\x7a\\xff\\x00!\"\n", { "SET", "k", "Az\255\0!" } },
    { "SET k \"\\x4\" \"\\xZZ\" \"\\q\"\n", { "SET", "k", "x4", "xZZ", "q" } },
    { "SET k 'it\\'s'\n", { "SET", "k", "it's" } },
    { "SET k 'a\\nb\\c'\n", { "SET", "k", "a\\nb\\c" } },
    { "SET k a\"b c\"\n", { "SET", "k", "ab c" } },
    { "SET k a'b c'\n", { "SET", "k", "ab c" } },
    { "SET k \"a\"\tb\n", { "SET", "k", "a", "b" } },
    { "SET k \"a\"\r\n", { "SET", "k", "a" } },
    { "SET k \"a\"\v b\n", { "SET", "k", "a", "b" } },
    { "$3\r\n", { "$3" } },                            -- not '*': inline
    { "GET a\0b c\n", { "GET", "a" } },                 -- NUL ends the args
    { "\0GET\n", {} },
    { "GET \xff\x80\n", { "GET", "\xff\x80" } },
  }
  for _, c in ipairs(cases) do
    local n, a = one(c[1])
    eq(n, #c[1], "n for " .. show(c[1]))
    same_cmd(show(c[1]), a, c[2])
  end
end

T.inline_quoted_args_kinds = function()
  local str = "SET plain \"quoted no esc\" 'single' \"esc\\n\" a\"b\" ''\r\n"
  local s = mk(str)
  local cmd = R.new_command()
  eq(R.parse_command(s, 0, cmd), #str)
  eq(cmd.argc, 7)
  eq(cmd.nesc, 2, "nesc")
  -- Plain and quoted-without-escapes arguments are slices of the buffer.
  for _, i in ipairs({ 1, 2, 3, 4, 7 }) do
    eq(slice.is_slice(cmd:arg(s, i)), true, "slice for arg " .. i)
    eq(cmd.esc[i], 0, "esc " .. i)
  end
  eq(cmd.off[3], 11, "inside the quotes")
  eq(cmd.len[3], 13)
  eq(cmd:arg(s, 3):tostring(), "quoted no esc")
  eq(cmd:arg(s, 4):tostring(), "single")
  eq(cmd:arg(s, 7):tostring(), "")
  -- With escapes: strings, esc = raw word length, len = decoded length.
  eq(cmd:arg(s, 5), "esc\n", "decoded arg 5")
  eq(cmd.off[5], 35, "raw word start")
  eq(cmd.esc[5], 7, "raw word length")
  eq(cmd.len[5], 4, "decoded length")
  eq(cmd:arg_len(5), 4)
  eq(cmd:arg(s, 6), "ab", "decoded arg 6")
  eq(cmd.esc[6], 4)
  eq(cmd:arg_str(s, 6), "ab")
  eq(cmd:arg_is(s, 5, "ESC\n"), true, "arg_is on a decoded arg")
  eq(cmd:arg_is(s, 5, "esc\\n"), false)
  eq(cmd:arg_is(s, 6, "AB"), true)
  -- arg_int on decoded arguments.
  s = mk("INCRBY \"\\x31\\x32\" '-\\'' \"-9007199254740993\\x00\"\n")
  eq(R.parse_command(s, 0, cmd), #s)
  eq(cmd:arg_int(s, 2), 12, "decoded 12")
  eq(cmd:arg_int(s, 3), nil, "decoded -'")
  eq(cmd:arg_int(s, 4), nil, "decoded with a NUL")
  -- A long decoded argument (past the initial scratch space).
  local long = ("\\x41"):rep(3000)
  s = mk("SET k \"" .. long .. "\"\n")
  eq(R.parse_command(s, 0, cmd), #s)
  eq(cmd:arg(s, 3), ("A"):rep(3000))
  eq(cmd:arg_is(s, 3, ("a"):rep(3000)), true)
  -- A following multibulk command resets nesc.
  s = mk("SET \"a\\n\" b\n*1\r\n$1\r\nx\r\n")
  local n = R.parse_command(s, 0, cmd)
  eq(cmd.nesc, 1)
  R.parse_command(s, n, cmd)
  eq(cmd.nesc, 0, "nesc after multibulk")
  eq(slice.is_slice(cmd:arg(s, 1)), true)
end

---------------------------------------------------------------------------
-- splits

local PIPELINE = concat({
  "*3\r\n$3\r\nSET\r\n$5\r\nk\r\n\0v\r\n$0\r\n\r\n",
  "PING\r\n",
  "\r\n",
  "*0\r\n",
  "set  a\t'b c' \"x\\x41\\n\"\n",
  "*2\r\n$4\r\nECHO\r\n$10\r\n0123456789\r\n",
  "*-1\r\n",
  "GET k\n",
  "   \n",
  "*1\r\n$4\r\nQUIT\r\n",
})
local PIPELINE_CMDS = {
  { "SET", "k\r\n\0v", "" },
  { "PING" },
  { "set", "a", "b c", "xA\n" },
  { "ECHO", "0123456789" },
  { "GET", "k" },
  { "QUIT" },
}

-- Where each command of PIPELINE ends (after its LF).
local PIPELINE_ENDS = { 30, 36, 65, 96, 107, 125 }

T.pipeline_whole = function()
  local s, cmd, ends, off = mk(PIPELINE), R.new_command(), {}, 0
  while true do
    local n = R.parse_command(s, off, cmd)
    if n < 0 then break end
    off = off + n
    if cmd.argc > 0 then ends[#ends + 1] = off end
  end
  eq(concat(ends, " "), concat(PIPELINE_ENDS, " "), "command ends")
  local out, r, _, off = parse_all(PIPELINE)
  same_list("whole pipeline", out, PIPELINE_CMDS)
  eq(r, -2, "after the last command")
  eq(off, #PIPELINE, "all consumed")
end

T.pipeline_every_prefix = function()
  for k = 0, #PIPELINE do
    local out, r = parse_all(PIPELINE:sub(1, k))
    eq(r, -2, "prefix " .. k)
    same_list("prefix " .. k, out, { unpack(PIPELINE_CMDS, 1, #out) })
    -- The prefix has every command that ends in it.
    local complete = 0
    for j = 1, #PIPELINE_ENDS do
      if PIPELINE_ENDS[j] <= k then complete = j end
    end
    eq(#out, complete, "commands in prefix " .. k)
  end
end

-- Every split in two: the first part's commands, then the rest with the
-- residue, give the same commands.
T.pipeline_every_split = function()
  local cmd = R.new_command(2)
  for k = 0, #PIPELINE do
    local a = mk(PIPELINE:sub(1, k))
    local out, r, _, off = parse_from(a, cmd)
    eq(r, -2, "first part " .. k)
    local rest = PIPELINE:sub(off + 1)
    local out2, r2 = parse_from(mk(rest), cmd)
    eq(r2, -2, "second part " .. k)
    for _, c in ipairs(out2) do out[#out + 1] = c end
    same_list("split at " .. k, out, PIPELINE_CMDS)
  end
end

-- Feed one byte at a time into a growing FFI buffer, consuming complete
-- commands and keeping the residue, as the server does.
local function feed_bytes(str, step)
  local cap = 16
  local buf = ffi.new("uint8_t[?]", cap)
  local used = 0
  local cmd = R.new_command(1)
  local out = {}
  local calls = 0
  local want_len = 0 -- length from which the answer may change
  for pos = 1, #str, step do
    local chunk = str:sub(pos, pos + step - 1)
    if used + #chunk > cap then
      while cap < used + #chunk do cap = cap * 2 end
      local nb = ffi.new("uint8_t[?]", cap)
      ffi.copy(nb, buf, used)
      buf = nb
    end
    ffi.copy(buf + used, chunk, #chunk)
    used = used + #chunk
    local off = 0
    while true do
      local s = slice.new(buf, used)
      local n = R.parse_command(s, off, cmd)
      calls = calls + 1
      if n == -1 then error("protocol error: " .. cmd.err) end
      if n == -2 then
        want_len = cmd.want
        break
      end
      if used - off < want_len then -- want must be a true lower bound
        error(("command found with %d bytes, want said %d"):format(
          used - off, want_len))
      end
      want_len = 0
      if cmd.argc > 0 then out[#out + 1] = args_of(cmd, s) end
      off = off + n
    end
    slice.release()
    if off > 0 then -- keep the residue at the front
      ffi.C.memmove(buf, buf + off, used - off)
      used = used - off
    end
  end
  return out, used, calls
end

pcall(ffi.cdef, "void *memmove(void *dest, const void *src, size_t n);")

T.pipeline_byte_at_a_time = function()
  local out, left = feed_bytes(PIPELINE, 1)
  same_list("byte at a time", out, PIPELINE_CMDS)
  eq(left, 0, "residue at the end")
  for _, step in ipairs({ 2, 3, 5, 7, 13 }) do
    out, left = feed_bytes(PIPELINE, step)
    same_list("chunks of " .. step, out, PIPELINE_CMDS)
    eq(left, 0, "residue at the end, chunks of " .. step)
  end
end

T.large_bulk_fed_in_chunks = function()
  local v = ("0123456789"):rep(5000)
  local str = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" .. #v .. "\r\n" .. v .. "\r\n"
  local out = feed_bytes(str .. "PING\n", 977)
  same_list("large value", out, { { "SET", "k", v }, { "PING" } })
end

---------------------------------------------------------------------------
-- integers

T.arg_int_strictness = function()
  local cases = {
    { "0", 0 }, { "-0", nil }, { "+1", nil }, { "01", nil }, { " 1", nil },
    { "1 ", nil }, { "", nil }, { "1.0", nil }, { "-", nil }, { "00", nil },
    { "-01", nil }, { "1e3", nil }, { "0x10", nil }, { "12a", nil },
    { "1", 1 }, { "-1", -1 }, { "10", 10 }, { "123456789", 123456789 },
    { "999999999999999", 999999999999999 },
    { "9007199254740991", 9007199254740991 },
    { "9007199254740992", 9007199254740992 },
    { "-9007199254740992", -9007199254740992 },
    { "9007199254740993", 9007199254740993LL },
    { "-9007199254740993", -9007199254740993LL },
    { "9223372036854775807", 9223372036854775807LL },
    { "9223372036854775808", nil },
    { "-9223372036854775808", -9223372036854775807LL - 1 },
    { "-9223372036854775809", nil },
    { "18446744073709551615", nil }, { "99999999999999999999", nil },
    { "00000000000000000001", nil }, { "-1000000000000000000", -1000000000000000000LL },
  }
  local cmd = R.new_command()
  for _, c in ipairs(cases) do
    local str = "*1\r\n$" .. #c[1] .. "\r\n" .. c[1] .. "\r\n"
    local s = mk(str)
    eq(R.parse_command(s, 0, cmd), #str)
    local v = cmd:arg_int(s, 1)
    local want = c[2]
    eq(v, want, "arg_int " .. show(c[1]))
    if want ~= nil then
      eq(type(v), type(want), "type for " .. show(c[1]))
      if type(want) == "cdata" then
        eq(ffi.istype("int64_t", v), true, "int64_t for " .. show(c[1]))
      end
    end
  end
end

---------------------------------------------------------------------------
-- replies

T.reply_builders = function()
  local b = buffer.new()
  local function got() local r = b:tostring(); b:reset(); return r end
  R.put_simple(b, "OK"); eq(got(), "+OK\r\n")
  R.put_simple(b, ""); eq(got(), "+\r\n")
  R.put_simple(b, "a\r\nb"); eq(got(), "+a  b\r\n")
  R.put_error(b, "ERR unknown command 'x'")
  eq(got(), "-ERR unknown command 'x'\r\n")
  R.put_error(b, "ERR bad\nline"); eq(got(), "-ERR bad line\r\n")
  R.put_error(b, R.E_MBULK)
  eq(got(), "-Protocol error: invalid multibulk length\r\n")
  R.put_int(b, 0); eq(got(), ":0\r\n")
  R.put_int(b, -0.0); eq(got(), ":0\r\n")
  R.put_int(b, 42); eq(got(), ":42\r\n")
  R.put_int(b, -7); eq(got(), ":-7\r\n")
  R.put_int(b, 1e15); eq(got(), ":1000000000000000\r\n")
  R.put_int(b, 2 ^ 53); eq(got(), ":9007199254740992\r\n")
  R.put_int(b, 2 ^ 62); eq(got(), ":4611686018427387904\r\n")
  R.put_int(b, 9223372036854775807LL); eq(got(), ":9223372036854775807\r\n")
  R.put_int(b, -9223372036854775807LL - 1)
  eq(got(), ":-9223372036854775808\r\n")
  R.put_int(b, 5ULL); eq(got(), ":5\r\n")
  raises("not an integer", R.put_int, b, 1.5)
  raises("not an integer", R.put_int, b, 0 / 0)
  raises("not an integer", R.put_int, b, 1 / 0)
  raises("not an integer", R.put_int, b, 2 ^ 63)
  raises("not an integer", R.put_int, b, 18446744073709551615ULL)
  raises("not an integer", R.put_int, b, "1")
  b:reset()
  R.put_bulk(b, "hello"); eq(got(), "$5\r\nhello\r\n")
  R.put_bulk(b, ""); eq(got(), "$0\r\n\r\n")
  R.put_bulk(b, "a\r\n\0b"); eq(got(), "$5\r\na\r\n\0b\r\n")
  local s = mk("xyz\0\r\n")
  R.put_bulk(b, s); eq(got(), "$6\r\nxyz\0\r\n\r\n")
  R.put_bulk(b, s:sub(2, 3)); eq(got(), "$2\r\nyz\r\n")
  raises("expected a string or a slice", R.put_bulk, b, 5)
  R.put_bulk_header(b, 1048576); eq(got(), "$1048576\r\n")
  R.put_bulk_header(b, 0); eq(got(), "$0\r\n")
  R.put_null(b); eq(got(), "$-1\r\n")
  R.put_array(b, 3); eq(got(), "*3\r\n")
  R.put_array(b, 0); eq(got(), "*0\r\n")
  R.put_null_array(b); eq(got(), "*-1\r\n")
  -- Chained into one buffer.
  R.put_array(b, 2); R.put_bulk(b, "a"); R.put_int(b, 1)
  eq(got(), "*2\r\n$1\r\na\r\n:1\r\n")
  slice.release()
  raises("slice used after its handler returned", R.put_bulk, b, s)
end

T.reply_builders_allocate_nothing = function()
  if not jit or not jit.status() then return end
  local b = buffer.new(65536)
  local s = mk("value-bytes")
  local put_int, put_bulk, put_simple = R.put_int, R.put_bulk, R.put_simple
  local function run(k)
    for i = 1, k do
      b:reset()
      put_simple(b, "OK"); put_int(b, i); put_bulk(b, "abc")
      put_bulk(b, s); R.put_null(b); R.put_array(b, 2)
    end
  end
  for _ = 1, 5 do
    run(2000)
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    run(10000)
    local grown = collectgarbage("count") - before
    collectgarbage("restart")
    if grown < 16 then return end
  end
  error("reply builders allocate")
end

---------------------------------------------------------------------------
-- slices and garbage

T.slice_lifetime = function()
  local s = mk("*1\r\n$4\r\nPING\r\n")
  local cmd = R.new_command()
  eq(R.parse_command(s, 0, cmd), 14)
  slice.release()
  raises("slice used after its handler returned", R.parse_command, s, 0, cmd)
  raises("slice used after its handler returned", cmd.arg, cmd, s, 1)
  raises("slice used after its handler returned", cmd.arg_is, cmd, s, 1, "x")
  raises("slice used after its handler returned", cmd.arg_int, cmd, s, 1)
  raises("slice used after its handler returned", cmd.arg_str, cmd, s, 1)
end

T.new_command_checks = function()
  raises("non-negative integer", R.new_command, -1)
  raises("non-negative integer", R.new_command, 1.5)
  local cmd = R.new_command(0)
  local n, a = 0, nil
  local s = mk("a b c\n")
  n = R.parse_command(s, 0, cmd)
  a = args_of(cmd, s)
  eq(n, 6)
  same_cmd("size 0 grows", a, { "a", "b", "c" })
end

-- Compiled, parse_command allocates nothing: 10,000 passes over a
-- pipelined buffer (multibulk and inline commands, empty ones, an
-- incomplete one at the end) with the GC stopped grow the heap by no more
-- than a small constant (trace objects).
--
-- Whether LuaJIT compiles a path well depends on where its recording
-- happens to start, and a path it gives up on is blacklisted for the life
-- of the function prototype (jit.flush() does not undo that), which would
-- leave it interpreted and allocating.  So each attempt loads a fresh copy
-- of the module.
T.parse_allocates_nothing = function()
  if not jit or not jit.status() then return end -- needs the compiler
  local path = assert(package.searchpath("ringline.resp", package.path))
  local str = PIPELINE .. "*2\r\n$3\r\nGET\r\n$3\r\nke"
  local s = mk(str)
  local function run(M, cmd, k)
    local parse = M.parse_command
    local acc = 0
    for _ = 1, k do
      local off = 0
      local n = parse(s, off, cmd)
      while n > 0 do
        if cmd.argc > 0 and cmd:arg_is(s, 1, "PING") then acc = acc + 1 end
        acc = acc + cmd.argc
        off = off + n
        n = parse(s, off, cmd)
      end
    end
    return acc
  end
  local per = run(R, R.new_command(8), 1)
  eq(per, 14, "arguments and PINGs in one pass")
  local tries = {}
  for attempt = 1, 6 do
    local M = attempt == 1 and R or assert(loadfile(path))()
    local cmd = M.new_command(8)
    jit.flush()
    run(M, cmd, 3000) -- compile the traces
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    local acc = run(M, cmd, 10000)
    local grown = collectgarbage("count") - before
    collectgarbage("restart")
    eq(acc, per * 10000, "results")
    tries[attempt] = ("%.1f KiB"):format(grown)
    if grown < 16 then return end -- a tiny constant: trace objects
  end
  error("parse_command allocates: " .. concat(tries, ", "))
end

T.selftest = function()
  eq(R.selftest(), true)
end

return T
