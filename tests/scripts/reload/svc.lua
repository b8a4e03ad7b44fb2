-- Hot-reload test service (tests/integration/test_reload.py).  The tests copy
-- this directory to a temp dir, rewrite the "-- @NAME" lines there and insert
-- faulty code at the "-- @inject..." markers.
--
-- Line protocol, every reply starts with the version:
--   count       -> "<V> count conn=<n> total=<t> gen=<g> w=<worker>"
--                  n: per-connection counter (conn.state), t: module counter
--                  of this worker (carried over by reload(old)), g: versions
--                  this worker has run (1 + successful reloads)
--   info        -> "<V> info lib=<lib.K> helper=<sub.helper.NAME> gen=<g>
--                   init=<yes|no> w=<worker>"
--   stats       -> "<V> stats reloads=<n> failed=<n> w=<worker>"
--   big <n>     -> "<V> big <n>\n" then n bytes of "0123456789abcdef..." then "\n"
--   anything    -> "<V> <line>"
local ringline = require "ringline"
local lib = require "lib"
local helper = require "sub.helper"
-- @inject-top

local VERSION = "v1" -- @VERSION

-- Module state: lives in this version's closure; reload(old) carries it on.
local state = { total = 0, gen = 1 }
local initialized = false
local fmt = string.format

local function answer(conn, line)
  local w = ringline.worker_id()
  local cmd, arg = line:match("^(%S*) ?(.*)$")
  if cmd == "count" then
    conn.state.count = conn.state.count + 1
    state.total = state.total + 1
    conn:send(fmt("%s count conn=%d total=%d gen=%d w=%d\n", VERSION,
                  conn.state.count, state.total, state.gen, w))
  elseif cmd == "info" then
    conn:send(fmt("%s info lib=%s helper=%s gen=%d init=%s w=%d\n", VERSION,
                  tostring(lib.K), tostring(helper.NAME), state.gen,
                  initialized and "yes" or "no", w))
  elseif cmd == "stats" then
    local s = ringline.stats()
    conn:send(fmt("%s stats reloads=%d failed=%d w=%d\n", VERSION, s.reloads,
                  s.reloads_failed, w))
  elseif cmd == "big" then
    local n = tonumber(arg) or 0
    local unit = "0123456789abcdef"
    local body = string.rep(unit, math.floor(n / 16)) .. unit:sub(1, n % 16)
    conn:send(fmt("%s big %d\n", VERSION, n))
    conn:send(body .. "\n")
  else
    conn:send(VERSION .. " " .. line .. "\n")
  end
end

local M = { listen = "tcp://127.0.0.1:7421", state = state }

function M.init()
  -- @inject-init
  initialized = true
end

function M.reload(old)
  -- @inject-reload
  if type(old.state) == "table" then
    state.total = old.state.total
    state.gen = old.state.gen + 1
  end
end

function M.on_open(conn)
  conn.state.count = 0
end

function M.on_data(conn, data)
  local total, pos = #data, 1
  while pos <= total do
    local nl = data:find("\n", pos)
    if not nl then break end
    answer(conn, data:tostring(pos, nl - 1))
    pos = nl + 1
  end
  return pos - 1
end

-- @inject-end
return M
