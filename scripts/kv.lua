-- kv.lua: Redis and memcached from one process, on two ports, over one
-- dictionary.
--
-- A key set through either protocol is seen by the other (values only:
-- memcached's client flags are 0 for keys Redis wrote, and Redis ignores
-- them).  flush_all and FLUSHALL empty both.
--
-- The two services are scripts/redis.lua and scripts/memcached.lua, loaded
-- as they are; connections go to one or the other by the listen address
-- that accepted them (conn.listener): the first address is Redis, the
-- second memcached, so `--listen` must be given twice, in that order, to
-- move both.
--
-- Settings (environment): RINGLINE_REDIS_LISTEN (default
-- tcp://0.0.0.0:6379), RINGLINE_MEMCACHED_LISTEN (default
-- tcp://0.0.0.0:11211), RINGLINE_MEMCACHED_ITEM_MAX (see memcached.lua).
local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local redis = dofile(dir .. "/redis.lua")
local memcached = dofile(dir .. "/memcached.lua")

local function first(l)
  if type(l) == "table" then return l[1] end
  return l
end

local MEMCACHED = 2     -- conn.listener of the memcached address

local r_open, r_data, r_close = redis.on_open, redis.on_data, redis.on_close
local m_open, m_data, m_close = memcached.on_open, memcached.on_data,
  memcached.on_close

local svc = {
  listen = { first(redis.listen), first(memcached.listen) },
  max_unconsumed = math.max(redis.max_unconsumed or 1048576,
                            memcached.max_unconsumed or 1048576),
  _redis = redis,
  _memcached = memcached,

  init = function()
    if redis.init then redis.init() end
    if memcached.init then memcached.init() end
  end,

  on_open = function(conn)
    if conn.listener == MEMCACHED then
      if m_open then m_open(conn) end
    elseif r_open then
      r_open(conn)
    end
  end,

  on_data = function(conn, data)
    if conn.listener == MEMCACHED then return m_data(conn, data) end
    return r_data(conn, data)
  end,

  on_close = function(conn, reason)
    if conn.listener == MEMCACHED then
      if m_close then m_close(conn, reason) end
    elseif r_close then
      r_close(conn, reason)
    end
  end,
}

-- Optional handlers: only if a service has them (their presence changes
-- how the runtime treats every connection).  A memcached connection gets
-- the default behaviour: close once the answers are out.
if redis.on_eof or memcached.on_eof then
  svc.on_eof = function(conn)
    local h = conn.listener == MEMCACHED and memcached.on_eof or redis.on_eof
    if h then return h(conn) end
    conn:close()
  end
end
if redis.on_drain or memcached.on_drain then
  svc.on_drain = function(conn)
    local h = conn.listener == MEMCACHED and memcached.on_drain
      or redis.on_drain
    if h then return h(conn) end
  end
end
if redis.reload or memcached.reload then
  svc.reload = function(old)
    if redis.reload then redis.reload(old and old._redis) end
    if memcached.reload then memcached.reload(old and old._memcached) end
  end
end

return svc
