-- ringline: what a service script can use: logging, worker facts, counters.
local ffi = require "ffi"
require "ringline.cdef"
local C = ffi.C

local M = { version = ffi.string(C.rl_version()) }

local W            -- this state's worker, set by the loop
local worker_id = -1

function M._bind(w)
  W = w
  worker_id = C.rl_worker_id(w)
end

local function log(level, ...)
  if C.rl_log_enabled(level) == 0 then return end
  local n = select("#", ...)
  local parts = { ... }
  for i = 1, n do parts[i] = tostring(parts[i]) end
  C.rl_log_msg(level, worker_id, table.concat(parts, " ", 1, n))
end

function M.log(level, ...)
  local l = ({ error = 0, warn = 1, info = 2, debug = 3 })[level]
  if not l then error("log level must be error, warn, info or debug", 2) end
  log(l, ...)
end
function M.error(...) log(C.RL_LOG_ERROR, ...) end
function M.warn(...) log(C.RL_LOG_WARN, ...) end
function M.info(...) log(C.RL_LOG_INFO, ...) end
function M.debug(...) log(C.RL_LOG_DEBUG, ...) end

-- Which worker this Lua state belongs to (0-based), and how many there are.
function M.worker_id() return worker_id end
function M.workers() return W and C.rl_worker_count(W) or 0 end

-- This worker's counters, as a fresh table of numbers.
function M.stats()
  if not W then return {} end
  local s = C.rl_worker_stats(W)
  return {
    accepted = tonumber(s.accepted), rejected = tonumber(s.rejected),
    closed = tonumber(s.closed), bytes_in = tonumber(s.bytes_in),
    bytes_out = tonumber(s.bytes_out), enobufs = tonumber(s.enobufs),
    paused = tonumber(s.paused), residue_copied = tonumber(s.residue_copied),
    handler_errors = tonumber(s.handler_errors),
    reloads = tonumber(s.reloads), reloads_failed = tonumber(s.reloads_failed),
    handler_timeouts = tonumber(s.handler_timeouts),
    lua_memory = tonumber(s.lua_memory),
    lua_memory_errors = tonumber(s.lua_memory_errors),
    accept_errors = tonumber(s.accept_errors), sq_full = tonumber(s.sq_full),
    cq_overflows = tonumber(s.cq_overflows), cq_dropped = tonumber(s.cq_dropped),
    heap_trims = tonumber(s.heap_trims),
    client_memory_closes = tonumber(s.client_memory_closes),
    held_copied = tonumber(s.held_copied),
    file_bytes_direct = tonumber(s.file_bytes_direct),
    client_memory = tonumber(s.client_memory),
    buffers_held = tonumber(s.buffers_held),
    conns = tonumber(s.conns), buffers_leased = tonumber(s.buffers_leased),
  }
end

M.slice = require "ringline.slice"

-- ringline.connect(addr, handlers[, {timeout = ms}]) -> conn | nil, err
M.connect = function(...) return require("ringline.conn").connect(...) end

local coro = require "ringline.coro"
-- Coroutines: ringline.spawn(fn, ...) runs fn now, up to its first wait;
-- ringline.sleep(ms); ringline.thread.spawn / wait (the first of several
-- to end) / wait_all; ringline.tcp() a sequential socket (ringline.cosocket).
M.spawn, M.sleep = coro.spawn, coro.sleep
M.thread = { spawn = coro.spawn, wait = coro.wait, wait_all = coro.wait_all }
M.tcp = function() return require("ringline.cosocket").tcp() end

local timer = require "ringline.timer"
-- Timers: ringline.after(ms, fn), ringline.every(ms, fn); t:cancel().
-- Time: now_ms() (monotonic) and unix_ms() (wall clock), both the time the
-- current batch of events was polled.
M.after, M.every = timer.after, timer.every
M.now_ms, M.unix_ms = timer.now_ms, timer.unix_ms

return M
