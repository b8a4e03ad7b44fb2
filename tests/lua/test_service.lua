-- Tests for lua/ringline/service.lua: loading service scripts from files
-- and validating the table they return.
local service = require "ringline.service"
local t = require "testutil"

local eq, raises = t.eq, t.raises

local T = {}

-- Write a script to a temporary file, run f(path), always remove the file.
local function with_script(content, f)
  local path = t.tmpfile(content)
  local ok, err = pcall(f, path)
  os.remove(path)
  if not ok then error(err, 0) end
end

-- service.load(path) must fail with a message containing every string in
-- `parts` (plain text); "$PATH" stands for the script's path.
local function load_fails(content, parts)
  local msg
  with_script(content, function(path)
    local ok, err = pcall(service.load, path)
    if ok then error("service.load succeeded on:\n" .. content, 0) end
    msg = tostring(err)
    for _, p in ipairs(parts) do
      p = p == "$PATH" and path or p:gsub("%$PATH", function() return path end)
      if not msg:find(p, 1, true) then
        error(("load error %q does not contain %q"):format(msg, p), 0)
      end
    end
    -- Errors are raised at level 0: they start with "script ", no
    -- position of service.lua in front.
    eq(msg:sub(1, 7), "script ", "message prefix")
    if msg:find("service.lua", 1, true) then
      error("message names service.lua instead of the script: " .. msg, 0)
    end
    -- Only the first line of a traceback is kept.
    if msg:find("\n", 1, true) then
      error("message has more than one line: " .. ("%q"):format(msg), 0)
    end
  end)
  return msg
end

---------------------------------------------------------------------------
-- load: good scripts

T.load_valid_minimal = function()
  with_script([[
return { on_data = function(conn, data) end }
]], function(path)
    local svc = service.load(path)
    eq(type(svc), "table")
    eq(type(svc.on_data), "function")
  end)
end

T.load_valid_full = function()
  with_script([[
local calls = 0
local svc = {
  listen = { "127.0.0.1:8080", "[::1]:8080" },
  max_unconsumed = 65536,
  init = function() calls = calls + 1 end,
  on_open = function(conn) end,
  on_data = function(conn, data) return #data end,
  on_close = function(conn, reason) end,
  reload = function() end,
  extra_field = "kept",
}
svc.count = function() return calls end
return svc
]], function(path)
    local svc = service.load(path)
    eq(svc.max_unconsumed, 65536)
    eq(svc.listen[1], "127.0.0.1:8080")
    eq(svc.listen[2], "[::1]:8080")
    eq(svc.extra_field, "kept")
    eq(svc.on_data(nil, "abc"), 3, "the script's own on_data is returned")
    svc.init()
    eq(svc.count(), 1, "top level ran once, closures intact")
  end)
end

T.load_valid_listen_string = function()
  with_script([[
return { listen = "0.0.0.0:9000", on_data = function() end }
]], function(path)
    eq(service.load(path).listen, "0.0.0.0:9000")
  end)
end

T.load_runs_top_level_each_time = function()
  -- Each load compiles and runs the file afresh (used by reload).
  with_script([[
_G.__ringline_test_loads = (_G.__ringline_test_loads or 0) + 1
return { on_data = function() end }
]], function(path)
    _G.__ringline_test_loads = nil
    local a = service.load(path)
    local b = service.load(path)
    eq(_G.__ringline_test_loads, 2, "top level ran twice")
    eq(a ~= b, true, "two distinct tables")
    _G.__ringline_test_loads = nil
  end)
end

---------------------------------------------------------------------------
-- load: broken scripts

T.load_missing_file = function()
  local path = os.tmpname()
  os.remove(path)
  local err = raises(path, service.load, path)
  eq(err:sub(1, 7), "script ", "message prefix")
end

