-- ringline.memcache: the memcached text protocol (as memcached 1.6 speaks
-- it), parsed in place over received bytes.
--
-- Nothing is copied while parsing: the parser reads the bytes through the
-- slice's base pointer and records 0-based offsets in a reusable request
-- object.  Parsing starts over on every call; a caller that gets -2 leaves
-- the bytes unconsumed and calls again when more have arrived.
--
--   local mc = require "ringline.memcache"
--   local req = mc.new_request{ item_max = 1048576 }  -- once per worker
--   local n = mc.parse(s, req, off)
--     s: a slice, or any cdata with base (const uint8_t *) and size
--     off: 0-based byte offset in s to parse from (default 0)
--     n > 0  one command was taken: the n bytes from off are its line and,
--            for a storage command whose block was read, its data block.
--            req.op says which command (mc.GET ... mc.SHUTDOWN, or mc.ERROR
--            for an unknown one); req.err, when set, is the whole error
--            reply ("CLIENT_ERROR ...\r\n"), to send unless req.noreply.
--            req.swallow > 0: that many bytes after the n are a data block
--            to discard (a value over the size limit), whether or not they
--            have arrived yet.
--     -2     incomplete: call again with more bytes
--     -1     close the connection without a reply (a line longer than
--            mc.LINE_MAX without a newline that is not a get/gets line, or
--            a get line longer than req.max_get_line)
--
-- After n > 0 (fields are not meaningful after -1 or -2):
--   req.op, req.err, req.noreply, req.swallow
--   req.nt                 tokens on the line, the command included
--   req.ts[i], req.te[i]   token i (0 = the command): start and end
--                          (exclusive) offsets from s.base; tokens after
--                          the 24th are only counted, except for the keys
--                          of the get family, which are all recorded
--   req.key                index of the (first) key token: 1, or 2 for gat
--   req.flags              client flags (0 .. 2^32-1)
--   req.exptime            storage, touch, gat: exptime as memcached reads
--                          it (a 32-bit signed number); flush_all: delay
--   req.vlen, req.data_off storage: the block's length and 0-based offset
--   req.u64[0]             cas: the cas unique; incr/decr: the delta
--   req.level              verbosity level
--   req:key_string(s, i)   token i as a Lua string (allocates; for tests)
--
-- What memcached 1.6 does, and so this parser does too:
--   * Lines end at LF; one CR before it is dropped.  A NUL byte ends the
--     line early (memcached works on C strings).  Only the space separates
--     tokens: a tab or a control byte is part of a key.
--   * Keys are at most 250 bytes ("CLIENT_ERROR bad command line format").
--     A get with an over-long key gets only that error, no values.
--   * The wrong number of tokens, an unknown command, or a command name
--     shorter than 2 bytes: "ERROR".  Meta commands (mg, ms, ...) are not
--     supported here: "ERROR".
--   * "noreply" is the last token of the line, for the storage commands,
--     delete, incr, decr, touch, flush_all and verbosity; it hides error
--     replies too (memcached's out_string), except "ERROR".
--   * Numbers follow strtol/strtoul on a 64-bit long, as memcached's
--     safe_strtol/safe_strtoul/safe_strtoull do: leading C whitespace, a
--     sign, decimal digits, then whitespace or the end of the token; flags,
--     exptime and the block length are then cut to 32 bits (flags
--     4294967296 is 0); a '-' on an unsigned number is refused unless the
--     result stays below 2^63 ("-0" is 0).
--   * A storage line with a bad key or number is answered and its data
--     block is NOT consumed: it is read as the next command line (memcached
--     does the same, usually answering "ERROR" to it).
--   * A block not followed by CRLF: "CLIENT_ERROR bad data chunk"; its
--     bytes + 2 are consumed and parsing goes on after them.
--   * A value too big for an item (item_max, memcached's -I, counting
--     memcached's per-item overhead: 56 bytes + key + 1 + 2, + 4 when flags
--     are not 0): "SERVER_ERROR object too large for cache", and the
--     declared block + 2 bytes are swallowed.
--
-- Also here: mc.expire_at(exptime, now_ms) (memcached's exptime rules to an
-- absolute unix-ms expiry), mc.value_u64 (incr/decr's reading of a stored
-- value), and the process-wide counters behind `stats` (mc.counters,
-- mc.row, mc.total, mc.reset: one row of doubles per worker).
--
-- Written for the LuaJIT compiler: bytes are read as s.base[i] (a pointer
-- kept in a local is boxed when it crosses traces), the line is tokenized
-- in one loop, and numbers are read by strtoll without a Lua loop: a
-- function with inner loops that the JIT gives up on runs interpreted, and
-- interpreted FFI code allocates.  Compiled, parsing allocates nothing
-- (numbers over 15 bytes or starting with whitespace take a Lua path that
-- may).
local ffi = require "ffi"
require "ringline.slice"     -- declares memchr / memcmp

local C = ffi.C
local ffi_string, ffi_cast = ffi.string, ffi.cast
local error, setmetatable, tonumber, type = error, setmetatable, tonumber,
  type
local u8p = ffi.typeof("const uint8_t *")
local uint64 = ffi.typeof("uint64_t")
local slice = require "ringline.slice"
local util = require "ringline.util"
local check = slice.check_live
local is_space = util.is_space

local M = {}

-- Commands (req.op).
M.ERROR, M.GET, M.GETS, M.GAT, M.GATS = 0, 1, 2, 3, 4
M.SET, M.ADD, M.REPLACE, M.APPEND, M.PREPEND, M.CAS = 5, 6, 7, 8, 9, 10
M.DELETE, M.INCR, M.DECR, M.TOUCH = 11, 12, 13, 14
M.FLUSH_ALL, M.VERSION, M.VERBOSITY, M.STATS, M.QUIT, M.SHUTDOWN =
  15, 16, 17, 18, 19, 20

local ERROR, GET, GETS, GAT, GATS = M.ERROR, M.GET, M.GETS, M.GAT, M.GATS
local SET, ADD, REPLACE, APPEND, PREPEND, CAS =
  M.SET, M.ADD, M.REPLACE, M.APPEND, M.PREPEND, M.CAS
local DELETE, INCR, DECR, TOUCH = M.DELETE, M.INCR, M.DECR, M.TOUCH
local FLUSH_ALL, VERSION, VERBOSITY, STATS, QUIT, SHUTDOWN =
  M.FLUSH_ALL, M.VERSION, M.VERBOSITY, M.STATS, M.QUIT, M.SHUTDOWN

M.KEY_MAX = 250            -- bytes in a key
M.LINE_MAX = 2048          -- bytes without a newline before we give up
M.MAX_TOKENS = 24          -- tokens recorded (memcached's MAX_TOKENS)
M.DEFAULT_ITEM_MAX = 1048576
M.DEFAULT_MAX_GET_LINE = 1048576
M.ITEM_OVERHEAD = 56       -- memcached's item header + cas, 64-bit build
M.MAXDELTA = 2592000       -- exptimes up to 30 days are relative

-- Replies the parser hands out (whole lines, CRLF included).
M.R_ERROR = "ERROR\r\n"
M.R_FORMAT = "CLIENT_ERROR bad command line format\r\n"
M.R_DELETE_USAGE =
  "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
M.R_EXPTIME = "CLIENT_ERROR invalid exptime argument\r\n"
M.R_DELTA = "CLIENT_ERROR invalid numeric delta argument\r\n"
M.R_CHUNK = "CLIENT_ERROR bad data chunk\r\n"
M.R_TOO_LARGE = "SERVER_ERROR object too large for cache\r\n"
M.R_SHUTDOWN = "ERROR: shutdown not enabled\r\n"

local R_ERROR, R_FORMAT, R_DELETE_USAGE = M.R_ERROR, M.R_FORMAT,
  M.R_DELETE_USAGE
local R_EXPTIME, R_DELTA, R_CHUNK, R_TOO_LARGE, R_SHUTDOWN =
  M.R_EXPTIME, M.R_DELTA, M.R_CHUNK, M.R_TOO_LARGE, M.R_SHUTDOWN

local KEY_MAX, LINE_MAX, MAX_TOKENS = M.KEY_MAX, M.LINE_MAX, M.MAX_TOKENS
local ITEM_OVERHEAD = M.ITEM_OVERHEAD
local SP, CR, LF, NUL = 32, 13, 10, 0

---------------------------------------------------------------------------
-- command names

-- Command name -> op, found by length and the first bytes packed into a
-- number (no string made); names longer than 4 bytes are confirmed with
-- memcmp.
local NAMES = {
  get = GET, gets = GETS, gat = GAT, gats = GATS, bget = GET,
  set = SET, add = ADD, replace = REPLACE, append = APPEND,
  prepend = PREPEND, cas = CAS, delete = DELETE, incr = INCR, decr = DECR,
  touch = TOUCH, flush_all = FLUSH_ALL, version = VERSION,
  verbosity = VERBOSITY, stats = STATS, quit = QUIT, shutdown = SHUTDOWN,
}

local function pack4(b0, b1, b2, b3)
  return ((b0 * 256 + b1) * 256 + b2) * 256 + b3
end

local BY_LEN = {}    -- len -> { [packed first 4 bytes] = { op, name } }
for name, op in pairs(NAMES) do
  local n = #name
  local t = BY_LEN[n] or {}
  BY_LEN[n] = t
  local b = { name:byte(1, 4) }
  local k = pack4(b[1] or 0, b[2] or 0, b[3] or 0, b[4] or 0)
  assert(not t[k], "command name clash: " .. name)
  t[k] = { op, name }
end

-- The op of the command token base[st .. en), or ERROR.
local function command(s, st, en)
  local n = en - st
  local t = BY_LEN[n]
  if not t then return ERROR end
  local b = s.base
  local k
  if n >= 4 then
    k = pack4(b[st], b[st + 1], b[st + 2], b[st + 3])
  else
    k = pack4(b[st], b[st + 1], n > 2 and b[st + 2] or 0, 0)
  end
  local e = t[k]
  if not e then return ERROR end
  if n > 4 and C.memcmp(b + st, e[2], n) ~= 0 then return ERROR end
  return e[1]
end

---------------------------------------------------------------------------
-- numbers, as memcached's safe_strto* read them

local U64_MAX = 18446744073709551615ULL
local I64_MIN_MAG = 9223372036854775808ULL   -- 2^63
local I64_MAX = 9223372036854775807ULL

-- strtoull-style scan of o.base[s .. e) (o: a slice): leading C
-- whitespace, an optional sign, decimal digits; the byte after the digits
-- must be whitespace or the end (what follows the whitespace is ignored).
-- Returns neg, mag with mag a number when it has at most 15 significant
-- digits (exact), else neg, nil, mag64 (a uint64_t); nil when there are no
-- digits, the digits are followed by something else, or the magnitude is
-- over 2^64 - 1 (strtoull's ERANGE).
local function scan(o, s, e)
  local i = s
  while i < e and is_space(o.base[i]) do i = i + 1 end
  local neg = false
  if i < e then
    local c = o.base[i]
    if c == 45 then
      neg = true
      i = i + 1
    elseif c == 43 then
      i = i + 1
    end
  end
  local d0 = i
  while i < e and o.base[i] == 48 do i = i + 1 end
  local z = i
  local v = 0
  while i < e do
    local d = o.base[i] - 48
    if d < 0 or d > 9 then break end
    v = v * 10 + d
    i = i + 1
  end
  if i == d0 then return nil end
  if i < e and not is_space(o.base[i]) then return nil end
  if i - z <= 15 then return neg, v end
  if i - z > 20 then return nil end
  local u = uint64(0)
  for j = z, i - 1 do
    local d = o.base[j] - 48
    if u > (U64_MAX - d) / 10 then return nil end
    u = u * 10 + d
  end
  return neg, nil, u
end
M.scan = scan

-- The common case without a Lua loop (a function with loops that the JIT
-- blacklists runs interpreted, and then allocates): a token of at most 15
-- bytes that starts with a digit or a sign, read by strtoll.  Returns the
-- value (a number, exact), nil when malformed, or false when scan must
-- decide (leading whitespace, long tokens).
pcall(ffi.cdef, [[
long long ringline_memcache_strtoll(const uint8_t *s, uint8_t **end, int base)
  __asm__("strtoll");
]])
local endp = ffi.new("uint8_t *[1]")

local function quick(o, s, e)
  if e - s > 15 then return false end
  local c = o.base[s]
  if c ~= 45 and c ~= 43 and (c < 48 or c > 57) then
    if is_space(c) then return false end
    return nil
  end
  local v = tonumber(C.ringline_memcache_strtoll(o.base + s, endp, 10))
  local stop = tonumber(endp[0] - o.base)
  -- (The byte at e is never a digit: a space, CR, LF or NUL.)
  if stop == s or (stop < e and not is_space(o.base[stop])) then return nil end
  return v
end

-- safe_strtol: a long (64-bit; out of range fails), then cut to int32.
local function to_i32(o, s, e)
  local v = quick(o, s, e)
  if v == false then
    local neg, u
    neg, v, u = scan(o, s, e)
    if neg == nil then return nil end
    if v then
      if neg then v = -v end
    else
      if u > (neg and I64_MIN_MAG or I64_MAX) then return nil end
      v = tonumber(u % 4294967296ULL)
      if neg then v = -v end
    end
  elseif v == nil then
    return nil
  end
  v = v % 4294967296
  if v >= 2147483648 then v = v - 4294967296 end
  return v
end

-- safe_strtoul: an unsigned long (64-bit), then cut to uint32.  A '-' is
-- refused unless the result stays below 2^63 ("-0" is 0).
local function to_u32(o, s, e)
  local v = quick(o, s, e)
  if v ~= false then
    if v == nil or v < 0 then return nil end
    return v % 4294967296
  end
  local neg, u
  neg, v, u = scan(o, s, e)
  if neg == nil then return nil end
  if v then
    if neg and v ~= 0 then return nil end  -- 2^64 - v >= 2^63: refused
    return v % 4294967296
  end
  if neg then
    if u <= I64_MIN_MAG then return nil end
    u = 0ULL - u
  end
  return tonumber(u % 4294967296ULL)
end

-- safe_strtoull into out[0]; false when malformed.
local function to_u64(o, s, e, out)
  local v = quick(o, s, e)
  if v ~= false then
    if v == nil or v < 0 then return false end
    out[0] = v
    return true
  end
  local neg, u
  neg, v, u = scan(o, s, e)
  if neg == nil then return false end
  if v then
    if neg and v ~= 0 then return false end
    out[0] = v
    return true
  end
  if neg then
    if u <= I64_MIN_MAG then return false end
    u = 0ULL - u
  end
  out[0] = u
  return true
end

M.to_i32, M.to_u32, M.to_u64 = to_i32, to_u32, to_u64

---------------------------------------------------------------------------
-- request object

local Req = {}
Req.__index = Req

-- opts: item_max (bytes an item may take, memcached's -I; default 1 MiB),
-- max_get_line (bytes a get line may take before the connection is
-- closed; default 1 MiB).
function M.new_request(opts)
  opts = opts or {}
  local item_max = opts.item_max or M.DEFAULT_ITEM_MAX
  local max_get_line = opts.max_get_line or M.DEFAULT_MAX_GET_LINE
  if type(item_max) ~= "number" or item_max < 1 then
    error("new_request: item_max must be a positive number", 2)
  end
  local ts, te = {}, {}
  for i = 0, MAX_TOKENS do ts[i], te[i] = 0, 0 end
  return setmetatable({
    op = ERROR, err = nil, noreply = false, swallow = 0,
    nt = 0, ts = ts, te = te, key = 1,
    flags = 0, exptime = 0, vlen = 0, data_off = 0, level = 0,
    u64 = ffi.new("uint64_t[1]"),
    item_max = item_max, max_get_line = max_get_line,
  }, Req)
end

-- Token i of the parsed line as a Lua string.
function Req.key_string(req, s, i)
  check(s)
  return ffi_string(s.base + req.ts[i], req.te[i] - req.ts[i])
end

-- Is token i the word "noreply"?
local function is_noreply(s, req, i)
  local st = req.ts[i]
  if req.te[i] - st ~= 7 then return false end
  return C.memcmp(s.base + st, "noreply", 7) == 0
end

-- A command of n tokens, or of n + 1 whose last may be "noreply"
-- (memcached ignores any other word there): sets req.noreply.  Any other
-- count is an ERROR: req.err is set and the result is false.
local function token_count_ok(s, req, nt, n)
  if nt ~= n and nt ~= n + 1 then
    req.err = R_ERROR
    return false
  end
  req.noreply = is_noreply(s, req, nt - 1)
  return true
end

-- Token i as an exptime into req.exptime; if it is not a number, the
-- exptime error in req.err instead and the result is false.
local function read_exptime(s, req, i)
  local exptime = to_i32(s, req.ts[i], req.te[i])
  if not exptime then
    req.err = R_EXPTIME
    return false
  end
  req.exptime = exptime
  return true
end

-- memcached's item_size_ok: does a value of vlen bytes under a key of klen
-- bytes (with flags) fit an item?
local function too_large(req, klen, vlen, flags)
  return vlen + 2 + klen + 1 + ITEM_OVERHEAD + (flags ~= 0 and 4 or 0)
    > req.item_max
end
M.too_large = too_large

---------------------------------------------------------------------------
-- the parser

-- Is there a get/gets line at off (after at most 100 spaces)?  memcached
-- lets only those grow past LINE_MAX bytes without a newline.
local function long_get_ok(s, off, size)
  local j = off
  while j < size and s.base[j] == SP do j = j + 1 end
  if j - off > 100 or j + 4 > size then return false end
  local b = s.base
  if b[j] ~= 103 or b[j + 1] ~= 101 or b[j + 2] ~= 116 then return false end
  if b[j + 3] == SP then return true end
  return j + 5 <= size and b[j + 3] == 115 and b[j + 4] == SP
end

-- Storage commands: set/add/replace/append/prepend (5 or 6 tokens), cas (6
-- or 7).  line: bytes of the line with its LF; off: where it starts.
local function storage(s, req, op, nt, off, line, size)
  local is_cas = op == CAS
  if not token_count_ok(s, req, nt, is_cas and 6 or 5) then return line end
  local ts, te = req.ts, req.te
  local klen = te[1] - ts[1]
  if klen > KEY_MAX then
    req.err = R_FORMAT
    return line
  end
  local flags = to_u32(s, ts[2], te[2])
  local exptime = to_i32(s, ts[3], te[3])
  local vlen = to_i32(s, ts[4], te[4])
  if not (flags and exptime and vlen) then
    req.err = R_FORMAT
    return line
  end
  if is_cas and not to_u64(s, ts[5], te[5], req.u64) then
    req.err = R_FORMAT
    return line
  end
  if vlen < 0 or vlen > 2147483645 then
    req.err = R_FORMAT
    return line
  end
  req.flags, req.exptime, req.vlen = flags, exptime, vlen
  if too_large(req, klen, vlen, flags) then
    req.err = R_TOO_LARGE
    req.swallow = vlen + 2
    return line
  end
  local d = off + line
  if size - d < vlen + 2 then return -2 end
  req.data_off = d
  if s.base[d + vlen] ~= CR or s.base[d + vlen + 1] ~= LF then
    req.err = R_CHUNK
  end
  return line + vlen + 2
end

-- Token nt of the line, s.base[st .. i), has ended: the first is the
-- command, looked up now (op, and getlike for the get family); for the
-- others the longest from index 1 and from index 2 are kept (max1,
-- max2).  Its bounds go into ts, te (all of them for the get family, 25
-- otherwise).  Returns nt + 1 and op, getlike, max1, max2.  (A function,
-- not a second loop test: the tokenizer calls it in its loop and once
-- for a token that runs to the end of the line.)
local function token_ended(s, ts, te, st, i, nt, op, getlike, max1, max2)
  if nt == 0 then
    if i - st >= 2 then
      op = command(s, st, i)
      getlike = op >= GET and op <= GATS
    end
  else
    local n = i - st
    if n > max1 then max1 = n end
    if nt >= 2 and n > max2 then max2 = n end
  end
  if nt <= MAX_TOKENS or getlike then ts[nt], te[nt] = st, i end
  return nt + 1, op, getlike, max1, max2
end

local function parse(s, req, off)
  check(s)
  off = off or 0
  local size = s.size
  local avail = size - off
  if avail < 0 then error("parse: offset past the end of the bytes", 2) end
  if avail == 0 then return -2 end
  local nl
  do  -- (scoped: a pointer live across the loops below would be boxed)
    local p = C.memchr(s.base + off, LF, avail)
    if p == nil then
      if avail > LINE_MAX then
        if not long_get_ok(s, off, size) then return -1 end
        if avail > req.max_get_line then return -1 end
      end
      return -2
    end
    nl = tonumber(ffi_cast(u8p, p) - s.base)
  end
  local line = nl + 1 - off
  local le = nl
  if nl - off > 1 and s.base[nl - 1] == CR then le = nl - 1 end

  req.err, req.noreply, req.swallow = nil, false, 0
  req.key = 1

  -- Tokens, in one pass (one loop: short inner loops per token cost the
  -- JIT side traces and exits).  Only the space separates; a NUL ends the
  -- line, as in memcached's C strings.  The command is looked up when its
  -- token ends: the get family records all its keys, others 25 tokens.
  local ts, te = req.ts, req.te
  local nt, st, op, getlike = 0, -1, ERROR, false
  local max1, max2 = 0, 0     -- longest token from index 1, from index 2
  local i = off
  while i < le do
    local c = s.base[i]
    if c == SP or c == NUL then
      if st >= 0 then
        nt, op, getlike, max1, max2 =
          token_ended(s, ts, te, st, i, nt, op, getlike, max1, max2)
        st = -1
      end
      if c == NUL then break end
    elseif st < 0 then
      st = i
    end
    i = i + 1
  end
  if st >= 0 then   -- the last token ends the line
    nt, op, getlike, max1, max2 =
      token_ended(s, ts, te, st, i, nt, op, getlike, max1, max2)
  end
  req.op, req.nt = op, nt
  if nt == 0 or te[0] - ts[0] < 2 then
    req.err = R_ERROR
    return line
  end

  if getlike then
    if nt < 2 then
      req.err = R_ERROR
      return line
    end
    if op == GAT or op == GATS then
      if not read_exptime(s, req, 1) then return line end
      req.key = 2
      if max2 > KEY_MAX then req.err = R_FORMAT end
    elseif max1 > KEY_MAX then
      req.err = R_FORMAT
    end
    return line
  end

  if op >= SET and op <= CAS then
    return storage(s, req, op, nt, off, line, size)
  end

  if op == DELETE then
    if nt < 2 or nt > 4 then
      req.err = R_ERROR
      return line
    end
    if nt > 2 then
      local hold0 = te[2] - ts[2] == 1 and s.base[ts[2]] == 48
      local nr = is_noreply(s, req, nt - 1)
      req.noreply = nr
      if not ((nt == 3 and (hold0 or nr)) or (nt == 4 and hold0 and nr)) then
        req.err = R_DELETE_USAGE
        return line
      end
    end
    if te[1] - ts[1] > KEY_MAX then req.err = R_FORMAT end
    return line
  end

  if op == INCR or op == DECR or op == TOUCH then
    if not token_count_ok(s, req, nt, 3) then return line end
    if te[1] - ts[1] > KEY_MAX then
      req.err = R_FORMAT
      return line
    end
    if op == TOUCH then
      read_exptime(s, req, 2)
    elseif not to_u64(s, ts[2], te[2], req.u64) then
      req.err = R_DELTA
    end
    return line
  end

  if op == FLUSH_ALL then
    if nt > 3 then
      req.err = R_ERROR
      return line
    end
    local nr = is_noreply(s, req, nt - 1)
    req.noreply = nr
    req.exptime = 0
    if nt ~= (nr and 2 or 1) then read_exptime(s, req, 1) end
    return line
  end

  if op == VERBOSITY then
    if not token_count_ok(s, req, nt, 2) then return line end
    local lv = to_u32(s, ts[1], te[1])
    if not lv then
      req.err = R_FORMAT
    else
      req.level = lv
    end
    return line
  end

  if op == SHUTDOWN then
    req.err = R_SHUTDOWN
    return line
  end

  if op == ERROR then req.err = R_ERROR end
  -- VERSION, QUIT, STATS: nothing more to check.
  return line
end
M.parse = parse

---------------------------------------------------------------------------
-- exptime -> the dictionary's absolute expiry (unix ms; 0 = never, -1 =
-- already expired), as memcached's realtime() reads it: 0 never, negative
-- expired, up to 30 days relative, beyond that a unix time.

local MAXDELTA = M.MAXDELTA
function M.expire_at(exptime, now_ms)
  if exptime == 0 then return 0 end
  if exptime < 0 then return -1 end
  if exptime <= MAXDELTA then return now_ms + exptime * 1000 end
  return exptime * 1000
end

---------------------------------------------------------------------------
-- After a command parsed and handled, pos is the offset just past it in an
-- offer of size bytes: step over the data block it announced and refused
-- (req.swallow bytes, e.g. a value too large).  Returns the new position
-- and how many bytes of the block are still to come in later arrivals (0
-- when the whole block is here).

function M.skip_refused(req, pos, size)
  local sw = req.swallow
  if sw == 0 then return pos, 0 end
  if pos + sw <= size then return pos + sw, 0 end
  return size, pos + sw - size
end

---------------------------------------------------------------------------
-- memcached's incr/decr reading of a stored value: safe_strtoull over the
-- value (leading whitespace, a sign, digits, then whitespace or the end).
-- p, n: the value's bytes (a pointer and a length).  The result into
-- out[0]; false if not a number.  memcached hands the stored bytes to
-- strtoull as a C string, so a NUL ends the value there ("6\0xyz" is 6).
-- (The slow path: allocates.)

function M.value_u64(p, n, out)
  p = ffi.cast("const uint8_t *", p)
  for i = 0, n - 1 do
    if p[i] == 0 then n = i break end
  end
  return to_u64(slice.new(p, n), 0, n, out)
end

---------------------------------------------------------------------------
-- Counters the stats command reports, shared by every worker of the
-- process.  Each worker adds to its own row of doubles; `stats` sums the
-- rows.  The rows live in one anonymous mapping that the first worker
-- creates and the others find through the shared dictionary while they all
-- run init() (nobody serves before every worker has run it); the last to
-- arrive removes the keys it used.  The mapping is never unmapped: other
-- workers may read it until the process ends.

M.CTR = {}
local CTR_NAMES = {
  "curr_connections", "total_connections", "cmd_get", "cmd_set",
  "cmd_flush", "cmd_touch", "get_hits", "get_misses", "delete_hits",
  "delete_misses", "incr_hits", "incr_misses", "decr_hits", "decr_misses",
  "cas_hits", "cas_misses", "cas_badval", "touch_hits", "touch_misses",
  "store_too_large", "store_no_memory", "bytes_read", "bytes_written",
  "total_items",
}
for k, name in ipairs(CTR_NAMES) do M.CTR[name] = k - 1 end
M.CTR_NAMES = CTR_NAMES
local NCTR = 32                 -- doubles per row (room to grow)
-- Header doubles: start time (unix ms), pending flush time, baseline
-- offset marker; then the `stats reset` baseline row, then worker rows.
M.H_START, M.H_FLUSH_AT = 0, 1
local HDR = 8

pcall(ffi.cdef, [[
void *mmap(void *addr, size_t length, int prot, int flags, int fd,
           long offset);
int munmap(void *addr, size_t length);
]])

local block        -- double * (the whole mapping), once found
local block_rows   -- worker rows in it

local COUNTERS_KEY = "\0ringline.memcache.counters"
local COUNTERS_SEEN = "\0ringline.memcache.counters.seen"

-- The process-wide block: header, baseline row and one row per worker.
-- d: the shared dictionary (ringline.dict), nworkers: workers in the
-- process.  Call from init(); later calls return what the first found.
function M.counters(d, nworkers)
  if block then return block, block_rows end
  local size = (HDR + (nworkers + 1) * NCTR) * 8
  local p = C.mmap(nil, size, 3, 0x22, -1, 0)  -- RW, PRIVATE|ANONYMOUS
  if ffi_cast("intptr_t", p) == -1 then error("memcache: mmap failed") end
  local mine = ffi_cast("double *", p)
  mine[M.H_START] = tonumber(C.rl_unix_ms())
  local addr = ("%.0f"):format(tonumber(ffi_cast("uintptr_t", p)))
  local dictmod = require "ringline.dict"
  d:set_ex(COUNTERS_KEY, addr, 0, dictmod.NX)
  local won = d:get(COUNTERS_KEY)
  if won ~= addr then
    C.munmap(p, size)
    p = ffi_cast("double *", tonumber(won))
  end
  if tonumber(d:incr(COUNTERS_SEEN, 1)) >= nworkers then
    d:del(COUNTERS_KEY)
    d:del(COUNTERS_SEEN)
  end
  block = ffi_cast("double *", p)
  block_rows = nworkers
  return block, block_rows
end

-- This worker's row (a double *), to add to.
function M.row(blk, wid)
  return blk + HDR + (wid + 1) * NCTR
end

-- The sum of counter k over all rows, minus the reset baseline.
function M.total(blk, rows, k)
  local t = 0
  for w = 1, rows do t = t + blk[HDR + w * NCTR + k] end
  return t - blk[HDR + k]
end

-- stats reset: the current sums become the baseline (connection counts
-- are not reset, as in memcached).
function M.reset(blk, rows)
  for k = 0, NCTR - 1 do
    if k ~= M.CTR.curr_connections then
      local t = 0
      for w = 1, rows do t = t + blk[HDR + w * NCTR + k] end
      blk[HDR + k] = t
    end
  end
end

-- A private block for tests and standalone use (no dictionary needed).
function M.local_counters(nworkers)
  local n = HDR + (nworkers + 1) * NCTR
  local b = ffi.new("double[?]", n)
  return b, nworkers
end

return M
