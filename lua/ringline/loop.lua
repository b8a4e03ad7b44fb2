-- ringline.loop: a worker's event loop, driven from Lua.
--
-- C hands over a batch of events per rl_worker_poll() call; this loop
-- dispatches the whole batch inside one compiled trace, with a single pcall
-- around the batch rather than one per event.  When a handler raises, the
-- connection it was serving is closed and dispatch resumes at the next event.
local ffi = require "ffi"
require "ringline.cdef"
local slice = require "ringline.slice"
local connmod = require "ringline.conn"
local service = require "ringline.service"
local ringline = require "ringline"
local timer = require "ringline.timer"
local guard = require "ringline.guard"
local coro = require "ringline.coro"
local cosocket = require "ringline.cosocket"

local C = ffi.C
local pcall, type, tostring = pcall, type, tostring
local new_slice, release = slice.new, slice.release

local EV_OPEN, EV_DATA, EV_CLOSE, EV_RELOAD =
  C.RL_EV_OPEN, C.RL_EV_DATA, C.RL_EV_CLOSE, C.RL_EV_RELOAD
local EV_CONNECT, EV_EOF, EV_DRAIN = C.RL_EV_CONNECT, C.RL_EV_EOF, C.RL_EV_DRAIN
local EV_STOP = C.RL_EV_STOP
local MAX_EVENTS = 256

local M = {}
local W, W_stats     -- this worker and its rl_stats *, once prepare() ran
local NOMEM_HINT = " (an allocation would have passed --lua-memory)"

local REASONS = {
  [C.RL_CLOSE_PEER] = "peer", [C.RL_CLOSE_LOCAL] = "local",
  [C.RL_CLOSE_ERROR] = "error", [C.RL_CLOSE_UNCONSUMED] = "unconsumed",
  [C.RL_CLOSE_SHUTDOWN] = "shutdown", [C.RL_CLOSE_TIMEOUT] = "timeout",
  [C.RL_CLOSE_RUNAWAY] = "handler-timeout", [C.RL_CLOSE_NOMEM] = "lua-memory",
  [C.RL_CLOSE_CLIENT_MEMORY] = "client-memory",
}

local function reason_text(res)
  return REASONS[res] or ffi.string(C.rl_close_reason_text(res))
end

local function is_nomem(err)
  return type(err) == "string" and err:find("not enough memory", 1, true) ~= nil
end

-- Count what a failed call was: a runaway the watchdog stopped, an
-- allocation past --lua-memory, or the script's own error.  Returns the
-- close reason for its connection and the words for the log.
local function classify(w, err)
  local stats = C.rl_worker_stats(w)
  stats.handler_errors = stats.handler_errors + 1
  if guard.caught(err) then
    stats.handler_timeouts = stats.handler_timeouts + 1
    return C.RL_CLOSE_RUNAWAY, "stopped"
  elseif is_nomem(err) then
    return C.RL_CLOSE_NOMEM, "failed", NOMEM_HINT
  end
  return C.RL_CLOSE_ERROR, "handler error", ""
end

local function handler_error(w, c, err)
  -- After a refused allocation the reserve past --lua-memory is open (the
  -- allocator opened it) for the log line and the close; closed below.
  local reason, what, hint = classify(w, err)
  if c then
    ringline.error(("conn %d (%s): %s: %s%s"):format(
      c.id, c.closed and "closed" or c.peer, what, tostring(err), hint))
    if not c.closed then
      C.rl_conn_close(w, c._idx, c._gen, reason, 0)
    end
  else
    ringline.error(("%s: %s%s"):format(what, tostring(err), hint))
  end
  if reason == C.RL_CLOSE_NOMEM then
    -- What the failed call built is garbage now; give it back before the
    -- next call needs the room.
    collectgarbage()
    ringline.info(("lua memory in use after the collection: %d KiB")
      :format(collectgarbage("count")))
  end
  C.rl_lua_memory_relax(w, 0)
end

-- A timer callback raised: log it; a periodic timer that ran away would run
-- away again every period, so it is cancelled.
local function timer_error(w, t, err)
  local reason, _, hint = classify(w, err)
  if reason == C.RL_CLOSE_RUNAWAY and t.period then
    t:cancel()
    ringline.error("timer callback stopped, periodic timer cancelled: " ..
      tostring(err))
  else
    ringline.error("timer callback failed: " .. tostring(err) .. hint)
  end
  if reason == C.RL_CLOSE_NOMEM then collectgarbage() end
  C.rl_lua_memory_relax(w, 0)
