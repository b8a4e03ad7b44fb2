-- Small assertion helpers shared by the tests/lua/test_*.lua modules.
local ffi = require "ffi"

local M = {}

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end
M.show = show

-- Raise unless actual == expected (raw ==, so cdata compares by value).
function M.eq(actual, expected, what)
  if actual ~= expected then
    error(("%sexpected %s, got %s"):format(what and (what .. ": ") or "",
      show(expected), show(actual)), 2)
  end
end

-- Compare two argument lists value by value, including their lengths.
function M.same(what, a, b)
  if a.n ~= b.n then
    error(("%s: expected %d values (%s), got %d (%s)"):format(what, b.n,
      M.list(b), a.n, M.list(a)), 2)
  end
  for k = 1, a.n do
    if a[k] ~= b[k] then
      error(("%s: expected (%s), got (%s)"):format(what, M.list(b),
        M.list(a)), 2)
    end
  end
end

function M.pack(...)
  return { n = select("#", ...), ... }
end

function M.list(t)
  local out = {}
  for k = 1, t.n do out[k] = show(t[k]) end
  return table.concat(out, ", ")
end

-- Call f(...) and require it to raise an error whose message contains
-- the plain text `text`.  Returns the message.
function M.raises(text, f, ...)
  local ok, err = pcall(f, ...)
  if ok then
    error(("expected an error containing %q, but the call succeeded")
      :format(text), 2)
  end
  err = tostring(err)
  if not err:find(text, 1, true) then
    error(("expected an error containing %q, got %q"):format(text, err), 2)
  end
  return err
end

-- Keep FFI buffers alive for as long as the test run: slices hold raw
-- pointers and do not anchor the memory they view.
local anchors = {}

-- A fresh uint8_t buffer holding the bytes of str, and a slice over it.
function M.buffer(str)
  local buf = ffi.new("uint8_t[?]", #str)
  ffi.copy(buf, str, #str)
  anchors[#anchors + 1] = buf
  return buf
end

function M.slice_of(str, bid)
  local slice = require "ringline.slice"
  local buf = M.buffer(str)
  return slice.new(buf, #str, bid), buf
end

-- Write content to a fresh temporary file; returns its path.
function M.tmpfile(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

return M
