-- ringline.guard: script code compiled with runaway checks (--handler-timeout).
--
-- LuaJIT runs no hooks in compiled code, so a compiled `while true do end`
-- can only be stopped by code inside the loop.  Every chunk of script code
-- (the service script, modules required from outside ringline's own
-- directory, and whatever the script loads at run time) is rewritten before
-- it is compiled: at the start of every loop body (`do`, `repeat`), after
-- every goto label and at every function entry goes
--
--   __rl_f(__rl_b,1) if __rl_g.stop~=0 then __rl_x() end
--
-- on the same line, so line numbers do not move.  The one-byte ffi.fill
-- emits a memory barrier (XBAR) in the trace: without it LuaJIT hoists the
-- load of stop out of the loop and the loop never sees it change (measured:
-- the load alone, even through a `volatile` pointer, is hoisted).  Cost in a
-- compiled loop: one byte store and one load and compare, ~0.01 ns per
-- iteration measured on a tight numeric loop; see README "Runaway handlers".
--
-- The watchdog thread (core/rl_watchdog.c) sets stop when one call has run
-- past the timeout; __rl_x raises an error there, in the worker's own
-- thread.  While stop stays set every check raises again, so a script's
-- own pcall cannot swallow it for long: the loop's catch clears it.
local ffi = require "ffi"
require "ringline.cdef"

local fill, getinfo = ffi.fill, debug.getinfo
local sub, byte, find, format = string.sub, string.byte, string.find, string.format

local M = {}

-- The error text every stop starts with (loop.lua and timer.lua look for it).
M.MARK = "handler timeout"

-- Unbound (plain luajit, tests): a guard of our own that never stops.
local G = ffi.new("rl_guard")
local barrier = ffi.cast("uint8_t *", G.barrier)

local function stop()
  local g = G
  -- The call this stop was meant for ended before we got here.
  if g.stop_seq ~= g.seq then g.stop = 0 return end
  local info = getinfo(2, "Sl")
  local where = info and format("%s:%d", info.short_src, info.currentline or 0)
    or "?"
  error(format("%s: ran %d ms, longer than --handler-timeout %d ms; stopped at %s",
    M.MARK, g.ran_ms, g.limit_ms, where), 0)
end

-- What an instrumented chunk's first line asks for.
local function env() return fill, barrier, G, stop end

-- Unbound states (plain luajit: tests, tools) can run guarded chunks too.
rawset(_G, "__ringline_guard", env)

local CHECK = " __rl_f(__rl_b,1) if __rl_g.stop~=0 then __rl_x() end "
local PROLOGUE = "local __rl_f,__rl_b,__rl_g,__rl_x=__ringline_guard();"

-- Position after a long bracket opening at i ("[[", "[==["), and its level,
-- or nil when there is none.
local function long_open(src, i)
  local s, e, eq = find(src, "^%[(=*)%[", i)
  if s then return e + 1, eq end
end

-- Position after the end of a long bracket of level eq that starts at i.
local function long_close(src, i, eq)
  local _, e = find(src, "]" .. eq .. "]", i, true)
  return e and e + 1 or #src + 1
end

-- Position after a quoted string whose quote q is at i.
local function quoted_end(src, i, q)
  local j = i + 1
  while true do
    local s = find(src, q == 34 and '[\\"\n]' or "[\\'\n]", j)
    if not s then return #src + 1 end
    local c = byte(src, s)
    if c == 92 then j = s + 2        -- a backslash escapes what follows
    else return s + 1 end            -- the closing quote (or a bad newline)
  end
end

-- The source with checks inserted; strings and comments are skipped, so
-- only real keywords count.  Lines stay where they were.
function M.instrument(src)
  local out, n = {}, 0
  local last, i, len = 1, 1, #src
  local in_params = false        -- after `function`, before its `)`
  local function put_check(after)
    n = n + 1
    out[n] = sub(src, last, after - 1)
    n = n + 1
    out[n] = CHECK
    last = after
  end
  while i <= len do
    local c = byte(src, i)
    if c == 45 and byte(src, i + 1) == 45 then            -- comment
      local j, eq = long_open(src, i + 2)
      if j then i = long_close(src, j, eq)
      else
        local e = find(src, "\n", i + 2, true)
        i = e and e + 1 or len + 1
      end
    elseif c == 34 or c == 39 then                        -- "..." '...'
      i = quoted_end(src, i, c)
    elseif c == 91 then                                   -- [[...]]
      local j, eq = long_open(src, i)
      if j then i = long_close(src, j, eq) else i = i + 1 end
    elseif (c >= 97 and c <= 122) or (c >= 65 and c <= 90) or c == 95 then
      local s, e = find(src, "^[%w_]+", i)
      local w = sub(src, s, e)
      i = e + 1
      if w == "do" or w == "repeat" then put_check(i)
      elseif w == "function" then in_params = true end
    elseif c >= 48 and c <= 57 then                       -- a number
      local _, e = find(src, "^[%w%.]+", i)
      i = e + 1
      -- 1e+5, 0x1p-3: the sign belongs to the number.
      local p = byte(src, e)
      if (p == 101 or p == 69 or p == 112 or p == 80) and
         (byte(src, i) == 43 or byte(src, i) == 45) then
        local _, e2 = find(src, "^[%+%-][%w%.]*", i)
        i = e2 + 1
      end
    elseif c == 41 and in_params then                     -- end of params
      in_params = false
      i = i + 1
      put_check(i)
    elseif c == 58 and byte(src, i + 1) == 58 then        -- ::label::
      local _, e = find(src, "^::%s*[%a_][%w_]*%s*::", i)
      if e then i = e + 1 put_check(i) else i = i + 2 end
    else
      i = i + 1
    end
  end
  n = n + 1
  out[n] = sub(src, last)
  return table.concat(out)
