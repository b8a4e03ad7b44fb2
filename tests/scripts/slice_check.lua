-- Test script: checks the slice API against Lua strings.  For every complete
-- line the slice for the line (without its "\n") is compared with
-- tostring() of it, a plain Lua string, through #, :byte(i), :sub(i, j)
-- (also of sub-slices) and :find(str).  The answer is
--   "ok LEN CHECKSUM\n"       all agree; CHECKSUM covers the line's bytes
--   "bad LEN WHAT\n"          the first disagreement
-- Partial lines stay unconsumed.
local floor = math.floor

local function checksum(str)
  local h = 0
  for i = 1, #str do
    h = (h * 31 + str:byte(i)) % 2147483647
  end
  return h
end

local function positions(n)
  if n <= 48 then
    local all = {}
    for i = 1, n + 2 do all[#all + 1] = i end
    return all, true
  end
  local step = floor(n / 29) + 1
  local some = { 1, 2, 3, n - 1, n, n + 1, n + 2 }
  for i = 4, n - 2, step do some[#some + 1] = i end
  return some, false
end

local function check(s, str)
  local n = #str
  if #s ~= n then
    return "len " .. #s .. " vs " .. n
  end
  local pos, exhaustive = positions(n)
  for _, i in ipairs(pos) do
    if s:byte(i) ~= str:byte(i) then
      return "byte(" .. i .. ")"
    end
  end
  for _, i in ipairs(pos) do
    local js = exhaustive and pos or { i - 1, i, i + 1, i + 57, n - 1, n, n + 2 }
    for _, j in ipairs(js) do
      local sub, want = s:sub(i, j), str:sub(i, j)
      if #sub ~= #want then
        return "#sub(" .. i .. "," .. j .. ") " .. #sub .. " vs " .. #want
      end
      if tostring(sub) ~= want then
        return "sub(" .. i .. "," .. j .. ")"
      end
      if #want > 0 and sub:byte(1) ~= want:byte(1) then
        return "sub(" .. i .. "," .. j .. "):byte(1)"
      end
    end
  end
  if n >= 6 then
    local inner = s:sub(2, n - 1)
    if tostring(inner:sub(2, #inner - 1)) ~= str:sub(3, n - 2) then
      return "sub of sub"
    end
    if inner:byte(#inner) ~= str:byte(n - 1) then
      return "byte of sub"
    end
    for _, k in ipairs({ 1, floor(n / 2), n - 4 }) do
      local needle = str:sub(k, k + 3)
      local a = s:find(needle)
      local b = str:find(needle, 1, true)
      if a ~= b then
        return "find(" .. needle .. ") " .. tostring(a) .. " vs " .. tostring(b)
      end
      local ia = inner:find(needle)
      local ib = str:sub(2, n - 1):find(needle, 1, true)
      if ia ~= ib then
        return "sub:find(" .. needle .. ") " .. tostring(ia) .. " vs " .. tostring(ib)
      end
    end
  end
  if s:find("#not-there#") ~= nil then
    return "find(absent) not nil"
  end
  return nil
end

return {
  listen = "tcp://127.0.0.1:7406",

  on_data = function(conn, data)
    local total, consumed = #data, 0
    while consumed < total do
      local rest = data:sub(consumed + 1, total)
      local nl = rest:find("\n")
      if not nl then
        break
      end
      local line = rest:sub(1, nl - 1)
      local str = tostring(line)
      local bad = check(line, str)
      if bad then
        conn:send("bad " .. #str .. " " .. bad .. "\n")
      else
        conn:send("ok " .. #str .. " " .. checksum(str) .. "\n")
      end
      consumed = consumed + nl
    end
    return consumed
  end,
}
