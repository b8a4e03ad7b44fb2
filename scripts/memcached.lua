-- memcached.lua: a memcached-compatible cache over the shared dictionary.
--
-- The memcached 1.6 text protocol (ringline.memcache parses it in place):
-- get, gets, gat, gats, set, add, replace, append, prepend, cas, delete,
-- incr, decr, touch, flush_all [delay], version, verbosity, stats (also
-- "stats reset" and "stats settings"), quit, with noreply and memcached's
-- error replies.  Not supported: the meta commands (mg, ms, md, ma, mn,
-- me), the binary protocol, UDP, and the admin commands (slabs, lru,
-- lru_crawler, watch, cache_memlimit), which answer "ERROR".
--
-- Every worker serves the same dictionary (--dict-memory, default 64 MiB,
-- is memcached's -m).  Replies to a batch of pipelined commands are built
-- in one buffer; values bigger than COPY_MAX go out without a copy.
--
-- Settings come from the environment:
--   RINGLINE_MEMCACHED_LISTEN    default tcp://0.0.0.0:11211 (--listen wins)
--   RINGLINE_MEMCACHED_ITEM_MAX  largest item, memcached's -I (default 1m;
--                                k/m suffixes)
--
-- scripts/kv.lua serves this and scripts/redis.lua from one process, on two
-- ports over the same dictionary, by loading both service tables.
local ffi = require "ffi"
local buffer = require "string.buffer"
local ringline = require "ringline"
local unix_ms = ringline.unix_ms     -- the batch's time: no clock read per request
local dictmod = require "ringline.dict"
local mc = require "ringline.memcache"
local connmod = require "ringline.conn"

local C = ffi.C
local tonumber, tostring = tonumber, tostring
local parse, expire_at, skip_refused = mc.parse, mc.expire_at, mc.skip_refused
-- Connection methods called directly (conn:x() goes through __index).
local send_ptr, send_value, writable = connmod.methods.send_ptr,
  connmod.methods.send_value, connmod.methods.writable

pcall(ffi.cdef, [[
int getpid(void);
int getrusage(int who, void *usage);
]])

local function size_arg(name, default)
  local v = os.getenv(name)
  if not v or v == "" then return default end
  local n, unit = v:match("^(%d+)([kKmMgG]?)$")
  if not n then error(name .. ": not a size: " .. v, 0) end
  n = tonumber(n) * (({ k = 1024, m = 1048576, g = 1073741824 })[unit:lower()] or 1)
  if n < 1024 then error(name .. ": at least 1024 bytes, got " .. v, 0) end
  return n
end

local LISTEN = os.getenv("RINGLINE_MEMCACHED_LISTEN")
if not LISTEN or LISTEN == "" then LISTEN = "tcp://0.0.0.0:11211" end
local ITEM_MAX = size_arg("RINGLINE_MEMCACHED_ITEM_MAX", 1048576)
local VERSION = "1.6.18-ringline"
local VERSION_LINE = "VERSION " .. VERSION .. "\r\n"
-- Values up to this size are copied into the reply buffer; bigger ones are
-- sent from the dictionary's memory.
local COPY_MAX = 8192
-- Replies collect in `out` and go to the connection every OUT_CHUNK bytes;
-- past --high-water the handler stops there (one buffer of pipelined gets
-- answers megabytes: output is bounded where it is made).
local OUT_CHUNK = 16384
-- A get line may be this long (memcached: unbounded); anything unconsumed
-- past the service's max_unconsumed closes the connection anyway.
local MAX_GET_LINE = 1048576
local MAX_UNCONSUMED = ITEM_MAX + 65536

local GET, GETS, GAT, GATS = mc.GET, mc.GETS, mc.GAT, mc.GATS
local SET, ADD, REPLACE, APPEND, PREPEND, CAS =
  mc.SET, mc.ADD, mc.REPLACE, mc.APPEND, mc.PREPEND, mc.CAS