end

-- A shebang line is skipped by loadfile; keep it out of the code, on its line.
local function prepare(src)
  if byte(src, 1) == 35 then src = "--" .. src end
  return PROLOGUE .. M.instrument(src)
end

local raw_load, raw_loadstring, raw_loadfile = load, loadstring, loadfile
local open = io.open

local function is_binary(s) return byte(s, 1) == 27 end
local NO_BINARY = "binary chunks are not loaded: their loops could not be " ..
  "guarded against runaways (load the source)"

-- loadstring(src, name) for script code: text only, instrumented.
function M.loadstring(src, name)
  if type(src) ~= "string" then return raw_loadstring(src, name) end
  if is_binary(src) then return nil, NO_BINARY end
  return raw_loadstring(prepare(src), name or src)
end

-- loadfile(path) for script code.
function M.loadfile(path)
  if path == nil then return raw_loadfile() end
  local f, err = open(path, "rb")
  if not f then return nil, ("cannot open %s"):format(err) end
  local src = f:read("*a")
  f:close()
  if not src then return nil, "cannot read " .. path end
  if is_binary(src) then return nil, path .. ": " .. NO_BINARY end
  return raw_loadstring(prepare(src), "@" .. path)
end

-- The guard this state's checks read (a worker's, or main's script check).
-- Also replaces load, loadstring, loadfile, dofile and the Lua module
-- searcher of the state, so that script code they bring in is guarded.
-- ringline's own modules and generated code ("=ringline..." chunks) are
-- trusted and loaded as they are.
function M.bind(ptr)
  G = ffi.cast("rl_guard *", ptr)
  barrier = ffi.cast("uint8_t *", G.barrier)
  G.seq = G.seq + 1
  G.armed = 1
  rawset(_G, "__ringline_guard", env)
  local own = (getinfo(1, "S").source:match("^@(.*)/ringline/guard%.lua$"))
  local function trusted(name)
    return type(name) == "string" and sub(name, 1, 10) == "=ringline."
  end
  _G.loadstring = function(s, name)
    if trusted(name) then return raw_loadstring(s, name) end
    return M.loadstring(s, name)
  end
  _G.load = function(chunk, name, ...)
    if trusted(name) then return raw_load(chunk, name, ...) end
    if type(chunk) == "function" then        -- a reader: gather its pieces
      local parts = {}
      while true do
        local p = chunk()
        if p == nil or p == "" then break end
        parts[#parts + 1] = p
      end
      chunk = table.concat(parts)
    end
    local f, err = M.loadstring(chunk, name or "=(load)")
    if f and select("#", ...) >= 2 then setfenv(f, (select(2, ...))) end
    return f, err
  end
  _G.loadfile = M.loadfile
  _G.dofile = function(path)
    local f = assert(M.loadfile(path))
    return f()
  end
  package.loaders[2] = function(name)
    local path, err = package.searchpath(name, package.path)
    if not path then return err end
    local f, lerr
    if own and sub(path, 1, #own + 1) == own .. "/" then
      f, lerr = raw_loadfile(path)
    else
      f, lerr = M.loadfile(path)
    end
    if not f then
      error(("error loading module '%s' from file '%s':\n\t%s"):format(
        name, path, lerr), 0)
    end
    return f
  end
end

-- The bound guard (the loop bumps seq before every call it makes).
function M.ptr() return G end

-- After a pcall around script code failed with err: was it a stop?  The
-- call it stopped is over either way, so the stop is cleared.
function M.caught(err)
  G.stop = 0
  return type(err) == "string" and sub(err, 1, #M.MARK) == M.MARK
end

return M
