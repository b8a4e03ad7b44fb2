-- faults.lua: an echo service for the injected-fault tests.  Echoes every
-- arrival with a zero-copy send of its slice; "stats\n" on a connection of
-- its own answers this worker's counters and the bytes every closed
-- connection had been offered.
local ringline = require "ringline"

local offered_closed = 0     -- bytes offered to connections that are gone
local offered = {}           -- conn id -> bytes offered so far

return {
  listen = "tcp://127.0.0.1:7000",

  on_open = function(conn) offered[conn.id] = 0 end,

  on_data = function(conn, data)
    if #data == 6 and data:tostring() == "stats\n" then
      local st = ringline.stats()
      local keys = {}
      for k in pairs(st) do keys[#keys + 1] = k end
      table.sort(keys)
      local out = {}
      for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. st[k] end
      out[#out + 1] = "offered_closed=" .. offered_closed
      conn:send(table.concat(out, " ") .. "\n")
      return #data
    end
    offered[conn.id] = (offered[conn.id] or 0) + #data
    conn:send(data)
    return #data
  end,

  on_close = function(conn)
    offered_closed = offered_closed + (offered[conn.id] or 0)
    offered[conn.id] = nil
  end,
}
