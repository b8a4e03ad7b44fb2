-- amplify.lua: each request line "N\n" is answered with 64 KiB: line N of
-- the answer stream, stamped.  The handler stops as soon as its connection
-- is over --high-water (conn:writable()), returning what it consumed; the
-- core holds the rest and offers it again once the queue drains.
-- "stats\n" on a connection of its own answers the worker's counters, the
-- handler calls made while a connection was not writable, and the most
-- unsent bytes any connection had when its handler returned.
local ringline = require "ringline"

local BODY = 65536
local calls_blocked = 0      -- on_data calls that found the conn unwritable
local max_unsent = 0

local function answer(n)
  local head = ("answer %d\n"):format(n)
  return head .. ("%d"):format(n % 10):rep(BODY - #head - 1) .. "\n"
end

return {
  listen = "tcp://127.0.0.1:7000",

  on_data = function(conn, data)
    local s = data:tostring()
    if s == "stats\n" then
      local st = ringline.stats()
      local out = {}
      for k, v in pairs(st) do out[#out + 1] = k .. "=" .. v end
      out[#out + 1] = "calls_blocked=" .. calls_blocked
      out[#out + 1] = "max_unsent=" .. max_unsent
      conn:send(table.concat(out, " ") .. "\n")
      return #data
    end
    if not conn:writable() then calls_blocked = calls_blocked + 1 end
    local pos = 0
    while true do
      local nl = s:find("\n", pos + 1, true)
      if not nl then break end
      conn:send(answer(tonumber(s:sub(pos + 1, nl - 1))))
      pos = nl
      if not conn:writable() then break end
    end
    local u = conn:unsent()
    if u > max_unsent then max_unsent = u end
    return pos
  end,
}
