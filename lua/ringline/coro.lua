-- ringline.coro: coroutines on a worker: spawn, sleep, light threads, and
-- the wait/wake protocol that cosockets (ringline.cosocket) build on.
--
-- A task is a function running in a coroutine of this worker.  It runs at
-- once, up to its first wait; whatever it waits for (bytes on a socket, a
-- timer, another task) resumes it later from the loop: inside that
-- socket's handler call, or a timer's.  Coroutines are kept in a pool and
-- reused, so a task costs its table and nothing per resume.
--
-- Waits are numbered: a wake names the wait it is for (task, seq), so a
-- timer or a socket event that comes after its wait ended is ignored.
local timer = require "ringline.timer"

local cocreate, coresume, coyield = coroutine.create, coroutine.resume,
  coroutine.yield
local select, unpack, type, tostring = select, unpack, type, tostring
local traceback = debug.traceback

local M = {}

local POOL_MAX = 1024          -- idle coroutines kept for reuse
local idle, nidle = {}, 0
local current = nil            -- the task running now, or nil
local log_error = function(msg) io.stderr:write(msg, "\n") end
-- The loop counts errors and closes what a failed task owns.
local on_error = function(task, err) log_error("coroutine failed: " .. tostring(err)) end
-- A task that ends with sockets still open (task.socks): ringline.cosocket
-- closes them, so nothing holds a connection or its buffers for a task
-- that is gone.
local close_socks = function(task) end

function M.set_socket_closer(fn) close_socks = fn end

function M.set_logger(fn) log_error = fn end
function M.set_error_handler(fn) on_error = fn end

local function store(task, ok, ...)
  task.ok = ok
  local n = select("#", ...)
  task.nres = n
  if n == 1 then
    task.res1 = ...
  elseif n > 1 then
    task.res = { ... }
  end
end

-- Tasks waiting for this one (thread.wait) are woken with it.
local function finish(task)
  task.done = true
  local ws = task.waiters
  if ws then
    task.waiters = nil
    for i = 1, #ws, 2 do M.wake(ws[i], ws[i + 1], task) end
  end
end

-- Errors keep the line they came from and the stack below it.
local function handler(err)
  return traceback(tostring(err), 2)
end

local function body(task)
  while true do
    store(task, xpcall(task.fn, handler, unpack(task.args, 1, task.nargs)))
    task.fn, task.args = nil, nil
    if not task.ok then
      task.err = task.res1
      on_error(task, task.res1)
    end
    if task.socks then close_socks(task) end
    if task.on_exit then task.on_exit(task) end
    finish(task)
    if nidle >= POOL_MAX then return end
    -- Back to the pool: the next spawn resumes us with its task.
    nidle = nidle + 1
    idle[nidle] = task.co
    task.co = nil
    task = coyield()
  end
end

-- Resume task's coroutine with the values given; returns when it waits
-- again or ends.  Keeps `current` right across nested resumes (a task that
-- spawns one, a socket event that wakes a task from inside another).
local function resume(task, ...)
  local prev = current
  current = task
  local ok, err = coresume(task.co, ...)
  current = prev
  if not ok then
    -- Only a fault of this module gets here (task errors are caught in
    -- body); the coroutine is dead, the task ends.
    task.ok, task.err, task.nres, task.res1 = false, err, 1, err
    on_error(task, err)
    finish(task)
  end
end

-- Run fn(...) in a coroutine of this worker, now, up to its first wait.
-- Returns the task (a handle for thread.wait).
local function spawn(on_exit, owns, fn, ...)
  if type(fn) ~= "function" then
    error("spawn expects a function, got " .. type(fn), 3)
  end
  local task = { fn = fn, args = { ... }, nargs = select("#", ...),
                 seq = 0, done = false, on_exit = on_exit,
                 owns = owns }
  local co
  if nidle > 0 then
    co = idle[nidle]
    idle[nidle] = nil
    nidle = nidle - 1
  else
    co = cocreate(body)
  end
  task.co = co
  resume(task, task)
  return task
end

function M.spawn(fn, ...) return spawn(nil, nil, fn, ...) end
-- The same, with on_exit(task) called when it ends, error or not (before
-- the tasks waiting for it are woken), and task.owns = owns from the start.
function M.spawn_with(on_exit, owns, fn, ...) return spawn(on_exit, owns, fn, ...) end

function M.current() return current end

-- The running task, or an error naming what needed one.
function M.need(what)
  local t = current
  if not t then
    error(what .. " must be called from a coroutine (ringline.spawn, on_connect)", 3)
  end
  return t
end

-- Start a wait of the running task: returns its number, for wake.
function M.begin_wait(task)
  local seq = task.seq + 1
  task.seq = seq
  task.waiting = true
  return seq
end

-- Give control back until woken; returns what the waker passed.
M.yield = coyield

-- Wake task from wait seq with these values; a stale wake does nothing.
-- Returns true when it woke the task.
function M.wake(task, seq, ...)
  if task.seq ~= seq or not task.waiting or task.done then return false end
  task.waiting = false
  resume(task, ...)
  return true
end

local function sleep_done(t) M.wake(t.task, t.seq) end

-- Wait ms milliseconds (0: let other events run first).
function M.sleep(ms)
  if type(ms) ~= "number" or ms < 0 then
    error("sleep expects milliseconds >= 0", 2)
  end
  local task = M.need("sleep")
  local seq = M.begin_wait(task)
  local t = timer.after(ms, sleep_done)
  t.task, t.seq = task, seq
  coyield()
end

-- -- Light threads ------------------------------------------------------

local function results(task)
  if not task.ok then return false, task.err end
  local n = task.nres
  if n == 0 then return true end
  if n == 1 then return true, task.res1 end
  return true, unpack(task.res, 1, n)
end

-- Wait for the first of the given tasks to end: true and its results, or
-- false and its error.  A task that already ended answers at once.
function M.wait(...)
  local n = select("#", ...)
  if n == 0 then error("thread.wait expects at least one thread", 2) end
  for i = 1, n do
    local t = select(i, ...)
    if type(t) ~= "table" or t.seq == nil then
      error("thread.wait: argument " .. i .. " is not a thread", 2)
    end
    if t.done then return results(t) end
  end
  local me = M.need("thread.wait")
  if n == 1 and select(1, ...) == me then error("a thread cannot wait for itself", 2) end
  local seq = M.begin_wait(me)
  for i = 1, n do
    local t = select(i, ...)
    local ws = t.waiters
    if not ws then ws = {}; t.waiters = ws end
    ws[#ws + 1] = me
    ws[#ws + 1] = seq
  end
  local t = coyield()
  return results(t)
end

-- Wait for every given task; returns a list of { ok, results... } tables,
-- in the order given.
function M.wait_all(...)
  local out = {}
  for i = 1, select("#", ...) do
    local t = select(i, ...)
    out[i] = { M.wait(t) }
  end
  return out
end

-- For ringline.stats-style checks: coroutines idle in the pool.
function M.pooled() return nidle end

return M