T.load_syntax_error = function()
  -- The call opened on line 4 is unclosed; Lua reports it where it
  -- notices, at the "end" on line 5, and names line 4 in the text.
  load_fails([[
-- comment line 1
return {
  on_data = function(conn, data)
    conn:send(data
  end,
}
]], { "script $PATH:5:", "to close '(' at line 4" })
end

T.load_syntax_error_first_line = function()
  load_fails("return {{{ = 1\n", { "$PATH:1:" })
end

T.load_syntax_error_later_line = function()
  local lines = {}
  for k = 1, 11 do lines[k] = "local x" .. k .. " = " .. k end
  lines[12] = "local = 12"
  lines[13] = "return { on_data = function() end }"
  load_fails(table.concat(lines, "\n") .. "\n", { "$PATH:12:" })
end

T.load_runtime_error_top_level = function()
  local msg = load_fails([[
local t = {}

error("kaboom at top level")
return t
]], { "script $PATH: ", "$PATH:3:", "kaboom at top level" })
  eq(msg:find("stack traceback", 1, true), nil, "no traceback")
end

T.load_runtime_error_in_called_function = function()
  -- The line reported is where the error happened (line 2), inside a
  -- function the top level calls on line 5.
  load_fails([[
local function setup(n)
  return n + nil
end

setup(1)
return { on_data = function() end }
]], { "$PATH:2:", "arithmetic" })
end

T.load_runtime_error_indexing_nil = function()
  load_fails([[
local cfg
local port = cfg.port
return { on_data = function() end }
]], { "$PATH:2:", "cfg" })
end

T.load_runtime_error_non_string_value = function()
  -- error() with a table: still a "script PATH:" message, not a crash.
  load_fails([[
error({ code = 1 })
]], { "script $PATH: " })
end

T.load_not_table = function()
  load_fails("return 42\n", { "script $PATH: ", "must return a service table",
    "returned number" })
  load_fails("return 'hello'\n", { "returned string" })
  load_fails("return function() end\n", { "returned function" })
  load_fails("return true\n", { "returned boolean" })
  load_fails("local x = 1\n", { "returned nil" })
  load_fails("", { "returned nil" })
end

T.load_on_data_missing = function()
  load_fails([[
return { on_open = function() end }
]], { "script $PATH: ", "no on_data function" })
  load_fails("return {}\n", { "no on_data function" })
end

T.load_on_open_not_function = function()
  load_fails([[
return { on_open = "hello", on_data = function() end }
]], { "script $PATH: ", "on_open must be a function, it is a string" })
end

T.load_listen_invalid = function()
  load_fails([[
return { listen = 8080, on_data = function() end }
]], { "script $PATH: ", "listen must be a string or a list of strings" })
  load_fails([[
return { listen = { "127.0.0.1:1", 2 }, on_data = function() end }
]], { "script $PATH: ", "listen[2] must be a string" })
end

T.load_max_unconsumed_invalid = function()
  load_fails([[
return { max_unconsumed = 0, on_data = function() end }
]], { "script $PATH: ", "max_unconsumed must be a positive whole number" })
  load_fails([[
return { max_unconsumed = "4096", on_data = function() end }
]], { "max_unconsumed must be a positive whole number" })
end

---------------------------------------------------------------------------
-- validate

local function f() end

-- validate(svc, "x.lua") must fail with a message containing `part`.
local function invalid(svc, part)
  local err = raises(part, service.validate, svc, "x.lua")
  eq(err:sub(1, #"script x.lua: "), "script x.lua: ", "message names the script")
  return err
end

T.validate_returns_table = function()
  local svc = { on_data = f }
  eq(service.validate(svc, "x.lua"), svc, "returns the same table")
  local full = {
    init = f, on_open = f, on_data = f, on_close = f, reload = f,
    listen = "127.0.0.1:1", max_unconsumed = 1, prefetch = "get ",
  }
  eq(service.validate(full, "x.lua"), full)
end

T.validate_prefetch = function()
  for _, bad in ipairs({ "", 1, true, {}, f }) do
    invalid({ on_data = f, prefetch = bad },
      "prefetch must be a non-empty string (the bytes before a key)")
  end
end

T.validate_not_table = function()
  invalid(nil, "must return a service table, it returned nil")
  invalid(1, "it returned number")
  invalid("s", "it returned string")
  invalid(f, "it returned function")
  invalid(false, "it returned boolean")
end

T.validate_handlers = function()
  for _, name in ipairs({ "init", "on_open", "on_data", "on_close", "reload" }) do
    for _, bad in ipairs({ 1, "f", true, {}, false }) do
      local svc = { on_data = f }
      svc[name] = bad
      invalid(svc, ("%s must be a function, it is a %s"):format(name, type(bad)))
    end
  end
  -- A callable table is not a function.
  local callable = setmetatable({}, { __call = function() end })
  invalid({ on_data = callable }, "on_data must be a function, it is a table")
  -- Optional handlers may be absent.
  eq(type(service.validate({ on_data = f }, "x.lua")), "table")
end

T.validate_on_data_required = function()
  invalid({}, "the service table has no on_data function")
  invalid({ on_open = f, on_close = f, init = f }, "no on_data function")
end

T.validate_on_connect = function()
  -- A sequential service reads through on_connect instead of on_data.
  eq(type(service.validate({ on_connect = f }, "x.lua")), "table")
  invalid({ on_connect = f, on_data = f }, "on_data and on_connect are two ways to read")
  invalid({ on_connect = "x" }, "on_connect must be a function, it is a string")
end

T.validate_listen = function()
  eq(service.validate({ on_data = f, listen = "0.0.0.0:80" }, "x").listen,
    "0.0.0.0:80", "string")
  eq(#service.validate({ on_data = f, listen = { "a:1", "b:2", "c:3" } }, "x").listen,
    3, "list of strings")
  eq(#service.validate({ on_data = f, listen = { "a:1" } }, "x").listen, 1,
    "list of one")
  service.validate({ on_data = f, listen = nil }, "x") -- optional
  for _, bad in ipairs({ 80, true, false, f }) do
    invalid({ on_data = f, listen = bad },
      "listen must be a string or a list of strings")
  end
  invalid({ on_data = f, listen = { 80 } }, "listen[1] must be a string")
  invalid({ on_data = f, listen = { "a:1", "b:2", {} } }, "listen[3] must be a string")
  invalid({ on_data = f, listen = { "a:1", true } }, "listen[2] must be a string")
end

T.validate_max_unconsumed = function()
  for _, good in ipairs({ 1, 2, 4096, 65536, 2 ^ 40 }) do
    eq(service.validate({ on_data = f, max_unconsumed = good }, "x").max_unconsumed,
      good, "max_unconsumed " .. tostring(good))
  end
  local nan = 0 / 0
  for _, bad in ipairs({ 0, -1, -4096, 0.5, 1.5, 4096.25, "4096", true, {},
                         math.huge, -math.huge, nan }) do
    invalid({ on_data = f, max_unconsumed = bad },
      "max_unconsumed must be a positive whole number of bytes")
  end
end

T.validate_reports_first_problem_in_order = function()
  -- Handler types are checked before the on_data presence check.
  invalid({ on_open = 1 }, "on_open must be a function")
  -- The path given is the one named.
  local err = raises("no on_data", service.validate, {}, "/srv/app.lua")
  eq(err, "script /srv/app.lua: the service table has no on_data function (nor on_connect)")
end

return T
