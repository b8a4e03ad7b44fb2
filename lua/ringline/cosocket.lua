-- ringline.cosocket: sequential sockets for coroutines (ringline.tcp), a
-- keep-alive pool per worker, and the socket an on_connect handler reads.
--
-- A socket wraps one connection of the core.  Its bytes reach it as they
-- reach any handler, as slices in on_data calls; a task waiting to read is
-- resumed inside that call and reads from the slice in place.  When it
-- waits again, on_data returns the bytes it took: the rest is offered again
-- with the next arrival, contiguous (the core copies only the part of a
-- frame that spans buffers).  While no task reads, the connection is
-- paused and what arrived stays in its receive buffers, copied out by the
-- core only if the ring runs low.
--
-- A socket belongs to the task that connected it and is closed when that
-- task ends, unless it went back to the pool first (setkeepalive).
--
-- Slices from sock:read()/read_any() live until the task's next wait (the
-- handler call that resumed it returns then); strings from receive*() are
-- copies and live on.  Errors are returned, never raised: nil and
-- "closed", "timeout", or the connect's reason ("connection refused", ...).
local ffi = require "ffi"
local buffer = require "string.buffer"
local connmod = require "ringline.conn"
local coro = require "ringline.coro"
local timer = require "ringline.timer"
local slice = require "ringline.slice"

local C = ffi.C
local type, setmetatable, tostring = type, setmetatable, tostring
local ffi_string, min = ffi.string, math.min
local yield, begin_wait, wake, need = coro.yield, coro.begin_wait, coro.wake,
  coro.need
local Slice = slice.type

local M = {}
local Sock = {}
Sock.__index = Sock

-- Left unconsumed for the next arrival up to this much (contiguous, copied
-- by the core only where a frame spans buffers); past it, strings are
-- built in a buffer of the socket's own, so a 10 MiB body never sits in
-- a residue (--max-unconsumed).
local KEEP_MAX = 64 * 1024
local READY = {}               -- a wake with bytes to read

local DEFAULT_CONNECT_MS, DEFAULT_SEND_MS, DEFAULT_READ_MS = 5000, 60000, 60000

local pools = {}               -- key -> { n = count, [1..n] = idle conns,
                               --   active = open conns counted, waiters }
local release_slot             -- (below) a pool_size slot comes back

local function new_sock(c)
  return setmetatable({ conn = c, ct = DEFAULT_CONNECT_MS, st = DEFAULT_SEND_MS,
                        rt = DEFAULT_READ_MS, data = nil, pos = 0,
                        reading = false, paused = false, task = nil, seq = 0,
                        deadline = 0, buf = nil }, Sock)
end

-- -- The handlers of every cosocket connection ---------------------------

local H = {}
M.handlers = H

local function close_reason(reason)
  if reason == "peer" or reason == "local" then return "closed" end
  -- A connect the core timed out (ETIMEDOUT), as every other timeout.
  if reason == "Connection timed out" then return "timeout" end
  return reason
end

function H.on_open(c)
  local s = c._sock
  if s and s.connecting then
    s.connecting = false
    wake(s.task, s.seq, true)
  end
end

function H.on_data(c, data)
  local s = c._sock
  if not s then
    -- An idle pooled connection that speaks: nothing can read it now,
    -- and a reply nobody asked for would answer the next user's request.
    c:abort()
    return data.size
  end
  if not s.reading then
    c:pause()
    s.paused = true
    return 0
  end
  s.data, s.pos = data, 0
  wake(s.task, s.seq, READY)
  s.data = nil
  local k = s.pos
  -- The task went to wait for something else (or closed the socket):
  -- what it left stays in the buffers, unread, until it reads again.
  if not s.reading and s.conn == c and k < data.size then
    c:pause()
    s.paused = true
  end
  return k
end

function H.on_drain(c)
  local s = c._sock
  if s and s.draining then
    s.draining = false
    wake(s.task, s.seq, true)
  end
end