local DELETE, INCR, DECR, TOUCH = mc.DELETE, mc.INCR, mc.DECR, mc.TOUCH
local FLUSH_ALL, VERSION_OP, VERBOSITY, STATS, QUIT =
  mc.FLUSH_ALL, mc.VERSION, mc.VERBOSITY, mc.STATS, mc.QUIT
local NX, XX = dictmod.NX, dictmod.XX
local ENOENT, EEXIST, E2BIG, ENOMEM, EINVAL = -2, -17, -7, -12, -22

local K = mc.CTR
local K_CURR, K_TOTAL = K.curr_connections, K.total_connections
local K_GET, K_SET, K_FLUSH, K_TOUCH = K.cmd_get, K.cmd_set, K.cmd_flush,
  K.cmd_touch
local K_HIT, K_MISS = K.get_hits, K.get_misses
local K_DEL_HIT, K_DEL_MISS = K.delete_hits, K.delete_misses
local K_INCR_HIT, K_INCR_MISS = K.incr_hits, K.incr_misses
local K_DECR_HIT, K_DECR_MISS = K.decr_hits, K.decr_misses
local K_CAS_HIT, K_CAS_MISS, K_CAS_BAD = K.cas_hits, K.cas_misses,
  K.cas_badval
local K_TOUCH_HIT, K_TOUCH_MISS = K.touch_hits, K.touch_misses
local K_TOO_LARGE, K_NO_MEM = K.store_too_large, K.store_no_memory
local K_READ, K_WRITTEN, K_ITEMS = K.bytes_read, K.bytes_written,
  K.total_items

local R_STORED, R_NOT_STORED = "STORED\r\n", "NOT_STORED\r\n"
local R_EXISTS, R_NOT_FOUND = "EXISTS\r\n", "NOT_FOUND\r\n"
local R_DELETED, R_TOUCHED, R_OK = "DELETED\r\n", "TOUCHED\r\n", "OK\r\n"
local R_END = "END\r\n"
local R_NO_MEMORY = "SERVER_ERROR out of memory storing object\r\n"
local R_NON_NUMERIC =
  "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"

-- -- Per-worker state -----------------------------------------------------

local req = mc.new_request{ item_max = ITEM_MAX, max_get_line = MAX_GET_LINE }
local out = buffer.new(16384)
local dict, D          -- ringline.dict object and its rl_dict *
local blk, rows, row   -- stats counters: process block, rows, this worker's
local nworkers = 1

local blob_out = ffi.new("rl_blob *[1]")
local cas_out = ffi.new("uint64_t[1]")
local flags_out = ffi.new("uint32_t[1]")
local exp_out = ffi.new("int64_t[1]")
local u64_out = ffi.new("uint64_t[1]")
local len_out = ffi.new("size_t[1]")
local num_tmp = ffi.new("uint64_t[1]")

-- Expired items go when touched or when this finds them (memcached's LRU
-- crawler): every 100 ms each worker checks a little of the keys that have
-- an expiry, more while it keeps finding expired ones (at most ~2 ms).
local function sweep()
  local t0 = tonumber(C.rl_unix_ms())
  for _ = 1, 20 do
    local now = tonumber(C.rl_unix_ms())
    if C.rl_dict_sweep(D, 200, now) < 50 or now - t0 >= 2 then break end
  end
end

local function init()
  dict = dictmod.shared()
  D = dict.d
  nworkers = ringline.workers()
  blk, rows = mc.counters(dict, nworkers)
  row = mc.row(blk, ringline.worker_id())
  ringline.every(100, sweep)
end

-- -- Replies ----------------------------------------------------------------

-- Send what the reply buffer holds.
local sent = false   -- flush queued bytes since on_data last looked

local function flush(conn)
  local n = #out
  if n > 0 then
    sent = true
    local p = out:ref()
    send_ptr(conn, p, n)
    row[K_WRITTEN] = row[K_WRITTEN] + n
    out:reset()
  end
end

-- An unsigned 64-bit number (cdata) in decimal.
local function put_u64(v)
  local n = tonumber(v)
  if n < 1e14 then
    out:putf("%d", n)
  elseif n < 9007199254740992 then
    out:putf("%.0f", n)
  else
    out:put((tostring(v):gsub("ULL$", "")))
  end
