-- Runs the pure-Lua tests: luajit tests/lua/run.lua (from the repo root).
-- Every tests/lua/test_*.lua module returns a table of name -> function.
-- Prints PASS/FAIL per test and a final "N passed, N failed" line; exits 1
-- if anything failed.

-- Paths relative to the repo root, found from this script's own path so
-- the runner also works when started from elsewhere.
local self_path = arg and arg[0] or "tests/lua/run.lua"
local root = self_path:match("^(.-)tests/lua/run%.lua$")
if not root then
  -- Started as e.g. "luajit run.lua" from inside tests/lua.
  root = (self_path:match("^(.*/)[^/]*$") or "./") .. "../../"
end
package.path = root .. "lua/?.lua;" .. root .. "lua/?/init.lua;" ..
  root .. "tests/lua/?.lua;" .. package.path

local passed, failed = 0, 0

local function report(label, ok, err)
  if ok then
    passed = passed + 1
    print("PASS " .. label)
  else
    failed = failed + 1
    print("FAIL " .. label .. ": " .. tostring(err))
  end
end

local function run_one(label, f)
  local ok, err = pcall(f)
  report(label, ok, err)
end

-- The module's built-in self test counts as one test.
run_one("ringline/slice.lua:selftest", function()
  local r = require("ringline.slice").selftest()
  if r ~= true then error("selftest returned " .. tostring(r)) end
end)

-- Find the test files (sorted, for a stable order).
local files = {}
local p = io.popen("ls -1 '" .. root .. "tests/lua/' 2>/dev/null")
if p then
  for name in p:lines() do
    if name:match("^test_.+%.lua$") then files[#files + 1] = name end
  end
  p:close()
end
table.sort(files)
if #files == 0 then
  report("tests/lua", false, "no tests/lua/test_*.lua files found")
end

for _, file in ipairs(files) do
  local modname = file:gsub("%.lua$", "")
  local ok, mod = pcall(require, modname)
  if not ok then
    report(file .. ":(load)", false, mod)
  elseif type(mod) ~= "table" then
    report(file .. ":(load)", false, "module did not return a table")
  else
    local names = {}
    for name, f in pairs(mod) do
      if type(f) == "function" then names[#names + 1] = name end
    end
    table.sort(names)
    for _, name in ipairs(names) do
      run_one(file .. ":" .. name, mod[name])
    end
  end
end

print(("%d passed, %d failed"):format(passed, failed))
if failed > 0 then os.exit(1) end
