-- proxy.lua: a TCP proxy / load balancer: any protocol, bytes forwarded zero-copy.
--
-- Settings (environment, read when the script loads):
--   RINGLINE_PROXY_LISTEN     default tcp://0.0.0.0:7100
--   RINGLINE_PROXY_UPSTREAMS  comma-separated addresses (required), e.g.
--                             "tcp://127.0.0.1:6379,tcp://127.0.0.1:6380"
--   RINGLINE_PROXY_BALANCE    "roundrobin" (default) or "leastconn"
--   RINGLINE_PROXY_CONNECT_TIMEOUT  ms (default 2000)
--   RINGLINE_PROXY_IDLE_TIMEOUT     ms, 0 = none (default 300000)
--   RINGLINE_PROXY_DOWN_TIME        ms an upstream stays down after a failed
--                                   connect (default 5000)
--   RINGLINE_PROXY_CHECK_INTERVAL   ms between active health checks (a
--                                   connect), 0 = off (default 2000)
--   RINGLINE_PROXY_HIGH_WATER       unsent bytes on one side that pause
--                                   reading the other (default 0: the
--                                   core's --high-water)
--   For tls:// upstreams (TLS originated here; the server's certificate
--   and name are verified unless RINGLINE_PROXY_TLS_VERIFY=off):
--   RINGLINE_PROXY_TLS_CA           CA file (PEM), default the system's
--   RINGLINE_PROXY_TLS_SNI          name sent and verified, default each
--                                   upstream's host
--   RINGLINE_PROXY_TLS_VERIFY       on (default) or off
--   RINGLINE_PROXY_TLS_CERT, RINGLINE_PROXY_TLS_KEY  a client certificate
--   RINGLINE_PROXY_TLS_ALPN         protocols offered, comma separated
-- Listening on tls:// (ringline's --tls-cert/--tls-key) terminates TLS.
--
-- Each client connection gets one upstream connection.  Bytes go both ways
-- as received slices (no copy); when one side's unsent bytes pass the high
-- water mark, the other side stops reading until it drains.  A half-close
-- on either side is passed on; the pair closes when both directions are
-- done.  A refused or timed-out connect marks the upstream down and is
-- retried on the next one; a client is closed only if every upstream fails.
--
-- Until its upstream is connected a client is paused: what it sends waits
-- in the kernel, and bytes that arrived before the pause took effect are
-- left unconsumed.  Resuming it offers them again (conn:resume), so they go
-- to whichever upstream answers first, with no copy kept here.
local ringline = require "ringline"

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local function env_ms(name, default)
  local v = tonumber(env(name, default))
  if not v or v < 0 then error(name .. " must be a number of milliseconds", 0) end
  return v
end

local LISTEN = env("RINGLINE_PROXY_LISTEN", "tcp://0.0.0.0:7100")
local BALANCE = env("RINGLINE_PROXY_BALANCE", "roundrobin")
local CONNECT_TIMEOUT = env_ms("RINGLINE_PROXY_CONNECT_TIMEOUT", 2000)
local IDLE_TIMEOUT = env_ms("RINGLINE_PROXY_IDLE_TIMEOUT", 300000)
local DOWN_TIME = env_ms("RINGLINE_PROXY_DOWN_TIME", 5000)
local CHECK_INTERVAL = env_ms("RINGLINE_PROXY_CHECK_INTERVAL", 2000)
-- 0: the core's --high-water (conn:writable()).
local HIGH_WATER = env_ms("RINGLINE_PROXY_HIGH_WATER", 0)

local VERIFY = env("RINGLINE_PROXY_TLS_VERIFY", "on")
if VERIFY ~= "on" and VERIFY ~= "off" then
  error("RINGLINE_PROXY_TLS_VERIFY must be on or off", 0)
end
-- One options table for every connect (no garbage per connection).
local CONNECT_OPTS = {
  timeout = CONNECT_TIMEOUT, verify = VERIFY == "on",
  ca = env("RINGLINE_PROXY_TLS_CA"), sni = env("RINGLINE_PROXY_TLS_SNI"),
  cert = env("RINGLINE_PROXY_TLS_CERT"), key = env("RINGLINE_PROXY_TLS_KEY"),
  alpn = env("RINGLINE_PROXY_TLS_ALPN"),
}

if BALANCE ~= "roundrobin" and BALANCE ~= "leastconn" then
  error("RINGLINE_PROXY_BALANCE must be roundrobin or leastconn", 0)
end

local upstreams = {}
for addr in env("RINGLINE_PROXY_UPSTREAMS", ""):gmatch("[^,%s]+") do
  upstreams[#upstreams + 1] = { addr = addr, active = 0, down_until = 0,
                                failures = 0 }
end
if #upstreams == 0 then
  error("RINGLINE_PROXY_UPSTREAMS is not set (comma-separated addresses)", 0)
end

local rr = 0

-- The next upstream that is up, skipping those already tried for this
-- client; nil when every upstream has been tried.
local function pick(tried)
  local now = ringline.now_ms()
  local best
  for k = 1, #upstreams do
    local i = (rr + k - 1) % #upstreams + 1
    local u = upstreams[i]
    if not tried[u] and u.down_until <= now then
      if BALANCE == "roundrobin" then
        rr = i
        return u
      end
      if not best or u.active < best.active then best = u end
    end
  end
  if best then return best end
  -- Every upstream left is marked down: try them anyway, the one marked
  -- down longest ago first (it may be back before a health check says so);
  -- a refused connect costs nothing, an unanswered one its timeout.
  for _, u in ipairs(upstreams) do
    if not tried[u] and (not best or u.down_until < best.down_until) then
      best = u
    end
  end
  return best