function H.on_close(c, reason)
  local s = c._sock
  if not s then
    -- Closed while idle in a pool (the backend went away, or idle time):
    -- out of its pool.
    local p = c._pool and pools[c._pool]
    if p then
      for i = 1, p.n do
        if p[i] == c then
          table.remove(p, i)
          p.n = p.n - 1
          break
        end
      end
    end
    return
  end
  s.closed_reason = close_reason(reason)
  release_slot(s)
  if s.task and s.task.waiting and (s.reading or s.connecting or s.draining) then
    s.reading, s.connecting, s.draining = false, false, false
    wake(s.task, s.seq, nil, s.closed_reason)
  end
end

-- -- Waiting -------------------------------------------------------------

local function check_timeout(t)
  local s = t.sock
  s.timer = nil
  if not (s.reading or s.connecting or s.draining) then return end
  local now = timer.now_ms()
  if now >= s.deadline then
    local task, seq = s.task, s.seq
    s.reading, s.connecting, s.draining = false, false, false
    wake(task, seq, nil, "timeout")
  else
    s.timer = timer.after(s.deadline - now, check_timeout)
    s.timer.sock = s
  end
end

-- Wait (the running task) for what the flags say, at most ms; one timer per
-- socket, armed again only when it fires before the deadline.
local function wait(s, task, ms)
  s.task = task
  s.seq = begin_wait(task)
  s.deadline = timer.now_ms() + ms
  if not s.timer and ms > 0 then
    s.timer = timer.after(ms, check_timeout)
    s.timer.sock = s
  end
  return yield()
end

local function usable(s)
  local c = s.conn
  if not c then return nil, "closed" end
  if c.closed then return nil, s.closed_reason or "closed" end
  return c
end

