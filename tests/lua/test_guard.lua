-- Tests for lua/ringline/guard.lua: where the runaway checks go, that
-- instrumented code keeps its lines and its meaning, that a set stop flag
-- ends interpreted and compiled loops with file:line, and that binary
-- chunks are refused.
local guard = require "ringline.guard"
local t = require "testutil"

local eq, raises = t.eq, t.raises

local T = {}

local CHECK = "__rl_f(__rl_b,1) if __rl_g.stop~=0 then __rl_x() end"

local function checks(src)
  local _, n = guard.instrument(src):gsub(CHECK:gsub("%p", "%%%0"), "")
  return n
end

local function lines(s)
  local _, n = s:gsub("\n", "")
  return n
end

local function run(src, name)
  local f = assert(guard.loadstring(src, name or "=test"))
  return f()
end

-- Each loop body, label and function entry gets one check, nothing else.
T.check_sites = function()
  eq(checks("while true do end"), 1, "while")
  eq(checks("for i = 1, 3 do end"), 1, "numeric for")
  eq(checks("for k, v in pairs(t) do end"), 1, "generic for")
  eq(checks("repeat until true"), 1, "repeat")
  eq(checks("do local x = 1 end"), 1, "plain do block")
  eq(checks("local function f(a, b) return a end"), 1, "function")
  eq(checks("local f = function() end"), 1, "anonymous function")
  eq(checks("function t.m:n(...) end"), 1, "method")
  eq(checks("::top:: goto top"), 1, "label")
  eq(checks("local x = f(a, (b)) + y"), 0, "calls and parens")
  eq(checks("local x = 1e+5 + 0x1p-3 - 2e-2"), 0, "numbers with signs")
end

-- Keywords inside strings and comments are text, and stay as they were.
T.strings_and_comments_untouched = function()
  local srcs = {
    'local s = "while true do end function() repeat"',
    "local s = 'do \\' do'",
    'local s = "a \\" do"',
    "local s = [[ while x do end ]]",
    "local s = [==[ ]] do ]=] repeat ]==]",
    "-- while true do end",
    "--[[ do\nrepeat ]]",
    "--[=[ ]] function() ]=]",
    "local u = t['do'] .. t[ [[repeat]] ]",
  }
  for _, src in ipairs(srcs) do
    eq(guard.instrument(src), src, "unchanged: " .. src)
  end
  -- code after a string or comment on the same line is still seen
  eq(checks('local s = "do" while s do break end'), 1, "after a string")
  eq(checks("--[[ x ]] for i = 1, 2 do end"), 1, "after a long comment")
end

-- Every Lua file the project ships or tests with still compiles once
-- instrumented, with the same number of lines (error lines stay true).
T.every_shipped_file_compiles = function()
  local p = assert(io.popen(
    "find lua scripts tests/scripts tests/lua -name '*.lua' | sort"))
  local n = 0
  for path in p:lines() do
    local f = assert(io.open(path, "rb"))
    local src = f:read("*a")
    f:close()
    local out = guard.instrument(src)
    -- tests/scripts holds scripts that are broken on purpose
    local raw_ok = loadstring(src, "@" .. path) ~= nil
    eq(lines(out), lines(src), path .. ": line count")
    local fn, err = loadstring(out, "@" .. path)
    if raw_ok and not fn then error(path .. ": instrumented code does not compile: " .. err) end
    n = n + 1
  end
  p:close()
  if n < 20 then error("only " .. n .. " Lua files found; run from the repo root") end
end

-- Instrumented code computes what the original does.
T.same_results = function()
  local src = [[
    local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end
    local acc = {}
    for i = 1, 10 do acc[#acc + 1] = fib(i) end
    local k = 0
    repeat k = k + 1 until k == 5
    local j = 0
    ::again:: j = j + 1 if j < 3 then goto again end
    local s = "do repeat function()"
    local m = {}
    function m.f(a, ...) return select("#", ...) + a end
    return table.concat(acc, ","), k, j, s, m.f(1, 2, 3), 1e+2
  ]]
  local want = { assert(loadstring(src))() }
  local got = { run(src) }
  eq(#got, #want, "result count")
  for i = 1, #want do eq(got[i], want[i], "result " .. i) end
end

-- Line numbers in errors are the source's own; a shebang line is allowed.
T.lines_and_shebang = function()
  local ok, err = pcall(run, "#!/usr/bin/env ringline\n\nerror('boom')", "@x.lua")
  eq(ok, false, "raised")
  if not err:find("x.lua:3: boom", 1, true) then error("error line: " .. err) end
end

-- A stop flag meant for this call ends a loop, interpreted or compiled,
-- with the file:line it stopped at; it is cleared by caught().
T.stop_ends_loops = function()
  local g = guard.ptr()
  local src = [[
    local g, after = ...
    local n = 0
    while true do
      n = n + 1
      if n == after then g.stop_seq = g.seq g.stop = 1 end
    end
  ]]
  for _, after in ipairs({ 3, 200000 }) do   -- 200000: long past hotloop
    local f = assert(guard.loadstring(src, "@loop.lua"))
    local ok, err = pcall(f, g, after)
    g.stop = 0                  -- never leak a stop into the next test
    eq(ok, false, "stopped after " .. after)
    if not err:find("^handler timeout: ") or not err:find("stopped at loop.lua:3", 1, true) then
      error("message: " .. err)
    end
    g.stop = 1
    eq(guard.caught(err), true, "caught recognises a stop")
    eq(g.stop, 0, "caught cleared the flag")
  end
  eq(guard.caught("other error"), false, "other errors are not stops")
end

-- A stop left from an earlier call (seq moved on) is dropped, not raised.
T.stale_stop_ignored = function()
  local g = guard.ptr()
  g.stop_seq = g.seq - 1
  g.stop = 1
  eq(run("local s = 0 for i = 1, 10 do s = s + i end return s"), 55, "ran")
  eq(g.stop, 0, "stale stop cleared")
end

T.binary_chunks_refused = function()
  local bc = string.dump(function() return 1 end)
  local f, err = guard.loadstring(bc, "=bc")
  eq(f, nil, "no function")
  if not err:find("binary chunks are not loaded", 1, true) then error(err) end
  local path = t.tmpfile(bc)
  f, err = guard.loadfile(path)
  os.remove(path)
  eq(f, nil, "loadfile refuses too")
  if not err:find(path, 1, true) then error("path missing: " .. err) end
  raises("cannot open", function() assert(guard.loadfile("/nonexistent/x.lua")) end)
end

return T