end

-- -- Reload ------------------------------------------------------------------
--
-- Modules the script loaded from its own directory tree are loaded afresh on
-- every reload; ringline's own modules and the standard library are not
-- (they hold FFI declarations that cannot be made twice).

local script_dir
local baseline = {}       -- modules loaded before the script
local script_modules = {} -- name -> true: reloaded with the script

local function in_script_dir(name)
  local path = package.searchpath(name, package.path)
  return path ~= nil and path:sub(1, #script_dir + 1) == script_dir .. "/"
end

local function note_script_modules()
  script_modules = {}
  for name in pairs(package.loaded) do
    if not baseline[name] and in_script_dir(name) then
      script_modules[name] = true
    end
  end
end

-- Load the script, run init() and, if the new version has it, reload(old).
-- Returns the new service table, or nil and the error.  package.loaded is
-- left as the new version needs it; undo() puts the old one back.
local function load_version(script, old)
  local saved = {}
  for name in pairs(script_modules) do
    saved[name] = package.loaded[name]
    package.loaded[name] = nil
  end
  local function undo()
    for name in pairs(package.loaded) do
      if not baseline[name] and in_script_dir(name) then
        package.loaded[name] = nil
      end
    end
    for name, m in pairs(saved) do package.loaded[name] = m end
  end
  -- Loading, init() and reload(old) are one call for the watchdog.
  local g = guard.ptr()
  g.seq = g.seq + 1
  local ok, svc = pcall(function()
    local s = service.load(script)
    if s.init then
      local ok, err = pcall(s.init)
      if not ok then
        if is_nomem(err) then
          err = err .. NOMEM_HINT
        end
        error(("script %s: init failed: %s"):format(script, tostring(err)), 0)
      end
    end
    if s.reload and old then
      local ok, err = pcall(s.reload, old)
      if not ok then
        error(("script %s: reload(old) failed: %s"):format(script,
          tostring(err)), 0)
      end
    end
    return s
  end)
  if not ok then
    -- A stop is over with the call it stopped; count it.
    if g.stop ~= 0 or (type(svc) == "string" and svc:find(guard.MARK, 1, true)) then
      g.stop = 0
      if W_stats then W_stats.handler_timeouts = W_stats.handler_timeouts + 1 end
    end
    if svc == "not enough memory" then
      svc = ("script %s: not enough memory%s"):format(script, NOMEM_HINT)
    end
    undo()
    collectgarbage()
    C.rl_lua_memory_relax(W, 0)
    return nil, svc
  end
  return svc, undo
end

-- A task failed: counted and logged as a handler error; an accepted
-- connection its on_connect owned is closed (coroutine_exit).
local function coroutine_error(w, task, err)
  local reason, what, hint = classify(w, err)
  local c = task.owns
  ringline.error(("%scoroutine %s: %s%s"):format(
    c and ("conn %d: "):format(c.id) or "", what, tostring(err), hint))
  if c and not c.closed then C.rl_conn_close(w, c._idx, c._gen, reason, 0) end
  if reason == C.RL_CLOSE_NOMEM then collectgarbage() end
  C.rl_lua_memory_relax(w, 0)
end

-- on_connect returned (or failed): its connection closes once what it
-- queued is sent.
local function coroutine_exit(task)
  local c = task.owns
  if c and not c.closed then c:close() end
end

local function bad_consumed(k)
  error(("on_data must return the number of bytes consumed or nil, got %s")
    :format(type(k) == "number" and tostring(k) or type(k)), 0)
end

local function run(w, svc, script)
  local evs = ffi.new("rl_event[?]", MAX_EVENTS)
  local conns = connmod.live
  local on_open, on_data, on_close = svc.on_open, svc.on_data, svc.on_close
  local on_eof, on_drain = svc.on_eof, svc.on_drain
  local on_connect = svc.on_connect
  local prefetch = svc.prefetch
  local co_handlers = cosocket.handlers
  local spawn_with = coro.spawn_with

  local run_due, now_ms = timer.run_due, timer.now_ms
  timer.use_clock(C.rl_worker_clock(w))
  local i, n = 0, 0
  local cur
  local now = now_ms()
  local wake_at = 0
  local version = 1
  timer.set_owner(version)

  -- Every worker loads the new version, then all vote; the handlers switch
  -- only if every worker succeeded.  Connections, their state tables,
  -- unconsumed bytes and queued sends are untouched either way.
  local function reload()
    timer.set_owner(version + 1)
    local round = C.rl_reload_round(w)
    -- Whatever happens while loading, this worker votes.
    local pok, new, undo = pcall(load_version, script, svc)
    if not pok then new, undo = nil, new end
    if not new then ringline.error("reload failed: " .. tostring(undo)) end
    local ok = C.rl_reload_vote(w, new and 1 or 0, round) == 1
    -- Periodic timers of the version that lost go; see ringline.timer.
    timer.cancel_owner(ok and version or version + 1)
    if not ok then
      timer.set_owner(version)
      if new then undo() end
      return
    end
    version = version + 1
    svc = new
    on_open, on_data, on_close = svc.on_open, svc.on_data, svc.on_close
    on_eof, on_drain = svc.on_eof, svc.on_drain
    on_connect = svc.on_connect
    prefetch = svc.prefetch
    C.rl_worker_set_max_unconsumed(w, svc.max_unconsumed or 0)
    note_script_modules()
  end
  local new_conn = connmod.new
  -- Every handler call gets a new number: the watchdog times calls, not
  -- batches (a batch of 256 quick calls is not one long one).
  local gp = guard.ptr()

  -- Poll and dispatch in one loop, so the whole thing compiles into one
  -- trace (with side traces per event type) instead of returning to the
  -- interpreter after every batch.  It returns only when the worker stops.
  local function serve()
    while true do
      if i >= n then
        cur = nil
        local next_at = run_due(now) or 0
        if next_at ~= wake_at then
          wake_at = next_at
          C.rl_worker_wake_at(w, next_at * 1e6)
        end
        n = C.rl_worker_poll(w, evs, MAX_EVENTS)
        i = 0
        now = now_ms()
        if n < 0 then return end
        if prefetch and n > 1 then
          C.rl_worker_prefetch(w, evs, n, prefetch, #prefetch)
        end
      else
        -- Events are read through evs[ei], never held as an `rl_event *`
        -- local: a pointer in a local is boxed (one GC object per event)
        -- wherever a side trace starts with it live.
        local ei = i
        i = i + 1
        gp.seq = gp.seq + 1
        local t = evs[ei].type
        if t == EV_DATA then
          local c = conns[evs[ei].conn]
          if c and C.rl_rx_begin(w, evs + ei) == 0 then
            cur = c
            c._last = now
            local h = c._h
            local f = h and h.on_data or on_data
            repeat
              gp.seq = gp.seq + 1
              local k = f(c, new_slice(evs[ei].ptr, evs[ei].len, evs[ei].bid))
              release()
              if k == nil then
                k = evs[ei].len
              elseif type(k) ~= "number" or k < 0 then
                bad_consumed(k)
              end
            until C.rl_rx_consumed(w, evs + ei, k) ~= 1
          end
        elseif t == EV_OPEN then
          local e = evs[ei]
          local c = new_conn(e.conn, e.gen)
          c.listener = e.res + 1     -- which listen address, 1-based
          if on_connect then
            -- A sequential service: one task per connection, reading
            -- through a cosocket; its handlers are the cosocket's.
            cur = c
            c._h = co_handlers
            local sock = cosocket.accepted(c)
            spawn_with(coroutine_exit, c, on_connect, sock)
            release()
          elseif on_eof then C.rl_conn_set_eof_event(w, e.conn, e.gen, 1) end
          if on_open and not on_connect then
            cur = c
            on_open(c)
            release()
          end
        elseif t == EV_CLOSE then
          local e = evs[ei]
          local c = conns[e.conn]
          if c and c._gen == e.gen then
            conns[e.conn] = nil
            c.closed = true
            if c._idle_timer then c._idle_timer:cancel() end
            local h = c._h
            local f = h and h.on_close or (not h and on_close)
            if f then
              cur = c
              -- A reason C put in words (a name that did not resolve).
              f(c, e.len > 0 and ffi.string(e.ptr, e.len) or reason_text(e.res))
            end
          end
        elseif t == EV_CONNECT then
          local e = evs[ei]
          local c = conns[e.conn]
          if c and c._gen == e.gen and c._h.on_open then
            cur = c
            c._h.on_open(c)
            release()
          end
        elseif t == EV_EOF or t == EV_DRAIN then
          local e = evs[ei]
          local c = conns[e.conn]
          -- An EOF waits behind bytes left unconsumed while paused: it
          -- comes again once they have been offered after the resume.
          if c and c._gen == e.gen and (t ~= EV_EOF or C.rl_rx_eof(w, e) == 0) then
            local h = c._h
            local f
            if t == EV_EOF then f = h and h.on_eof or (not h and on_eof)
            else f = h and h.on_drain or (not h and on_drain) end
            if f then
              cur = c
              f(c)
            end
          end
        elseif t == EV_RELOAD then
          cur = nil
          reload()
        elseif t == EV_STOP then
          -- SIGTERM: tasks finish what they are doing; those waiting for
          -- a client's next request end (cosocket.stop).
          cur = nil
          cosocket.stop()
          release()
        end
      end
    end
  end

  -- One pcall for the life of the loop; a handler error lands here, the
  -- connection it was serving is closed, and serving resumes with the
  -- next event of the same batch.
  while true do
    local ok, err = pcall(serve)
    if ok then break end
    release()
    handler_error(w, cur, err)
    cur = nil
  end
end

-- Load the script in this worker's state and run its init(); return the
-- function that runs the loop.  Errors here stop the process at startup.
function M.prepare(wptr, script)
  local w = ffi.cast("rl_worker *", wptr)
  -- The protocol parsers are long straight-line code: a side trace through
  -- a whole HTTP request head holds more than LuaJIT's default 500 IR
  -- constants, aborts ("trace too long") and leaves that path to the
  -- interpreter.  RINGLINE_JIT_OPT ("maxirconst=N maxrecord=N ...")
  -- overrides or adds to these.
  jit.opt.start("maxirconst=2000")
  local jit_opt = os.getenv("RINGLINE_JIT_OPT")
  if jit_opt and jit_opt ~= "" then
    local opts = {}
    for o in jit_opt:gmatch("%S+") do opts[#opts + 1] = o end
    local ok, err = pcall(jit.opt.start, unpack(opts))
    if not ok then error("RINGLINE_JIT_OPT: " .. tostring(err), 0) end
  end
  -- RINGLINE_JIT_LOG=FILE: LuaJIT's own trace log (jit.v), to see which
  -- handler paths compile and why a trace aborts.  Every worker appends.
  local jit_log = os.getenv("RINGLINE_JIT_LOG")
  if jit_log and jit_log ~= "" then require("jit.v").on(jit_log) end
  -- RINGLINE_JIT_PROFILE=MODE[,FILE]: LuaJIT's sampling profiler (jit.p),
  -- e.g. "v" for time per VM state, "Fl" for functions and lines; the
  -- report is written when the worker stops.
  local profile = os.getenv("RINGLINE_JIT_PROFILE")
  local profiler
  if profile and profile ~= "" then
    local mode, file = profile:match("^([^,]*),?(.*)$")
    profiler = require("jit.p")
    profiler.start(mode, file ~= "" and file or nil)
  end
  ringline._bind(w)
  W, W_stats = w, C.rl_worker_stats(w)
  timer.set_logger(ringline.error)
  timer.set_error_handler(function(t, err) timer_error(w, t, err) end)
  coro.set_error_handler(function(task, err) coroutine_error(w, task, err) end)
  connmod.bind(w)
  script_dir = script:match("^(.*)/[^/]*$") or "."
  for name in pairs(package.loaded) do baseline[name] = true end
  timer.set_owner(1)      -- version 1: its init() may start periodic timers
  local svc, err = load_version(script, nil)
  if not svc then error(err, 0) end
  note_script_modules()
  if svc.max_unconsumed then
    C.rl_worker_set_max_unconsumed(w, svc.max_unconsumed)
  end
  return function()
    run(w, svc, script)
    if profiler then profiler.stop() end
  end
end

return M