end

-- -- Commands ---------------------------------------------------------------

-- get / gets / gat / gats: one VALUE block per key found, then END.
local function retrieve(conn, s, op, now)
  local ts, te = req.ts, req.te
  local with_cas = op == GETS or op == GATS
  local touch = op == GAT or op == GATS
  local at = touch and expire_at(req.exptime, now) or 0
  local hits, misses = 0, 0
  for i = req.key, req.nt - 1 do
    local ko = ts[i]
    local kl = te[i] - ko
    if C.rl_dict_get_cas(D, s.base + ko, kl, now, blob_out, cas_out,
                         flags_out, nil) == 0 then
      local b = blob_out[0]
      local vl = b.len
      out:put("VALUE ")
      out:putcdata(s.base + ko, kl)
      out:putf(" %d %d", flags_out[0], vl)
      if with_cas then
        out:put(" ")
        put_u64(cas_out[0])
      end
      out:put("\r\n")
      if vl <= COPY_MAX then
        out:putcdata(b.data, vl)
      else
        flush(conn)
        send_value(conn, b, 0, vl)
        row[K_WRITTEN] = row[K_WRITTEN] + vl
      end
      out:put("\r\n")
      C.rl_blob_unref(b)
      -- gat: the value as it was, then the new expiry (a negative one
      -- returns the value once, as memcached does).
      if touch then C.rl_dict_touch(D, s.base + ko, kl, at, now) end
      hits = hits + 1
    else
      misses = misses + 1
    end
  end
  out:put(R_END)
  if touch then
    row[K_TOUCH] = row[K_TOUCH] + hits + misses
    row[K_TOUCH_HIT] = row[K_TOUCH_HIT] + hits
    row[K_TOUCH_MISS] = row[K_TOUCH_MISS] + misses
  else
    row[K_GET] = row[K_GET] + hits + misses
    row[K_HIT] = row[K_HIT] + hits
    row[K_MISS] = row[K_MISS] + misses
  end
end

-- set / add / replace / cas / append / prepend, with the block complete.
local function store(s, op, now)
  local base = s.base
  local kp = base + req.ts[1]
  local kl = req.te[1] - req.ts[1]
  local vp, vl = base + req.data_off, req.vlen
  row[K_SET] = row[K_SET] + 1
  local ret
  if op == APPEND or op == PREPEND then
    -- The result must still fit an item (memcached: NOT_STORED).
    if C.rl_dict_get_cas(D, kp, kl, now, blob_out, nil, flags_out,
                         nil) ~= 0 then
      return R_NOT_STORED
    end
    local old = blob_out[0].len
    C.rl_blob_unref(blob_out[0])
    if mc.too_large(req, kl, old + vl, flags_out[0]) then
      return R_NOT_STORED
    end
    ret = C.rl_dict_append(D, kp, kl, vp, vl, op == PREPEND and 1 or 0, 0,
                           now, len_out)
    if ret == 0 then
      row[K_ITEMS] = row[K_ITEMS] + 1
      return R_STORED
    end
    if ret == ENOMEM then
      row[K_NO_MEM] = row[K_NO_MEM] + 1
      return R_NO_MEMORY
    end
    return R_NOT_STORED
  end
  local at = expire_at(req.exptime, now)
  local mode, cas = 0, 0
  if op == ADD then
    mode = NX
  elseif op == REPLACE then
    mode = XX
  elseif op == CAS then
    cas = req.u64[0]
    if cas == 0 then
      -- No item ever has cas 0: memcached answers EXISTS (or NOT_FOUND).
      if C.rl_dict_exists(D, kp, kl, now) == 1 then
        row[K_CAS_BAD] = row[K_CAS_BAD] + 1
        return R_EXISTS
      end
      row[K_CAS_MISS] = row[K_CAS_MISS] + 1
      return R_NOT_FOUND
    end
  end
  ret = C.rl_dict_set_ex(D, kp, kl, vp, vl, at, mode, req.flags, cas, now,
                         nil)
  if ret == 0 then
    if op == CAS then row[K_CAS_HIT] = row[K_CAS_HIT] + 1 end
    row[K_ITEMS] = row[K_ITEMS] + 1
    return R_STORED
  end
  if op == CAS then
    if ret == EEXIST then
      row[K_CAS_BAD] = row[K_CAS_BAD] + 1
      return R_EXISTS
    elseif ret == ENOENT then
      row[K_CAS_MISS] = row[K_CAS_MISS] + 1
      return R_NOT_FOUND
    end
  elseif ret == EEXIST or ret == ENOENT then
    return R_NOT_STORED
  end
  if ret == E2BIG then
    row[K_TOO_LARGE] = row[K_TOO_LARGE] + 1
    return mc.R_TOO_LARGE
  end
  row[K_NO_MEM] = row[K_NO_MEM] + 1
  return R_NO_MEMORY
