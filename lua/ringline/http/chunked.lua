-- ringline.http.chunked: the chunked transfer coding (RFC 9112 7.1), decoded in
-- place over received bytes: data ranges are offsets into the slice, no copy.
--
--   local d = chunked.new()                      -- d:reset() between bodies
--   local st, used = chunked.decode(s, off, d, max_body)
--     st 1: body and trailers complete, `used` bytes from off were the body
--       (later calls return 1, 0 until d:reset())
--     st 0: all bytes from off processed (used == #s - off); need more.
--       The state is kept in d: the next call takes the bytes that follow.
--     st -1: error; d.status is 400 or 413 (later calls return -1, 0);
--       `used` ends before the byte found wrong, or after the size digit
--       that took the size over a limit
--     d.n data ranges found in this call: d.off[k], d.len[k] (0-based
--     offsets from s.base), or d:data(s, k) as a slice; d.total is the
--     body length so far; max_body (default 2^53-1) bounds d.total.
--
-- Chunked framing (size lines, the CRLF after data, trailers) requires
-- CRLF: lenient line ends in chunked bodies are a known request smuggling
-- vector.  ringline.http.parser re-exports these as new_chunked and
-- decode_chunked.
local ffi = require "ffi"
local bit = require "bit"
local slice = require "ringline.slice"
local util = require "ringline.util"
local chars = require "ringline.http.chars"

local band, bor, lshift = bit.band, bit.bor, bit.lshift
local setmetatable, type, error, assert = setmetatable, type, error, assert
local check = slice.check_live
local zeros, hexv = util.zeros, util.hex_value
local cls = chars.cls
local C_TOKEN, C_VALUE, C_QTEXT, C_WS =
  chars.C_TOKEN, chars.C_VALUE, chars.C_QTEXT, chars.C_WS
local CR, LF, COLON, SEMI, EQUALS, DQUOTE, BSLASH = chars.CR, chars.LF,
  chars.COLON, chars.SEMI, chars.EQUALS, chars.DQUOTE, chars.BSLASH
local MAX_EXACT = chars.MAX_EXACT

local M = {}

-- Fixed when the module loads (changing them later has no effect):
M.MAX_CHUNK_LINE = 4096     -- chunk-size line with extensions and CRLF
M.MAX_TRAILER_BYTES = 8192  -- trailer section, final CRLF included
local MAX_CHUNK_LINE = M.MAX_CHUNK_LINE
local MAX_TRAILER_BYTES = M.MAX_TRAILER_BYTES


-- States.  Each names what the next byte may be.  The states below
-- S_SIZE_END take their bytes through LINE_NEXT (further below): the
-- framing around the data, whose common forms also have a shorter path.
--   chunk-size line = 1*HEXDIG *( BWS ";" BWS ext-name
--                     [ BWS "=" BWS ext-val ] ) CRLF
local S_AFTER_DIGITS = 1 -- after the size's digits: BWS, ';' or CR
local S_WS_SEMI = 2     -- BWS before ';'
local S_EXT_PRE = 3     -- after ';': BWS, then an extension name
local S_EXT_NAME = 4    -- name characters, BWS, '=', ';' or CR
local S_EXT_NAME_WS = 5 -- BWS after a name: '=' or ';'
local S_EXT_VAL_PRE = 6 -- after '=': BWS, then a token or a quoted string
local S_EXT_VAL = 7     -- token characters, BWS, ';' or CR
local S_EXT_QVAL = 8    -- inside a quoted string
local S_EXT_QESC = 9    -- after a backslash in a quoted string
local S_EXT_QEND = 10   -- after the closing quote: BWS, ';' or CR
local S_SIZE_LF = 11    -- LF ending a chunk-size line
--   trailer-section = *( field-line CRLF ) CRLF
local S_TRAILER = 12    -- start of a trailer line, or the final CR
local S_TR_NAME = 13    -- trailer field name, then ':'
local S_TR_VALUE = 14   -- trailer field value, then CR
local S_TR_LF = 15      -- LF ending a trailer line
local S_END_LF = 16     -- LF ending the body
--   chunk data CRLF
local S_DATA_CR = 17    -- CR after chunk data
local S_DATA_LF = 18    -- LF after chunk data
local S_SIZE_END = 19   -- a chunk-size line was read: data or trailers next
local S_DONE = 20
local S_DATA = 21       -- chunk data (d.rem bytes left)
local S_SIZE0 = 22      -- first hex digit of a chunk size
local S_SIZE = 23       -- more hex digits
local S_ERROR = 24

-- LINE_NEXT[st * 256 + c]: the state after byte c in state st, for the
-- states below S_SIZE_END; NOT_ALLOWED if c may not come there.  Every
-- byte is consumed; the bytes a state goes on over (BWS, token
-- characters, ...) lead back to it.
local NOT_ALLOWED = 0
local LINE_NEXT = ffi.new("uint8_t[?]", S_SIZE_END * 256)
do
  local function in_class(mask)
    return function(c) return band(cls[c], mask) ~= 0 end
  end
  local ws, token = in_class(C_WS), in_class(C_TOKEN)
  local value, qtext = in_class(C_VALUE), in_class(C_QTEXT)
  -- state = { bytes, next state, bytes, next state, ... }, where bytes
  -- is one byte or a class
  local rules = {
    [S_AFTER_DIGITS] = { ws, S_WS_SEMI, SEMI, S_EXT_PRE, CR, S_SIZE_LF },
    [S_WS_SEMI] = { ws, S_WS_SEMI, SEMI, S_EXT_PRE },
    [S_EXT_PRE] = { ws, S_EXT_PRE, token, S_EXT_NAME },
    [S_EXT_NAME] = { token, S_EXT_NAME, ws, S_EXT_NAME_WS,
      EQUALS, S_EXT_VAL_PRE, SEMI, S_EXT_PRE, CR, S_SIZE_LF },
    [S_EXT_NAME_WS] = { ws, S_EXT_NAME_WS, EQUALS, S_EXT_VAL_PRE,
      SEMI, S_EXT_PRE },
    [S_EXT_VAL_PRE] = { ws, S_EXT_VAL_PRE, DQUOTE, S_EXT_QVAL,
      token, S_EXT_VAL },
    [S_EXT_VAL] = { token, S_EXT_VAL, ws, S_WS_SEMI, SEMI, S_EXT_PRE,
      CR, S_SIZE_LF },
    [S_EXT_QVAL] = { qtext, S_EXT_QVAL, DQUOTE, S_EXT_QEND,
      BSLASH, S_EXT_QESC },
    [S_EXT_QESC] = { value, S_EXT_QVAL },
    [S_EXT_QEND] = { ws, S_WS_SEMI, SEMI, S_EXT_PRE, CR, S_SIZE_LF },
    [S_SIZE_LF] = { LF, S_SIZE_END },
    [S_TRAILER] = { token, S_TR_NAME, CR, S_END_LF },
    [S_TR_NAME] = { token, S_TR_NAME, COLON, S_TR_VALUE },
    [S_TR_VALUE] = { value, S_TR_VALUE, CR, S_TR_LF },
    [S_TR_LF] = { LF, S_TRAILER },
    [S_END_LF] = { LF, S_DONE },
    [S_DATA_CR] = { CR, S_DATA_LF },
    [S_DATA_LF] = { LF, S_SIZE0 },
  }
  for st = 1, S_SIZE_END - 1 do
    local r = assert(rules[st], "no rules for a LINE_NEXT state")
    for k = 1, #r, 2 do
      local bytes, nxt = r[k], r[k + 1]
      for c = 0, 255 do
        if bytes == c or (type(bytes) == "function" and bytes(c)) then
          assert(LINE_NEXT[st * 256 + c] == NOT_ALLOWED, "overlapping rules")
          LINE_NEXT[st * 256 + c] = nxt
        end
      end
    end
  end
end

local D = {}
D.__index = D

function M.new()
  local d = setmetatable({
    state = S_SIZE0,
    size = 0,     -- chunk size read so far
    rem = 0,      -- data bytes left in the current chunk
    total = 0,    -- data bytes in the body so far (all calls)
    line = 0,     -- bytes of the current chunk-size line, or of the
                  -- trailer section so far
    status = 0,
    n = 0,
    off = zeros(8),
    len = zeros(8),
  }, D)
  -- (not a tail call: the JIT cannot return from setmetatable to a lower frame)
  return d
end

-- Ready for the next body.
function D.reset(d)
  d.state, d.size, d.rem, d.total, d.line = S_SIZE0, 0, 0, 0, 0
  d.status, d.n = 0, 0
end

-- Data range k of the last call as a slice of s (the slice decoded).
function D.data(d, s, k)
  if type(k) ~= "number" or k < 1 or k > d.n or k % 1 ~= 0 then return nil end
  local o = d.off[k]
  return s:sub(o + 1, o + d.len[k])
end

function D.done(d)
  return d.state == S_DONE
end

-- CR LF at s.base[j], both before e.
local function crlf_at(s, j, e)
  return j + 1 < e and s.base[j] == CR and s.base[j + 1] == LF
end

-- The decoder is written as phases in the order they occur in a chunk
-- (data, its CRLF, the size digits, the rest of the size line; after the
-- last chunk the trailers), so that the compiled traces follow stable
-- paths.  The usual chunk (digits, CRLF, data, CRLF) and an empty trailer
-- section take no LINE_NEXT loop: an inner loop entered on every chunk
-- costs the compiled trace an exit each time.  d.state says which phase
-- to resume in.  Every byte of a size line or of the trailer section is
-- read after the same two checks (a byte available, the line or section
-- under its limit), so an error is found at the same byte however the
-- body is split.
local function decode_chunked(s, off, d, max_body)
  check(s)
  local e = s.size
  off = off or 0
  max_body = max_body or MAX_EXACT
  if off > e then error("decode_chunked: offset past the end of the bytes", 2) end
  d.n = 0
  local st = d.state
  if st == S_DONE then return 1, 0 end
  if st == S_ERROR then return -1, 0 end
  local acc, rem, total, line = d.size, d.rem, d.total, d.line
  local line_max = MAX_CHUNK_LINE
  if st >= S_TRAILER and st <= S_END_LF then line_max = MAX_TRAILER_BYTES end
  local doff, dlen, nr = d.off, d.len, 0
  local j = off
  local status = 0
  local c, v

  while true do
    if st == S_DATA then
      v = e - j
      if rem < v then v = rem end
      if v > 0 then
        nr = nr + 1
        doff[nr], dlen[nr] = j, v
        j = j + v
        rem = rem - v
      end
      if rem > 0 then goto out end
      st = S_DATA_CR
      if crlf_at(s, j, e) then -- usually there, whole
        j = j + 2
        st = S_SIZE0
      end
    end

    -- chunk-size.  The first digit is read here, not in the loop below:
    -- sizes have a few digits, and a loop that runs once or twice per
    -- chunk would get a trace of its own, cutting the decoder's trace at
    -- every chunk.  (The CRLF before the size line does not count.)
    if st == S_SIZE0 then
      if j >= e then goto out end
      v = hexv[s.base[j]]
      if v < 0 then status = 400; goto out end
      j = j + 1
      line = 1
      acc = v
      if acc > max_body - total then status = 413; goto out end
      st = S_SIZE
    end
    if st == S_SIZE then
      -- more digits, then the byte after them as LINE_NEXT takes it
      if j >= e then goto out end
      if line >= line_max then status = 400; goto out end
      c = s.base[j]
      v = hexv[c]
      while v >= 0 do
        j = j + 1
        line = line + 1
        if acc >= 562949953421312 then status = 400; goto out end -- 2^49
        acc = acc * 16 + v
        if acc > max_body - total then status = 413; goto out end
        if j >= e then goto out end
        if line >= line_max then status = 400; goto out end
        c = s.base[j]
        v = hexv[c]
      end
      st = S_AFTER_DIGITS
      -- Usually CRLF follows: taken here as LINE_NEXT would take it.
      if line + 1 < line_max and crlf_at(s, j, e) then
        j = j + 2
        line = line + 2
        st = S_SIZE_END
      end
    end

    -- A byte at a time through LINE_NEXT.  (st * 256 + c as a shift:
    -- integer arithmetic, where a product would go through doubles
    -- between one byte's state and the next.)
    while st < S_SIZE_END do
      if j >= e then goto out end
      if line >= line_max then status = 400; goto out end
      v = LINE_NEXT[bor(lshift(st, 8), s.base[j])]
      if v == NOT_ALLOWED then status = 400; goto out end
      j = j + 1
      line = line + 1
      st = v
    end
    if st == S_DONE then goto out end

    -- After a size line: the chunk's data, or after the last chunk (size
    -- 0) the trailer section, whose bytes count from here.
    if st == S_SIZE_END then
      line = 0
      if acc > 0 then
        rem = acc
        total = total + acc
        acc = 0
        st = S_DATA
      else
        line_max = MAX_TRAILER_BYTES
        st = S_TRAILER
        -- Usually there are no trailers: the final CRLF, taken here as
        -- LINE_NEXT would take it.
        if crlf_at(s, j, e) then
          j = j + 2
          line = 2
          st = S_DONE
          goto out
        end
      end
    end
  end

  ::out::
  d.n = nr
  d.size, d.rem, d.total, d.line = acc, rem, total, line
  if status ~= 0 then
    d.state, d.status = S_ERROR, status
    return -1, j - off
  end
  d.state = st
  if st == S_DONE then return 1, j - off end
  return 0, j - off
end

M.decode = decode_chunked

return M