-- Wait for bytes past what the current offer holds (or for a first offer).
-- true, or nil and the error.
local function idle(s)
  local d = s.data
  return not s.paused and (not d or s.pos >= d.size) and
    not (s.buf and #s.buf > 0)
end

local function more(s, task)
  local c, err = usable(s)
  if not c then return nil, err end
  -- Stopping: a client with nothing sent is not waited for.
  if M.stopping and s.server and idle(s) then return nil, "closed" end
  s.reading = true
  if s.paused then
    s.paused = false
    c:resume()
  end
  local r, e = wait(s, task, s.rt)
  s.reading = false
  if r ~= READY then return nil, e end
  return true
end

-- The bytes of the current offer not yet taken: pointer and count.
local function avail(s)
  local d = s.data
  if not d then return nil, 0 end
  return d.base + s.pos, d.size - s.pos
end

local function take_buf(s)
  local b = s.buf
  if not b then
    b = buffer.new()
    s.buf = b
  end
  return b
end

-- -- Reading ---------------------------------------------------------------

-- Exactly n bytes, as a string.
function Sock:receive(n)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
    error("receive expects a byte count", 2)
  end
  local task = need("sock:receive")
  local b = self.buf
  local have = b and #b or 0
  while true do
    local p, k = avail(self)
    if have + k >= n then
      local want = n - have
      self.pos = self.pos + want
      if have == 0 then return ffi_string(p, want) end
      b:putcdata(p, want)
      local s = b:get()
      return s
    end
    if n - have > KEEP_MAX and k > 0 then
      b = take_buf(self)
      b:putcdata(p, k)
      have = have + k
      self.pos = self.pos + k
    end
    local ok, err = more(self, task)
    if not ok then return nil, err end
  end
end

-- Bytes up to the delimiter (not included; it is consumed), as a string.
function Sock:receive_until(delim, max)
  if type(delim) ~= "string" or #delim == 0 then
    error("receive_until expects a non-empty delimiter", 2)
  end
  max = max or 1048576
  local task = need("sock:receive_until")
  local dl = #delim
  local b = self.buf
  local have = b and #b or 0
  while true do
    local p, k = avail(self)
    if k > 0 then
      local at = C.memmem(p, k, delim, dl)
      if at ~= nil then
        local m = ffi.cast("const uint8_t *", at) - p
        if have + m > max then return nil, "too long" end
        self.pos = self.pos + m + dl
        if have == 0 then return ffi_string(p, m) end
        b:putcdata(p, m)
        return b:get()
      end
      if have + k > max then return nil, "too long" end
      -- Keep the tail that could begin the delimiter; a long run of bytes
      -- goes into the socket's buffer rather than the residue.
      if k > KEEP_MAX then
        local move = k - (dl - 1)
        b = take_buf(self)
        b:putcdata(p, move)
        have = have + move
        self.pos = self.pos + move
      end
    end
    local ok, err = more(self, task)
    if not ok then return nil, err end
  end
end

-- A line ending in LF (a CR before it is dropped), as a string.
function Sock:receive_line(max)
  local line, err = self:receive_until("\n", max)
  if not line then return nil, err end
  if line:byte(-1) == 13 then line = line:sub(1, -2) end
  return line
end

-- Whatever has arrived, at most max bytes (waits for at least one).
function Sock:receive_any(max)
  max = max or 65536
  local task = need("sock:receive_any")
  local b = self.buf
  if b and #b > 0 then return b:get(min(max, #b)) end
  while true do
    local p, k = avail(self)
    if k > 0 then
      k = min(k, max)
      self.pos = self.pos + k
      return ffi_string(p, k)
    end
    local ok, err = more(self, task)
    if not ok then return nil, err end
  end
end

-- Exactly n bytes as a slice over the receive buffer, no copy; valid until
-- this task's next wait.  n at most --max-unconsumed.
function Sock:read(n)
  local task = need("sock:read")
  local b = self.buf
  if b and #b > 0 then return nil, "bytes buffered by receive(): read them with receive" end
  while true do
    local p, k = avail(self)
    if k >= n then
      local d = self.data
      self.pos = self.pos + n
      return Slice(p, n, d.bid, d.epoch)
    end
    local ok, err = more(self, task)
    if not ok then return nil, err end
  end
end

-- Whatever has arrived, at most max bytes, as a slice (see read).
function Sock:read_any(max)
  max = max or 65536
  local task = need("sock:read_any")
  while true do
    local p, k = avail(self)
    if k > 0 then
      local d = self.data
      k = min(k, max)
      self.pos = self.pos + k
      return Slice(p, k, d.bid, d.epoch)
    end
    local ok, err = more(self, task)
    if not ok then return nil, err end
  end
end

-- The bytes that have arrived, at least n of them (default 1), as a slice,
-- without taking them: a later peek or read sees them again, with what
-- arrived since after them, contiguous.  This is how a frame is parsed in
-- place: peek, parse; incomplete, peek(#s + 1); complete, skip(frame).
-- Valid until this task's next wait; n at most --max-unconsumed.
function Sock:peek(n)
  n = n or 1
  local task = need("sock:peek")
  local b = self.buf
  if b and #b > 0 then return nil, "bytes buffered by receive(): read them with receive" end
  while true do
    local p, k = avail(self)
    if k >= n then
      local d = self.data
      return Slice(p, k, d.bid, d.epoch)
    end
    local ok, err = more(self, task)
    if not ok then return nil, err end
  end
end

-- Take n bytes of what peek showed (no wait).
function Sock:skip(n)
  local _, k = avail(self)
  if n > k then error("skip: past the bytes that have arrived", 2) end
  self.pos = self.pos + n
end

-- -- Sending ---------------------------------------------------------------

-- After a send: while the connection is over --high-water, wait (send
-- timeout) for it to drain.  n, or nil and the error.
local function drained(s, c, n)
  if c:writable() then return n end
  local task = need("sock:send")
  s.draining = true
  c:want_drain()
  local r, err = wait(s, task, s.st)
  s.draining = false
  if not r then return nil, err end
  return n
end

-- Queue a string or a slice; returns the bytes queued.
function Sock:send(x)
  local c, err = usable(self)
  if not c then return nil, err end
  local ok, e = c:send(x)
  if not ok then return nil, e end
  return drained(self, c, type(x) == "string" and #x or x.size)
end

-- Queue n bytes at p (copied), e.g. a string.buffer's ref().
function Sock:send_ptr(p, n)
  local c, err = usable(self)
  if not c then return nil, err end
  local ok, e = c:send_ptr(p, n)
  if not ok then return nil, e end
  return drained(self, c, n)
end

-- -- Connecting, closing, pooling ------------------------------------------

local function bind(s, c)
  s.conn = c
  c._sock = s
  c:hold(true)
  s.closed_reason, s.paused, s.pos, s.data = nil, false, 0, nil
  if s.buf then s.buf:reset() end
end

local function unbind(s)
  local c = s.conn
  if c then
    c._sock = nil
    if not c.closed then c:hold(false) end
  end
  s.conn = nil
  s.reading = false
  local owner = s.owner
  if owner then
    owner.socks[s] = nil
    s.owner = nil
  end
end

-- The task that connected a socket owns it: it is closed when that task
-- ends (pooled or closed sockets are no longer listed).
local function own(s, task)
  local l = task.socks
  if not l then
    l = {}
    task.socks = l
  end
  l[s] = true
  s.owner = task
end

coro.set_socket_closer(function(task)
  for s in pairs(task.socks) do s:close() end
  task.socks = nil
end)

local function pool_of(key)
  local p = pools[key]
  if not p then
    p = { n = 0, active = 0, limit = nil, waiters = nil, keep = 30,
          purge = nil }
    pools[key] = p
  end
  return p
end

-- A connection counted against its pool's pool_size went idle or closed:
-- the first connect waiting for one goes on.
release_slot = function(s)
  if not s.counted then return end
  s.counted = false
  local p = pools[s.pool_key]
  p.active = p.active - 1
  local q = p.waiters
  while q and q.head <= q.tail do
    local task, seq = q[q.head], q[q.head + 1]
    q[q.head], q[q.head + 1] = nil, nil
    q.head = q.head + 2
    if wake(task, seq, true) then return end
  end
end

-- connect(addr [, { pool = name, pool_size = n, backlog = m, timeout = ms }]):
-- (a "tls://" addr also takes verify, ca, sni, alpn, cert, key as
-- ringline.connect does; the pool is per address and these options)
-- reuses an idle pooled connection to the same address (or pool name) when
-- there is one.  With pool_size, at most that many connections of the pool
-- are open at once; a connect past it waits (up to the connect timeout,
-- at most backlog of them, default 0: refused at once) for one to come
-- back with setkeepalive or to close.
function Sock:connect(addr, opts)
  if type(addr) ~= "string" then error("connect expects an address string", 2) end
  local task = need("sock:connect")
  if self.conn then self:close() end
  local key = opts and opts.pool or addr
  if opts and not opts.pool and addr:sub(1, 6) == "tls://" then
    -- A connection verified one way is not handed to a caller asking
    -- another (a CA, a name, a client certificate).
    key = table.concat({ addr, tostring(opts.verify ~= false), opts.ca or "",
      opts.sni or "", opts.cert or "", opts.alpn and tostring(opts.alpn) or "" }, "|")
  end
  self.pool_key = key
  self.addr = addr
  local p = pool_of(key)
  local limit = opts and opts.pool_size
  if limit then
    p.limit = limit
    while p.active >= limit and p.n == 0 do
      local backlog = opts.backlog or 0
      local q = p.waiters
      if not q then q = { head = 1, tail = 0 }; p.waiters = q end
      if (q.tail - q.head + 1) / 2 >= backlog then
        return nil, "too many waiting connect operations"
      end
      local seq = begin_wait(task)
      q[q.tail + 1], q[q.tail + 2] = task, seq
      q.tail = q.tail + 2
      self.task, self.seq, self.connecting = task, seq, true
      self.deadline = timer.now_ms() + self.ct
      if not self.timer then
        self.timer = timer.after(self.ct, check_timeout)
        self.timer.sock = self
      end
      local r, e = yield()
      self.connecting = false
      if not r then return nil, e end
    end
    p.active = p.active + 1
    self.counted = true
  end
  while p.n > 0 do
    local c = p[p.n]
    p[p.n] = nil
    p.n = p.n - 1
    if not c.closed then
      c._pool = nil
      c:set_timeout(0)
      bind(self, c)
      c._uses = (c._uses or 1) + 1
      own(self, task)
      return true
    end
  end
  local copts = { timeout = opts and opts.timeout or self.ct }
  if opts and addr:sub(1, 6) == "tls://" then
    copts.verify, copts.ca, copts.sni = opts.verify, opts.ca, opts.sni
    copts.alpn, copts.cert, copts.key = opts.alpn, opts.cert, opts.key
  end
  local c, err = connmod.connect(addr, H, copts)
  if not c then
    release_slot(self)
    return nil, err
  end
  bind(self, c)
  own(self, task)
  self.connecting = true
  local r, e = wait(self, task, 0)       -- the core times the connect out
  self.connecting = false
  if not r then
    unbind(self)
    release_slot(self)
    return nil, e
  end
  return true
end

-- How many times the connection was handed out (1 for a fresh one).
function Sock:getreusedtimes()
  local c = self.conn
  return c and (c._uses or 1) - 1 or 0
end

function Sock:close()
  local c = self.conn
  if not c then return nil, "closed" end
  unbind(self)
  release_slot(self)
  if not c.closed then c:close() end
  return true
end

-- Idle connections past a pool's pool_size are closed after this grace
-- (ms), oldest first, if they are still idle then; at most OVERFLOW_MAX
-- times pool_size are kept meanwhile.  A proxy's responses come back in
-- bursts (a batch of events returns many connections before the requests
-- that will take them arrive): closing at once would open as many again
-- a moment later.  HAProxy purges idle connections over time the same way
-- (pool-purge-delay).  0: closed at once.
local POOL_GRACE_MS = 1000
local OVERFLOW_MAX = 4

function M.set_pool_grace(ms) POOL_GRACE_MS = ms end

local function close_oldest(p)
  local oldest = table.remove(p, 1)
  p.n = p.n - 1
  oldest._pool = nil
  oldest:close()
end

local function purge(t)
  local p = t.pool
  p.purge = nil
  while p.n > p.keep do close_oldest(p) end
end

-- Put the connection in this worker's pool for the next connect to the
-- same address: idle at most idle_ms (0: the pool's default, 60 s), at
-- most pool_size idle per address (past it, the oldest are closed once
-- the grace above has passed).  A connection with bytes nobody read is
-- closed instead.
function Sock:setkeepalive(idle_ms, pool_size)
  local c, err = usable(self)
  if not c then return nil, err end
  idle_ms = (idle_ms and idle_ms > 0) and idle_ms or 60000
  pool_size = pool_size or 30
  if self.paused or (self.data and self.pos < self.data.size) or
     (self.buf and #self.buf > 0) then
    self:close()
    return nil, "unread data"
  end
  if M.stopping then        -- no pool to keep for
    self:close()
    return true
  end
  local key = self.pool_key or "?"
  unbind(self)
  local p = pool_of(key)
  p.keep = pool_size
  if p.n >= pool_size and (POOL_GRACE_MS <= 0 or p.n >= pool_size * OVERFLOW_MAX) then
    close_oldest(p)
  end
  p.n = p.n + 1
  p[p.n] = c
  c._pool = key
  c:set_timeout(idle_ms)
  if p.n > pool_size and not p.purge then
    p.purge = timer.after(POOL_GRACE_MS, purge)
    p.purge.pool = p
  end
  release_slot(self)
  return true
end

function Sock:settimeouts(connect_ms, send_ms, read_ms)
  self.ct = connect_ms or self.ct
  self.st = send_ms or self.st
  self.rt = read_ms or self.rt
  return true
end

function Sock:settimeout(ms)
  self.ct, self.st, self.rt = ms, ms, ms
  return true
end

-- The connection object under the socket (id, peer), or nil once closed.
function Sock:getconn() return self.conn end

function M.tcp() return new_sock(nil) end

local servers = setmetatable({}, { __mode = "k" })

-- The socket of an accepted connection (on_connect).
function M.accepted(c)
  local s = new_sock(nil)
  bind(s, c)
  s.server = true
  servers[s] = true
  return s
end

-- SIGTERM (the loop's STOP event): the core leaves the connections tasks
-- hold to them.  A task waiting for its client's next bytes with none
-- pending gets "closed" now (its connection then closes); one in the middle
-- of something finishes it, and its next wait for an idle client ends the
-- same way.  The drain deadline aborts whatever is left.
M.stopping = false
function M.stop()
  M.stopping = true
  for s in pairs(servers) do
    if s.reading and s.task and s.task.waiting and idle(s) then
      s.reading = false
      wake(s.task, s.seq, nil, "closed")
    end
  end
end

-- Idle connections in the pool for key (tests, stats).
function M.pool_count(key)
  local p = pools[key]
  return p and p.n or 0
end

M.Sock = Sock
return M