end

-- incr/decr of a value the dictionary's strict reading refused (" 12",
-- "+3", "7 ", 21 zero-padded digits...): memcached reads it with strtoull.
-- Read, compute, store back if nobody changed it meanwhile.
local function arith_slow(kp, kl, delta, decr, now)
  for _ = 1, 16 do
    if C.rl_dict_get_cas(D, kp, kl, now, blob_out, cas_out, flags_out,
                         exp_out) ~= 0 then
      return nil, "absent"
    end
    local b = blob_out[0]
    local ok = mc.value_u64(b.data, b.len, num_tmp)
    local old_len = tonumber(b.len)
    C.rl_blob_unref(b)
    if not ok then return nil, "not a number" end
    local v = num_tmp[0]
    if decr then
      v = v > delta and v - delta or 0ULL
    else
      v = v + delta
    end
    local str = tostring(v):gsub("ULL$", "")
    if #str < old_len then    -- memcached's in-place update pads with spaces
      str = str .. string.rep(" ", old_len - #str)
    end
    local ret = C.rl_dict_set_ex(D, kp, kl, str, #str, exp_out[0], XX,
                                 flags_out[0], cas_out[0], now, nil)
    if ret == 0 then return v end
    if ret == ENOENT then return nil, "absent" end
    if ret ~= EEXIST then return nil, "no memory" end
  end
  return nil, "busy"
end

local function arith(s, op, now)
  local kp = s.base + req.ts[1]
  local kl = req.te[1] - req.ts[1]
  local decr = op == DECR
  local delta = req.u64[0]
  local ret = C.rl_dict_incr_u64(D, kp, kl, delta, decr and 1 or 0, now,
                                 u64_out)
  local v, why
  if ret == 0 then
    v = u64_out[0]
  elseif ret == EINVAL then
    v, why = arith_slow(kp, kl, delta, decr, now)
  elseif ret == ENOENT then
    why = "absent"
  else
    why = "no memory"
  end
  if v then
    if decr then
      row[K_DECR_HIT] = row[K_DECR_HIT] + 1
    else
      row[K_INCR_HIT] = row[K_INCR_HIT] + 1
    end
    if not req.noreply then
      put_u64(v)
      out:put("\r\n")
    end
    return
  end
  local r
  if why == "absent" then
    if decr then
      row[K_DECR_MISS] = row[K_DECR_MISS] + 1
    else
      row[K_INCR_MISS] = row[K_INCR_MISS] + 1
    end
    r = R_NOT_FOUND
  elseif why == "not a number" then
    r = R_NON_NUMERIC
  else
    r = "SERVER_ERROR out of memory\r\n"
  end
  if not req.noreply then out:put(r) end
end

-- flush_all [delay]: everything stored before the flush time goes.  A
-- delayed flush is a timer on this worker; a later flush_all (on any
-- worker) replaces it, as in memcached, where the newest setting wins.
local function flush_all(now)
  row[K_FLUSH] = row[K_FLUSH] + 1
  local ex = req.exptime
  local at = 0
  if ex > 0 then at = expire_at(ex, now) end
  if at <= now then
    blk[mc.H_FLUSH_AT] = 0
    dict:flush()
    return
  end
  blk[mc.H_FLUSH_AT] = at
  ringline.after(at - now, function()
    if blk[mc.H_FLUSH_AT] == at then
      blk[mc.H_FLUSH_AT] = 0
      dict:flush()
    end
  end)
end

-- -- stats ----------------------------------------------------------------

local rusage = ffi.new("long[18]")   -- struct rusage: two timevals first

local function stat(name, v)
  out:put("STAT ", name, " ")
  if type(v) == "number" and v >= 1e14 then
    out:putf("%.0f", v)
  else
    out:put(v)
  end
  out:put("\r\n")
end

local function total(k) return mc.total(blk, rows, k) end

local function stats_general(now)
  local ds = dict:stats()
  local start = blk[mc.H_START]
  C.getrusage(0, rusage)
  stat("pid", C.getpid())
  stat("uptime", math.floor((now - start) / 1000))
  stat("time", math.floor(now / 1000))
  stat("version", VERSION)
  stat("pointer_size", ffi.abi("64bit") and 64 or 32)
  out:putf("STAT rusage_user %d.%06d\r\n", tonumber(rusage[0]),
           tonumber(rusage[1]))
  out:putf("STAT rusage_system %d.%06d\r\n", tonumber(rusage[2]),
           tonumber(rusage[3]))
  stat("curr_connections", total(K_CURR))
  stat("total_connections", total(K_TOTAL))
  for _, name in ipairs{ "cmd_get", "cmd_set", "cmd_flush", "cmd_touch",
      "get_hits", "get_misses", "delete_misses", "delete_hits",
      "incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses",
      "cas_hits", "cas_badval", "touch_hits", "touch_misses",
      "store_too_large", "store_no_memory", "bytes_read",
      "bytes_written" } do
    stat(name, total(K[name]))
  end
  stat("limit_maxbytes", ds.limit)
  stat("accepting_conns", 1)
  stat("threads", nworkers)
  stat("bytes", ds.bytes)
  stat("curr_items", ds.keys)
  stat("total_items", total(K_ITEMS))
  stat("expired_unfetched", 0)
  stat("evicted_unfetched", 0)
  stat("evictions", ds.evictions)
  stat("reclaimed", ds.expired)
  out:put(R_END)
end

local function stats_settings()
  local ds = dict:stats()
  stat("maxbytes", ds.limit)
  stat("evictions", "on")
  stat("num_threads", nworkers)
  stat("cas_enabled", "yes")
  stat("flush_enabled", "yes")
  stat("item_size_max", ITEM_MAX)
  stat("binding_protocol", "ascii")
  out:put(R_END)
end

local function sub_is(s, word)
  local n = #word
  return req.te[1] - req.ts[1] == n and C.memcmp(s.base + req.ts[1], word, n) == 0
end

local function stats(s, now)
  local nt = req.nt
  if nt == 1 then return stats_general(now) end
  if sub_is(s, "reset") then
    mc.reset(blk, rows)
    out:put("RESET\r\n")
  elseif sub_is(s, "settings") then
    stats_settings()
  elseif sub_is(s, "detail") then
    if nt >= 3 then
      local st, en = req.ts[2], req.te[2]
      local w = ffi.string(s.base + st, en - st)
      if w == "on" or w == "off" then
        out:put(R_OK)
        return
      elseif w == "dump" then
        out:put(R_END)
        return
      end
    end
    out:put("CLIENT_ERROR usage: stats detail on|off|dump\r\n")
  elseif sub_is(s, "items") or sub_is(s, "slabs") or sub_is(s, "sizes")
      or sub_is(s, "conns") then
    out:put(R_END)    -- no slab classes here
  else
    out:put(mc.R_ERROR)
  end
end

-- -- The connection handlers ----------------------------------------------

-- Run the command parsed into req; false means close the connection.
local function execute(conn, s, now)
  local op = req.op
  local err = req.err
  if err then
    if not req.noreply then out:put(err) end
    if op == SET and req.swallow > 0 then
      -- memcached drops the old value rather than leave it stale.
      C.rl_dict_del(D, s.base + req.ts[1], req.te[1] - req.ts[1], now)
    end
    if err == mc.R_TOO_LARGE then
      row[K_TOO_LARGE] = row[K_TOO_LARGE] + 1
    elseif err == mc.R_CHUNK then
      row[K_SET] = row[K_SET] + 1
    end
    return true
  end
  if op <= GATS then
    retrieve(conn, s, op, now)
  elseif op <= CAS then
    local r = store(s, op, now)
    if not req.noreply then out:put(r) end
  elseif op == DELETE then
    local kp = s.base + req.ts[1]
    local r
    if C.rl_dict_del(D, kp, req.te[1] - req.ts[1], now) == 1 then
      row[K_DEL_HIT] = row[K_DEL_HIT] + 1
      r = R_DELETED
    else
      row[K_DEL_MISS] = row[K_DEL_MISS] + 1
      r = R_NOT_FOUND
    end
    if not req.noreply then out:put(r) end
  elseif op == INCR or op == DECR then
    arith(s, op, now)
  elseif op == TOUCH then
    local kp = s.base + req.ts[1]
    local r
    row[K_TOUCH] = row[K_TOUCH] + 1
    if C.rl_dict_touch(D, kp, req.te[1] - req.ts[1],
                       expire_at(req.exptime, now), now) == 1 then
      row[K_TOUCH_HIT] = row[K_TOUCH_HIT] + 1
      r = R_TOUCHED
    else
      row[K_TOUCH_MISS] = row[K_TOUCH_MISS] + 1
      r = R_NOT_FOUND
    end
    if not req.noreply then out:put(r) end
  elseif op == FLUSH_ALL then
    flush_all(now)
    if not req.noreply then out:put(R_OK) end
  elseif op == VERSION_OP then
    out:put(VERSION_LINE)
  elseif op == VERBOSITY then
    if not req.noreply then out:put(R_OK) end
  elseif op == STATS then
    stats(s, now)
  elseif op == QUIT then
    return false
  end
  return true
end

local function on_data(conn, s)
  local size = s.size
  local st = conn.state
  local pos = 0
  local sw = st.swallow
  if sw then
    -- The rest of a refused block.
    if sw >= size then
      st.swallow = sw > size and sw - size or nil
      row[K_READ] = row[K_READ] + size
      return size
    end
    st.swallow = nil
    pos = sw
  end
  local now = unix_ms()
  sent = false      -- the last call's final flush was another story
  while pos < size do
    local n = parse(s, req, pos)
    if n < 0 then
      if n == -1 then
        -- A line too long without a newline: memcached just closes.
        flush(conn)
        row[K_READ] = row[K_READ] + size
        conn:close()
        return size
      end
      break
    end
    local keep = execute(conn, s, now)
    pos, sw = skip_refused(req, pos + n, size)
    if sw > 0 then st.swallow = sw end
    if #out >= OUT_CHUNK then flush(conn) end
    if sent then
      -- Over high water: the rest waits, held, for the queue to drain.
      sent = false
      if keep and not writable(conn) then break end
    end
    if not keep then
      flush(conn)
      row[K_READ] = row[K_READ] + size
      conn:close()
      return size
    end
  end
  flush(conn)
  row[K_READ] = row[K_READ] + pos
  return pos
end

local function on_open(conn)
  row[K_CURR] = row[K_CURR] + 1
  row[K_TOTAL] = row[K_TOTAL] + 1
end

local function on_close(conn)
  row[K_CURR] = row[K_CURR] - 1
end

return {
  listen = LISTEN,
  max_unconsumed = MAX_UNCONSUMED,
  init = init,
  on_open = on_open,
  on_data = on_data,
  on_close = on_close,
  -- Each batch's "get <key>" keys are prefetched in the dictionary before
  -- the batch is handled: their cache misses overlap (README, "prefetch").
  prefetch = "get ",
}
