-- Tests for lua/ringline/coro.lua: tasks run at once up to their first
-- wait, wakes name their wait, results and errors reach thread.wait, and
-- coroutines are reused.
local coro = require "ringline.coro"
local t = require "testutil"

local eq = t.eq

local T = {}

-- A task that waits until the test wakes it: returns the task and a
-- function that wakes it with values.
local function parked(fn)
  local w = {}
  local task = coro.spawn(function()
    local me = coro.current()
    w.seq = coro.begin_wait(me)
    return fn(coro.yield())
  end)
  return task, function(...) return coro.wake(task, w.seq, ...) end, w
end

T.runs_at_once_until_it_waits = function()
  local log = {}
  local task, wake = parked(function(a, b)
    log[#log + 1] = "woken " .. a .. b
    return a + b
  end)
  eq(task.done, false, "waiting")
  eq(task.waiting, true, "waiting flag")
  eq(wake(2, 3), true, "the wake reached it")
  eq(log[1], "woken 23", "values passed")
  eq(task.done, true, "ended")
  eq(select("#", coro.wait(task)), 2, "ok and one result")
  local ok, v = coro.wait(task)
  eq(ok, true); eq(v, 5)
end

T.stale_wakes_do_nothing = function()
  local task, wake, w = parked(function(x) return x end)
  eq(coro.wake(task, w.seq + 1, "wrong"), false, "a later wait's number")
  eq(coro.wake(task, w.seq - 1, "old"), false, "an earlier wait's number")
  eq(task.done, false, "still waiting")
  eq(wake("right"), true)
  eq(wake("again"), false, "a second wake of the same wait")
  local _, v = coro.wait(task)
  eq(v, "right")
end

T.errors_end_only_their_task = function()
  local seen
  coro.set_error_handler(function(task, err) seen = err end)
  local task = coro.spawn(function() error("bad thing") end)
  eq(task.done, true)
  local ok, err = coro.wait(task)
  eq(ok, false)
  eq(err:find("bad thing", 1, true) ~= nil, true, "the message")
  eq(err:find("test_coro.lua:%d+") ~= nil, true, "the line it came from")
  eq(seen, err, "the error handler saw it")
  eq(coro.spawn(function() return 1 end).done, true, "the next task runs")
  coro.set_error_handler(function() end)
end

T.wait_returns_the_first_to_end = function()
  local a, wake_a = parked(function() return "a" end)
  local b, wake_b = parked(function() return "b" end)
  local got
  local waiter = coro.spawn(function() got = { coro.wait(a, b) } end)
  eq(waiter.done, false, "neither ended yet")
  wake_b()
  eq(waiter.done, true, "woken by b")
  eq(got[1], true); eq(got[2], "b")
  wake_a()                           -- the waiter's wait is over: ignored
  eq(a.done, true)
  local all
  local w2 = coro.spawn(function() all = coro.wait_all(a, b) end)
  eq(w2.done, true, "both had ended")
  eq(all[1][2], "a"); eq(all[2][2], "b")
end

T.coroutines_are_reused = function()
  local before = coro.pooled()
  coro.spawn(function() end)
  eq(coro.pooled() >= 1, true, "an ended task's coroutine is pooled")
  local n = coro.pooled()
  local co1
  coro.spawn(function() co1 = coroutine.running() end)
  local co2
  coro.spawn(function() co2 = coroutine.running() end)
  eq(co1, co2, "the same coroutine ran both")
  eq(coro.pooled(), n, "and went back")
  eq(before >= 0, true)
end

T.outside_a_task_is_an_error = function()
  local ok, err = pcall(coro.sleep, 1)
  eq(ok, false)
  eq(err:find("must be called from a coroutine", 1, true) ~= nil, true, err)
  ok, err = pcall(coro.spawn, 42)
  eq(ok, false)
  eq(err:find("spawn expects a function", 1, true) ~= nil, true, err)
end

return T
