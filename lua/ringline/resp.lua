-- ringline.resp: Redis protocol (RESP2) requests parsed in place, and replies.
--
-- A request is either a multibulk array of bulk strings, as clients send
-- ("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), or an inline command, a line of words
-- as typed into telnet ("GET k\r\n").  Parsing copies nothing: it records
-- each argument's byte offset and length (0-based, from s.base) in a
-- reusable command object; compiled by the JIT it allocates nothing,
-- however the bytes are split.  Parsing starts over on every call: a
-- handler that gets -2 leaves the bytes unconsumed and calls again when
-- more have arrived.  A payload is skipped by its length, so a call costs
-- time in proportion to the arguments before the missing bytes, not to
-- the bytes; a caller can wait for cmd.want bytes before calling again.
--
--   local R = require "ringline.resp"
--   local cmd = R.new_command(n)   -- once per connection; room for n
--                                  -- arguments (default 16), grows as needed
--   local n = R.parse_command(s, off, cmd, limits)
--     s: a slice, or any cdata with base (const uint8_t *) and size
--     off: 0-based byte offset in s to parse from (default 0)
--     limits (optional, each field optional):
--       max_args   = 1024*1024  a larger multibulk count is an error
--       max_bulk   = 512 MiB    a longer bulk string is an error
--                               (proto-max-bulk-len)
--       max_inline = 64 KiB     an inline line must end within this
--                               (it also bounds an inline command's words)
--     n > 0  one command is the n bytes from off: cmd.argc arguments,
--            argument i at cmd.off[i] with cmd.len[i] bytes (see cmd.nesc)
--            argc is 0 when the bytes were only empty commands (see below):
--            consume them and ignore the command (cmd.want is then 0)
--     -2     incomplete: call again with more bytes.  cmd.want is a lower
--            bound on the bytes from off needed before the answer can
--            change (exact while a bulk payload is being received)
--     -1     protocol error: cmd.err is Redis's error text; reply
--            "-" .. cmd.err .. "\r\n" (R.put_error) and close
--   Accessors take the slice that was parsed; only they allocate:
--   cmd:arg(s, i)          slice over the argument (a string, see below)
--   cmd:arg_str(s, i)      Lua string copy
--   cmd:arg_is(s, i, str)  ASCII case-insensitive equality, no allocation
--   cmd:arg_int(s, i)      integer by Redis's string2ll rules, or nil: a
--                          number if |v| <= 2^53 (exact), else int64_t cdata
--   cmd:arg_len(i)         length in bytes
--   Out-of-range i gives nil (false for arg_is).  R.to_int(b, o, n) is
--   the same integer rule for the n bytes at b.base[o].
--
--   Replies go into a caller's string.buffer (nothing else is allocated);
--   each returns buf:
--   R.put_simple(buf, "OK")  R.put_error(buf, "ERR x")  (CR, LF -> spaces)
--   R.put_int(buf, n)  n: an integer-valued number in int64 range, or an
--                      int64_t/uint64_t cdata up to 2^63-1 (else an error)
--   R.put_bulk(buf, str_or_slice)  (a slice's bytes are copied)
--   R.put_bulk_header(buf, len)  "$len\r\n": the payload and its CRLF are
--                                the caller's to send
--   R.put_null(buf)  R.put_array(buf, n)  R.put_null_array(buf)
--
-- Redis's rules (networking.c, processMultibulkBuffer/processInlineBuffer,
-- string2ll, sdssplitargs), and where this parser chooses:
--   * A command starting with '*' is multibulk, anything else inline.
--   * Multibulk count and bulk lengths are string2ll integers: optional '-',
--     no '+', no leading zeros, no spaces, at most 20 characters, in int64.
--     Count not an integer or over max_args: "Protocol error: invalid
--     multibulk length".  Count <= 0 ("*0", "*-1"): an empty command.
--     An element not starting with '$': "Protocol error: expected '$', got
--     'X'" (CR or LF as X is shown as a space, as Redis's formatter does).
--     Bulk length not an integer, negative or over max_bulk: "Protocol
--     error: invalid bulk length".
--   * Stricter than Redis: Redis finds the CR that ends a count line and
--     skips the next byte, and skips the two bytes after a bulk payload,
--     without looking at them.  Here the count lines must end in CRLF
--     (otherwise the count or length is invalid, with the text above), and
--     a payload must be followed by CRLF, else "Protocol error: expected
--     CRLF after bulk data" (our text; Redis has none).  Lenient framing
--     would let a malformed request be read as a different command.
--   * Errors are reported as soon as the bytes received prove them (Redis
--     waits for the end of the line first), always with the text the
--     complete line would get.  So Redis's "too big mbulk count string"
--     and "too big bulk count string" cannot occur: any count line too long
--     to wait for is already an invalid integer.  A declared count or length
--     is only checked, never used to size anything.
--   * Inline: the line ends at LF, a CR before it is dropped.  Arguments
--     are split as sdssplitargs does (redis-cli's rules): words separated
--     by blanks; "double quotes" with \n \r \t \b \a \xHH and backslash
--     before any other byte for that byte; 'single quotes' with only \';
--     a quoted part may follow unquoted bytes in one word (a"b c" is
--     "ab c") and must be followed by a blank or the end of the line.  Bad
--     quoting: "Protocol error: unbalanced quotes in request".  A NUL byte
--     ends the arguments of its line, as it ends the C string sdssplitargs
--     reads (so a NUL inside quotes leaves them unbalanced); Redis's
--     strchr would not even find the line's LF past a NUL.  An inline
--     command's words are not counted against max_args.
--   * Inline line length: the bytes before the LF (a CR included) must be
--     at most max_inline, else "Protocol error: too big inline request"
--     once more than max_inline bytes are there.  Redis only checks while
--     the LF is missing, so it takes a longer line that arrives in one
--     read; here the outcome does not depend on how the bytes arrive.
--   * Empty commands (blank inline lines, "*0", "*-1") are skipped and
--     count towards n: the result is the next real command.  If no
--     complete command follows, the result is the skipped bytes with argc
--     0, so that the caller consumes them instead of keeping them.
--   * Arguments of an inline command that are quoted with escapes are not
--     the bytes in the buffer.  cmd.nesc counts them (0 after a multibulk
--     command); such an argument has cmd.esc[i] > 0, cmd.off[i] at the
--     start of its raw word, cmd.esc[i] the raw word's length and
--     cmd.len[i] the decoded length.  cmd:arg() returns a Lua string for
--     them (a slice for every other argument, quoted ones without escapes
--     included); the other accessors decode into a scratch buffer.  When
--     cmd.nesc is 0, cmd.esc holds stale values: check nesc first.
local ffi = require "ffi"
local slice = require "ringline.slice" -- also declares memchr
local util = require "ringline.util"

local istype, ffi_string, ffi_new = ffi.istype, ffi.string, ffi.new
local ffi_cast = ffi.cast
local C = ffi.C
local u8p = ffi.typeof("const uint8_t *")
local byte, char, find = string.byte, string.char, string.find
local error, setmetatable, type, tonumber = error, setmetatable, type, tonumber
local Slice = slice.type
local slice_epoch = slice.epoch
local check = slice.check_live
local zeros, hexv, is_space, eq_nocase =
  util.zeros, util.hex_value, util.is_space, util.eq_nocase

local M = {}

M.DEFAULT_MAX_ARGS = 1024 * 1024
M.DEFAULT_MAX_BULK = 512 * 1024 * 1024
M.DEFAULT_MAX_INLINE = 64 * 1024
M.DEFAULT_COMMAND_SIZE = 16

M.E_MBULK = "Protocol error: invalid multibulk length"
M.E_BULK = "Protocol error: invalid bulk length"
M.E_INLINE = "Protocol error: too big inline request"
M.E_QUOTES = "Protocol error: unbalanced quotes in request"
M.E_CRLF = "Protocol error: expected CRLF after bulk data"
local E_MBULK, E_BULK, E_INLINE, E_QUOTES, E_CRLF =
  M.E_MBULK, M.E_BULK, M.E_INLINE, M.E_QUOTES, M.E_CRLF

local CR, LF, SP, HT, NUL = 13, 10, 32, 9, 0
local STAR, DOLLAR, MINUS, DQUOTE, SQUOTE, BSLASH = 42, 36, 45, 34, 39, 92

local NEED, BAD = -2, -1

-- "expected '$', got 'X'" for each byte, made when first needed.
local E_DOLLAR = setmetatable({}, { __index = function(t, c)
  local x = (c == CR or c == LF) and " " or char(c)
  local msg = "Protocol error: expected '$', got '" .. x .. "'"
  t[c] = msg
  return msg
end })

---------------------------------------------------------------------------
-- helpers (no allocation)

local function fail(cmd, msg)
  cmd.err = msg
  return BAD
end

-- The 19 digits at b.base[o ..] are at most 9223372036854775807 (or, for
-- a negative number, 9223372036854775808).
local INT64_DIGITS = "9223372036854775807"
local function fits19(b, o, neg)
  for k = 0, 18 do
    local x, y = b.base[o + k], byte(INT64_DIGITS, k + 1)
    if k == 18 and neg then y = y + 1 end
    if x ~= y then return x < y end
  end
  return true
end

-- "<integer>\r\n" at s.base[p ..], the line after '*' or '$'.  Returns the
-- index after the LF and the value; or NEED, or BAD as soon as the bytes
-- there cannot start a valid line.  A value above maxv is BAD; negative
-- values only if neg_ok (then not checked against maxv).
local function read_len(s, p, e, maxv, neg_ok)
  -- Up to four digits, as most counts and lengths are, when the bytes are
  -- there: no loop, so that the compiled trace goes straight through.
  -- Anything else takes the general path below, which accepts these too.
  if p + 5 < e then
    local v = s.base[p] - 48
    if v >= 1 and v <= 9 then
      local k = p + 1
      local d = s.base[k] - 48
      if d >= 0 and d <= 9 then
        v, k = v * 10 + d, k + 1
        d = s.base[k] - 48
        if d >= 0 and d <= 9 then
          v, k = v * 10 + d, k + 1
          d = s.base[k] - 48
          if d >= 0 and d <= 9 then v, k = v * 10 + d, k + 1 end
        end
      end
      if s.base[k] == CR and s.base[k + 1] == LF and v <= maxv then
        return k + 2, v
      end
    end
  end
  if p >= e then return NEED, 0 end
  local c = s.base[p]
  local neg = false
  if c == MINUS then
    if not neg_ok then return BAD, 0 end
    neg = true
    p = p + 1
    if p >= e then return NEED, 0 end
    c = s.base[p]
  end
  local v = c - 48
  p = p + 1
  if v >= 1 and v <= 9 then
    local d0 = p - 1
    if p >= e then return NEED, 0 end
    c = s.base[p]
    local d = c - 48
    while d >= 0 and d <= 9 do
      v = v * 10 + d
      p = p + 1
      if p - d0 > 19 then return BAD, 0 end
      if v > maxv and not neg then return BAD, 0 end
      if p >= e then return NEED, 0 end
      c = s.base[p]
      d = c - 48
    end
    if p - d0 == 19 and not fits19(s, d0, neg) then return BAD, 0 end
  elseif v ~= 0 or neg then
    return BAD, 0          -- not a digit, or "-0"
  else                     -- "0": the line must end here
    if p >= e then return NEED, 0 end
    c = s.base[p]
  end
  if v > maxv and not neg then return BAD, 0 end
  if c ~= CR then return BAD, 0 end
  p = p + 1
  if p >= e then return NEED, 0 end
  if s.base[p] ~= LF then return BAD, 0 end
  if neg then v = -v end
  return p + 1, v
end

-- One word of an inline line (sdssplitargs rules), starting at p < le,
-- s.base[p] not a blank or NUL.  le is the end of the line; a NUL byte
-- ends it too.  Returns the index after the word (a separator is not
-- consumed), the decoded length and the kind: 0 plain (bytes p..end),
-- 1 quoted without escapes (the bytes between the quotes), 2 decoding
-- needed.  -1 if the quoting is bad.  With dst (a uint8_t pointer) the
-- decoded bytes are written there.
local function scan_word(s, p, le, dst)
  local t0 = p
  local n = 0
  local c = s.base[p]
  -- unquoted bytes
  while c ~= DQUOTE and c ~= SQUOTE do
    if c == SP or c == LF or c == CR or c == HT or c == NUL then
      return p, n, 0
    end
    if dst then dst[n] = c end
    n = n + 1
    p = p + 1
    if p >= le then return p, n, 0 end
    c = s.base[p]
  end
  -- then one quoted part
  local kind = p > t0 and 2 or 1
  local q = c
  p = p + 1
  while true do
    if p >= le then return -1, 0, 0 end
    c = s.base[p]
    if c == NUL then return -1, 0, 0 end
    if c == q then
      -- the closing quote: a blank or the end must follow
      p = p + 1
      if p < le then
        c = s.base[p]
        if c ~= NUL and not is_space(c) then return -1, 0, 0 end
      end
      return p, n, kind
    end
    if c == BSLASH then
      local d = p + 1 < le and s.base[p + 1] or NUL
      if q == DQUOTE then
        if d == 120 and p + 3 < le and hexv[s.base[p + 2]] >= 0
           and hexv[s.base[p + 3]] >= 0 then -- \xHH
          c = hexv[s.base[p + 2]] * 16 + hexv[s.base[p + 3]]
          p = p + 4
          kind = 2
        elseif d ~= NUL then
          if d == 110 then c = LF            -- \n
          elseif d == 114 then c = CR        -- \r
          elseif d == 116 then c = HT        -- \t
          elseif d == 98 then c = 8          -- \b
          elseif d == 97 then c = 7          -- \a
          else c = d end
          p = p + 2
          kind = 2
        else
          p = p + 1  -- a lone backslash: the quote is then unterminated
        end
      elseif d == SQUOTE then                -- \' in single quotes
        c = SQUOTE
        p = p + 2
        kind = 2
      else
        p = p + 1
      end
    else
      p = p + 1
    end
    if dst then dst[n] = c end
    n = n + 1
  end
end

---------------------------------------------------------------------------
-- command object

local Cmd = {}
Cmd.__index = Cmd

function M.new_command(n)
  n = n or M.DEFAULT_COMMAND_SIZE
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
    error("new_command: size must be a non-negative integer", 2)
  end
  local cmd = setmetatable({
    argc = 0,
    off = zeros(n), len = zeros(n), esc = zeros(n),
    nesc = 0,
    want = 0,
    err = nil,
  }, Cmd)
  -- (not a tail call: the JIT cannot return from setmetatable to a lower frame)
  return cmd
end

-- Scratch space for decoded inline arguments, grown as needed (a decoded
-- argument is never longer than its line, so at most max_inline bytes).
local scratch_size = 256
local scratch = ffi_new("uint8_t[?]", scratch_size)
local view = ffi_new("rl_slice")   -- base = scratch, for the helpers below
view.base = scratch

local function decode(cmd, s, i)
  local n = cmd.len[i]
  if n > scratch_size then
    while scratch_size < n do scratch_size = scratch_size * 2 end
    scratch = ffi_new("uint8_t[?]", scratch_size)
    view.base = scratch
  end
  local o = cmd.off[i]
  scan_word(s, o, o + cmd.esc[i], scratch)
  view.size = n
  return n
end

local function index_ok(cmd, i)
  return type(i) == "number" and i >= 1 and i <= cmd.argc and i % 1 == 0
end

local function escaped(cmd, i)
  return cmd.nesc > 0 and cmd.esc[i] > 0
end

-- Argument i decoded into a Lua string if it has escapes, else nil.
local function decoded_string(cmd, s, i)
  if not escaped(cmd, i) then return nil end
  local n = decode(cmd, s, i) -- may replace scratch: call it first
  return ffi_string(scratch, n)
end

-- A slice over argument i; for an inline argument with escapes, a string.
function Cmd.arg(cmd, s, i)
  check(s)
  if not index_ok(cmd, i) then return nil end
  local str = decoded_string(cmd, s, i)
  if str then return str end
  local bid = istype(Slice, s) and s.bid or -1
  return Slice(s.base + cmd.off[i], cmd.len[i], bid, slice_epoch())
end

function Cmd.arg_str(cmd, s, i)
  check(s)
  if not index_ok(cmd, i) then return nil end
  return decoded_string(cmd, s, i)
    or ffi_string(s.base + cmd.off[i], cmd.len[i])
end

function Cmd.arg_len(cmd, i)
  if not index_ok(cmd, i) then return nil end
  return cmd.len[i]
end

-- Argument i equals str, ignoring ASCII case (command names).
function Cmd.arg_is(cmd, s, i, str)
  check(s)
  if not index_ok(cmd, i) then return false end
  local n = #str
  if cmd.len[i] ~= n then return false end
  if escaped(cmd, i) then
    decode(cmd, s, i)
    return eq_nocase(view, 0, str, n)
  end
  return eq_nocase(s, cmd.off[i], str, n)
end

local EXACT = 9007199254740992 -- 2^53

-- string2ll: optional '-', then "0" alone or a digit 1-9 and digits; at
-- most 20 characters; within int64.  A number if |v| <= 2^53 (exact),
-- else an int64_t cdata.  nil if not such an integer.
local function to_int(b, o, n)
  if n == 0 or n >= 21 then return nil end
  local p, e = o, o + n
  local neg = false
  local c = b.base[p]
  if c == MINUS then
    neg = true
    p = p + 1
    if p >= e then return nil end
    c = b.base[p]
  end
  if c < 49 or c > 57 then
    if c == 48 and n == 1 then return 0 end
    return nil
  end
  local nd = e - p
  if nd > 19 then return nil end
  local v = 0
  for k = p, e - 1 do
    local d = b.base[k] - 48
    if d < 0 or d > 9 then return nil end
    v = v * 10 + d
  end
  if nd < 16 then -- below 10^15: the double is exact
    if neg then return -v end
    return v
  end
  if nd == 19 and not fits19(b, p, neg) then return nil end
  local x = 0LL -- exact, accumulated negative to reach INT64_MIN
  for k = p, e - 1 do x = x * 10 - (b.base[k] - 48) end
  if not neg then x = -x end
  if x >= -EXACT and x <= EXACT then return tonumber(x) end
  return x
end
M.to_int = to_int -- (b, o, n): b any cdata/table with .base

function Cmd.arg_int(cmd, s, i)
  check(s)
  if not index_ok(cmd, i) then return nil end
  if escaped(cmd, i) then
    return to_int(view, 0, decode(cmd, s, i))
  end
  return to_int(s, cmd.off[i], cmd.len[i])
end

---------------------------------------------------------------------------
-- parser

-- One bulk string at s.base[p]: "$<len>\r\n<payload>\r\n".  Returns the
-- index after it, the payload's offset and length; or NEED and the index
-- the bytes must reach; or BAD and what is wrong (B_DOLLAR and the byte,
-- B_LENGTH, B_CRLF).
local B_DOLLAR, B_LENGTH, B_CRLF = 1, 2, 3

local function bulk(s, p, e, max_bulk)
  if p >= e then return NEED, e + 1, 0 end
  local c = s.base[p]
  if c ~= DOLLAR then return BAD, B_DOLLAR, c end
  local q, l = read_len(s, p + 1, e, max_bulk, false)
  if q < 0 then
    if q == BAD then return BAD, B_LENGTH, 0 end
    return NEED, e + 1, 0
  end
  local z = q + l   -- the CRLF after the payload
  if z + 2 > e then
    if z < e and s.base[z] ~= CR then return BAD, B_CRLF, 0 end
    return NEED, z + 2, 0
  end
  if s.base[z] ~= CR or s.base[z + 1] ~= LF then return BAD, B_CRLF, 0 end
  return z + 2, q, l
end

local function bulk_fail(cmd, r, a, b)
  if r == NEED then
    cmd.want = a
    return NEED
  end
  if a == B_DOLLAR then return fail(cmd, E_DOLLAR[b]) end
  if a == B_LENGTH then return fail(cmd, E_BULK) end
  return fail(cmd, E_CRLF)
end

-- A multibulk command at s.base[i] ('*').  Returns the bytes it takes,
-- NEED (cmd.want set to the absolute end needed) or BAD.
--
-- The first four arguments are read without a loop.  A loop that usually
-- runs once or twice is bad for the JIT: it starts recording at the loop,
-- the loop ends before the trace can close, and after a few such attempts
-- the loop is blacklisted and runs interpreted (and allocating) for good.
local function multibulk(s, i, e, cmd, max_args, max_bulk)
  local p, n = read_len(s, i + 1, e, max_args, true)
  if p < 0 then
    if p == BAD then return fail(cmd, E_MBULK) end
    cmd.want = e + 1
    return NEED
  end
  if n <= 0 then
    cmd.argc = 0
    return p - i
  end
  local off, len = cmd.off, cmd.len
  local q, l
  p, q, l = bulk(s, p, e, max_bulk)
  if p < 0 then return bulk_fail(cmd, p, q, l) end
  off[1], len[1] = q, l
  if n > 1 then
    p, q, l = bulk(s, p, e, max_bulk)
    if p < 0 then return bulk_fail(cmd, p, q, l) end
    off[2], len[2] = q, l
    if n > 2 then
      p, q, l = bulk(s, p, e, max_bulk)
      if p < 0 then return bulk_fail(cmd, p, q, l) end
      off[3], len[3] = q, l
      if n > 3 then
        p, q, l = bulk(s, p, e, max_bulk)
        if p < 0 then return bulk_fail(cmd, p, q, l) end
        off[4], len[4] = q, l
        for argc = 5, n do
          p, q, l = bulk(s, p, e, max_bulk)
          if p < 0 then return bulk_fail(cmd, p, q, l) end
          off[argc], len[argc] = q, l
        end
      end
    end
  end
  cmd.argc = n
  cmd.nesc = 0
  return p - i
end

-- An inline command at s.base[i].  Returns the bytes it takes (its line
-- and LF; cmd.argc may be 0), NEED or BAD.
local function inline(s, i, e, cmd, max_inline)
  local lim = i + max_inline + 1
  if lim > e then lim = e end
  -- memchr, not a byte loop: a loop over a whole line would be unrolled
  -- into the caller's trace until the JIT gives up on it.
  local k = -1
  if lim > i then
    local q = C.memchr(s.base + i, LF, lim - i)
    if q ~= nil then k = tonumber(ffi_cast(u8p, q) - s.base) end
  end
  if k < 0 then
    if e - i > max_inline then return fail(cmd, E_INLINE) end
    cmd.want = e + 1
    return NEED
  end
  local le = k
  if le > i and s.base[le - 1] == CR then le = le - 1 end

  local off, len, esc = cmd.off, cmd.len, cmd.esc
  local argc, nesc = 0, 0
  local p = i
  while p < le do
    local c = s.base[p]
    if c == NUL then break end
    if is_space(c) then
      p = p + 1
    else
      local q, n, kind = scan_word(s, p, le, nil)
      if q < 0 then return fail(cmd, E_QUOTES) end
      argc = argc + 1
      if kind == 0 then
        off[argc], len[argc], esc[argc] = p, n, 0
      elseif kind == 1 then
        off[argc], len[argc], esc[argc] = p + 1, n, 0
      else
        off[argc], len[argc], esc[argc] = p, n, q - p
        nesc = nesc + 1
      end
      p = q
    end
  end
  cmd.argc = argc
  cmd.nesc = nesc
  return k + 1 - i
end

-- One command at s.base[i]: its length, NEED or BAD.
local function dispatch(s, i, e, cmd, max_args, max_bulk, max_inline)
  if s.base[i] == STAR then
    return multibulk(s, i, e, cmd, max_args, max_bulk)
  end
  return inline(s, i, e, cmd, max_inline)
end

-- After an empty command from off to i: skip any more, then the next.
local function after_empty(s, off, i, e, cmd, max_args, max_bulk, max_inline)
  while i < e do
    local r = dispatch(s, i, e, cmd, max_args, max_bulk, max_inline)
    if r < 0 then
      cmd.argc, cmd.nesc, cmd.want = 0, 0, 0
      if r == BAD then return BAD end
      break   -- incomplete: consume the empty commands
    end
    i = i + r
    if cmd.argc > 0 then return i - off end
  end
  return i - off
end

local function parse_command(s, off, cmd, limits)
  check(s)
  local e = s.size
  off = off or 0
  if off > e or off < 0 then
    error("parse_command: offset outside the bytes", 2)
  end
  local max_args, max_bulk, max_inline =
    M.DEFAULT_MAX_ARGS, M.DEFAULT_MAX_BULK, M.DEFAULT_MAX_INLINE
  if limits then
    max_args = limits.max_args or max_args
    max_bulk = limits.max_bulk or max_bulk
    max_inline = limits.max_inline or max_inline
  end
  cmd.argc, cmd.nesc, cmd.want = 0, 0, 0
  if off >= e then
    cmd.want = 1
    return NEED
  end
  -- No loop on the usual path: one command, not empty.
  local r = dispatch(s, off, e, cmd, max_args, max_bulk, max_inline)
  if r < 0 then
    cmd.argc, cmd.nesc = 0, 0
    if r == NEED then cmd.want = cmd.want - off end
    return r
  end
  if cmd.argc > 0 then return r end
  return after_empty(s, off, off + r, e, cmd, max_args, max_bulk, max_inline)
end

M.parse_command = parse_command

---------------------------------------------------------------------------
-- replies

-- Simple strings and errors cannot hold CR or LF: they become spaces.
local function line_text(str)
  -- (plain finds: the JIT compiles them, not a pattern find)
  if find(str, "\r", 1, true) or find(str, "\n", 1, true) then
    str = str:gsub("[\r\n]", " ")
  end
  return str
end

function M.put_simple(buf, str)
  buf:put("+", line_text(str), "\r\n")
  return buf
end

function M.put_error(buf, str)
  buf:put("-", line_text(str), "\r\n")
  return buf
end

local int64_t, uint64_t = ffi.typeof("int64_t"), ffi.typeof("uint64_t")
local TWO63 = 9223372036854775808 -- 2^63

-- An integer in decimal: a number with an integer value in int64 range,
-- or an int64_t / uint64_t (up to 2^63-1) cdata.
local function check_int(n)
  if type(n) == "number" then
    if n % 1 == 0 and n >= -TWO63 and n < TWO63 then return n end
  elseif istype(int64_t, n) then
    return n
  elseif istype(uint64_t, n) then
    if n < 9223372036854775808ULL then return n end
  end
  error("not an integer in int64 range: " .. tostring(n), 3)
end

-- A reply that is one line: a type byte and an integer (":5", "$5", "*5").
local function integer_reply(type_byte)
  local format = type_byte .. "%d\r\n"
  return function(buf, n)
    buf:putf(format, check_int(n))
    return buf
  end
end

-- A reply that is always the same line.
local function fixed_reply(line)
  return function(buf)
    buf:put(line)
    return buf
  end
end

M.put_int = integer_reply(":")
M.put_bulk_header = integer_reply("$")
M.put_array = integer_reply("*")
M.put_null = fixed_reply("$-1\r\n")
M.put_null_array = fixed_reply("*-1\r\n")

function M.put_bulk(buf, v)
  if type(v) == "string" then
    buf:putf("$%d\r\n", #v)
    buf:put(v, "\r\n")
  elseif istype(Slice, v) then
    check(v)
    local n = v.size
    buf:putf("$%d\r\n", n)
    buf:putcdata(v.base, n)
    buf:put("\r\n")
  else
    error("put_bulk: expected a string or a slice, got " .. type(v), 2)
  end
  return buf
end

---------------------------------------------------------------------------

function M.selftest()
  local mk = slice.scratch(256)
  local cmd = M.new_command(4)
  local raw = "*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\nset k 'v w' \"x\\ty\"\nNEXT"
  local s = mk(raw)
  local n = parse_command(s, 0, cmd)
  assert(n == 23 and cmd.argc == 2 and cmd:arg_is(s, 1, "get"))
  assert(cmd:arg(s, 2):eq("a\r\nb") and cmd:arg_len(2) == 4)
  local n2 = parse_command(s, n, cmd)
  assert(n2 == 19 and cmd.argc == 4 and cmd:arg_str(s, 3) == "v w")
  assert(cmd:arg(s, 4) == "x\ty" and cmd.nesc == 1)
  assert(parse_command(s, n + n2, cmd) == -2)
  assert(parse_command(mk("*1\r\n$3\r\nab"), 0, cmd) == -2 and cmd.want == 13)
  assert(parse_command(mk("*1\r\n:3\r\n"), 0, cmd) == -1)
  assert(cmd.err == "Protocol error: expected '$', got ':'")
  assert(parse_command(mk("*1\r\n$-1\r\n"), 0, cmd) == -1 and cmd.err == E_BULK)
  assert(parse_command(mk("get \"a\n"), 0, cmd) == -1 and cmd.err == E_QUOTES)
  s = mk("INCR -9223372036854775808 9007199254740993 01\n")
  assert(parse_command(s, 0, cmd) == #s)
  assert(cmd:arg_int(s, 2) == -9223372036854775807LL - 1)
  assert(cmd:arg_int(s, 3) == 9007199254740993LL and cmd:arg_int(s, 4) == nil)
  local b = require("string.buffer").new()
  M.put_int(b, -5); M.put_bulk(b, "hi"); M.put_null(b); M.put_array(b, 2)
  assert(b:tostring() == ":-5\r\n$2\r\nhi\r\n$-1\r\n*2\r\n")
  return true
end

return M
