-- ringline.timer: one-shot and periodic timers of a worker, in a binary heap.
--
-- Timers live in the worker's Lua state; the loop tells C the earliest
-- deadline so the poll returns in time, and fires what is due after each
-- poll.  A callback that raises is logged; a periodic timer keeps running.
--
-- Reload rule: a periodic timer belongs to the script version that created
-- it and is cancelled when a new version takes over (its init() starts its
-- own).  A one-shot timer is in-flight work and always runs, whichever
-- version is serving by then.
local ffi = require "ffi"
require "ringline.cdef"
local guard = require "ringline.guard"

local C = ffi.C
local floor, tostring, pcall = math.floor, tostring, pcall

local M = {}
local heap, count = {}, 0
local owner = 0            -- the script version creating timers now
local log_error = function(msg) io.stderr:write(msg, "\n") end
-- A callback's error, after the default of logging it: the loop counts
-- runaways (see ringline.guard) and cancels a periodic timer that ran away.
local on_error = function(t, err) log_error("timer callback failed: " .. tostring(err)) end

local Timer = {}
Timer.__index = Timer

-- The same clock the C core waits with (CLOCK_MONOTONIC), read through
-- libc so the module also works outside the ringline binary.
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } rl_timespec;
int clock_gettime(int clk, rl_timespec *ts);
]])
local ts = ffi.new("rl_timespec")
local CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1

-- While a worker's loop runs, time is the worker's clock, read once per
-- poll (rl_worker_clock): one time per batch, no clock read per request.
-- Before that (a script's top level and init) and outside ringline, the
-- clock is read on every call.
local clock = nil

local function now_ms()
  if clock then return tonumber(clock.mono_ns) / 1e6 end
  C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) / 1e6
end
M.now_ms = now_ms

-- Wall clock in whole ms since the epoch (for expiry times).
function M.unix_ms()
  if clock then return tonumber(clock.unix_ms) end
  C.clock_gettime(CLOCK_REALTIME, ts)
  return tonumber(ts.tv_sec) * 1e3 + floor(tonumber(ts.tv_nsec) / 1e6)
end

-- c: the worker's const rl_clock *, or nil to read the clock on every call.
function M.use_clock(c) clock = c end

local function swap(i, j)
  local a, b = heap[i], heap[j]
  heap[i], heap[j] = b, a
  a.slot, b.slot = j, i
end

local function up(i)
  while i > 1 do
    local p = floor(i / 2)
    if heap[p].at <= heap[i].at then break end
    swap(i, p)
    i = p
  end
end

local function down(i)
  while true do
    local l, s = i * 2, i
    if l <= count and heap[l].at < heap[s].at then s = l end
    if l + 1 <= count and heap[l + 1].at < heap[s].at then s = l + 1 end
    if s == i then return end
    swap(i, s)
    i = s
  end
end

local function push(t)
  count = count + 1
  heap[count] = t
  t.slot = count
  up(count)
end

local function remove(t)
  local i = t.slot
  if not i then return end
  t.slot = nil
  if i ~= count then
    heap[i] = heap[count]
    heap[i].slot = i
    heap[count] = nil
    count = count - 1
    down(i)
    up(i)
  else
    heap[count] = nil
    count = count - 1
  end
end

local function new(ms, fn, period)
  if type(ms) ~= "number" or ms < 0 then
    error("timer delay must be a number of milliseconds >= 0", 3)
  end
  if type(fn) ~= "function" then error("timer callback must be a function", 3) end
  local t = setmetatable({ at = now_ms() + ms, fn = fn, period = period,
                           owner = period and owner or nil }, Timer)
  push(t)
  return t
end

-- Run fn once after ms milliseconds.
function M.after(ms, fn) return new(ms, fn, nil) end

-- Run fn every ms milliseconds (at least 1).
function M.every(ms, fn)
  if type(ms) ~= "number" or ms < 1 then
    error("timer period must be at least 1 ms", 2)
  end
  return new(ms, fn, ms)
end

function Timer:cancel()
  self.cancelled = true
  remove(self)
end

function Timer:active()
  return self.slot ~= nil
end

-- Fire everything due by now; returns the next deadline in ms, or nil.
function M.run_due(now)
  while count > 0 do
    local t = heap[1]
    if t.at > now then return t.at end
    remove(t)
    if t.period then
      -- Next tick from the schedule, not from now, so it does not drift;
      -- but never in the past after a long stall.
      t.at = t.at + t.period
      if t.at <= now then t.at = now + t.period end
      push(t)
    end
    -- Each callback is one call for the watchdog (--handler-timeout).
    local g = guard.ptr()
    g.seq = g.seq + 1
    local ok, err = pcall(t.fn, t)
    if not ok then on_error(t, err) end
  end
  return nil
end

function M.next_deadline()
  return count > 0 and heap[1].at or nil
end

function M.count() return count end

-- Reload support: tag periodic timers with the version creating them, and
-- cancel a version's periodic timers.
function M.set_owner(v) owner = v end
function M.cancel_owner(v)
  local doomed = {}
  for i = 1, count do
    if heap[i].owner == v then doomed[#doomed + 1] = heap[i] end
  end
  for _, t in ipairs(doomed) do t:cancel() end
end

function M.set_logger(fn) log_error = fn end
-- fn(timer, err): what happens when a callback raises.
function M.set_error_handler(fn) on_error = fn end

function M.selftest()
  local fired = {}
  M.after(0, function() fired[#fired + 1] = "a" end)
  local p = M.every(1, function() fired[#fired + 1] = "p" end)
  local late = M.after(1e6, function() fired[#fired + 1] = "late" end)
  M.run_due(now_ms() + 1.5)
  assert(fired[1] == "a" and fired[2] == "p", "due timers fire in order")
  p:cancel()
  late:cancel()
  assert(count == 0, "cancel removes timers")
  return true
end

return M