end

local function mark_down(u, reason)
  u.failures = u.failures + 1
  if u.down_until <= ringline.now_ms() then
    ringline.warn(("upstream %s down for %d ms: %s"):format(u.addr, DOWN_TIME,
      reason))
  end
  u.down_until = ringline.now_ms() + DOWN_TIME
end

local function mark_up(u)
  if u.down_until > ringline.now_ms() then
    ringline.info(("upstream %s is up"):format(u.addr))
  end
  u.down_until, u.failures = 0, 0
end

local function backed_up(dst)
  if HIGH_WATER > 0 then return dst:unsent() > HIGH_WATER end
  return not dst:writable()
end

-- Forward a slice; pause the source while the destination is backed up.
-- Returns the bytes consumed: none when the destination was already backed
-- up (bytes still on their way when the source was paused): the core keeps
-- them in their receive buffers and offers them again on resume, so a
-- client that does not read costs the mark, not every arrival in flight.
local function forward(src, dst, data)
  if backed_up(dst) then
    src:pause()
    dst:want_drain()
    return 0
  end
  dst:send(data)
  if backed_up(dst) then
    src:pause()
    dst:want_drain()      -- whatever --high-water/--low-water say
  end
  return #data
end

local connect_upstream

-- Handlers of the upstream side; the client is in up.state.client.
local upstream_handlers = {
  on_open = function(up)
    local st = up.state
    st.connected = true
    mark_up(st.u)
    local client = st.client
    if client.closed then up:close() return end
    local cs = client.state
    cs.up, cs.pending = up, nil
    -- Bytes the client sent meanwhile are offered again and forwarded.
    client:resume()
  end,
  on_data = function(up, data)
    local client = up.state.client
    if client.closed then up:close() return #data end
    return forward(up, client, data)
  end,
  on_eof = function(up)
    -- The upstream finished sending: pass the half-close on.
    local client = up.state.client
    up.state.eof = true
    if not client.closed then client:shutdown() end
    if client.state.eof or client.closed then up:close() end
  end,
  on_drain = function(up)
    local client = up.state.client
    if not client.closed then client:resume() end
  end,
  on_close = function(up, reason)
    local st = up.state
    st.u.active = st.u.active - 1
    local client = st.client
    if not st.connected then
      -- Refused, unreachable or timed out: try another upstream.  Closed
      -- by us (the client left first) says nothing about its health.
      if reason ~= "local" and reason ~= "shutdown" then
        mark_down(st.u, reason)
        if not client.closed then connect_upstream(client) end
      end
      return
    end
    if not client.closed then
      if st.eof then client:close() else client:abort() end
    end
  end,
}

function connect_upstream(client)
  local cs = client.state
  local u = pick(cs.tried)
  if not u then
    ringline.warn(("conn %d: no upstream reachable, closing"):format(client.id))
    client:abort()
    return
  end
  cs.tried[u] = true
  local up, err = ringline.connect(u.addr, upstream_handlers, CONNECT_OPTS)
  if not up then
    mark_down(u, err)
    return connect_upstream(client)
  end
  u.active = u.active + 1
  up.state.client, up.state.u = client, u
  -- Backpressure across the pair (forward), not per side: see
  -- conn:set_backpressure.
  up:set_backpressure(false)
  cs.pending = up
  -- A half-close queues until the connect completes.  (The client's EOF
  -- comes only after every byte before it was forwarded, so here it
  -- was a bare EOF.)
  if cs.eof then up:shutdown() end
end

-- Active health checks: a connect to each upstream that is down.
local function health_check()
  for _, u in ipairs(upstreams) do
    if u.down_until > ringline.now_ms() then
      ringline.connect(u.addr, {
        on_open = function(c) mark_up(u) c:close() end,
        on_data = function(c, data) return #data end,
        on_close = function() end,
      }, CONNECT_OPTS)
    end
  end
end

return {
  listen = LISTEN,

  init = function()
    if CHECK_INTERVAL > 0 then ringline.every(CHECK_INTERVAL, health_check) end
  end,

  on_open = function(client)
    client:set_backpressure(false)
    if IDLE_TIMEOUT > 0 then client:set_timeout(IDLE_TIMEOUT) end
    client.state.tried = {}
    -- Nothing to forward to yet: the upstream's on_open resumes it.
    client:pause()
    connect_upstream(client)
  end,

  on_data = function(client, data)
    local cs = client.state
    local up = cs.up
    if up then
      if up.closed then return #data end
      return forward(client, up, data)
    end
    if not cs.pending then return #data end   -- no upstream left: closing
    -- Still connecting (bytes that came before the pause took effect):
    -- leave them; they are offered again when the upstream's on_open
    -- resumes the client, whichever upstream that is.
    client:pause()
    return 0
  end,

  on_eof = function(client)
    local cs = client.state
    cs.eof = true
    local up = cs.up or cs.pending
    if up and not up.closed then
      up:shutdown()
      if up.state.eof then client:close() end
    elseif not up then
      client:close()
    end
  end,

  on_drain = function(client)
    local up = client.state.up
    if up and not up.closed then up:resume() end
  end,

  on_close = function(client)
    local cs = client.state
    local up = cs.up or cs.pending
    if up and not up.closed then
      if cs.eof then up:close() else up:abort() end
    end
  end,
}
