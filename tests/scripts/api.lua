-- Test script: exercises the connection API through a small line protocol.
-- Run with --workers 1 so the counters below cover every connection.
--   stats      -> "stats opens=N closes=N inits=N reason=R"
--   count      -> "count=N"   (per-connection counter in conn.state)
--   id         -> "id=ID"
--   close      -> "bye", then conn:close()
--   bigclose   -> 1 MiB of "x", "END", then conn:close() (graceful)
--   echo TEXT  -> TEXT
--   time       -> "time unix=MS mono=MS same=0|1" (same: two reads in one
--                 handler agree, the batch's cached clock)
-- on_open greets with "hello id=ID peer=PEER".
local opens, closes, inits, last_reason = 0, 0, 0, "none"

local function handle(conn, cmd)
  if cmd == "stats" then
    conn:send(string.format("stats opens=%d closes=%d inits=%d reason=%s\n",
                            opens, closes, inits, last_reason))
  elseif cmd == "count" then
    conn.state.count = conn.state.count + 1
    conn:send("count=" .. conn.state.count .. "\n")
  elseif cmd == "id" then
    conn:send("id=" .. tostring(conn.id) .. "\n")
  elseif cmd == "close" then
    conn:send("bye\n")
    conn:close()
  elseif cmd == "bigclose" then
    conn:send(string.rep("x", 1024 * 1024))
    conn:send("END\n")
    conn:close()
  elseif cmd == "time" then
    local ringline = require "ringline"
    local u, m = ringline.unix_ms(), ringline.now_ms()
    local same = (u == ringline.unix_ms() and m == ringline.now_ms()) and 1 or 0
    conn:send(string.format("time unix=%.0f mono=%.3f same=%d\n", u, m, same))
  elseif cmd:sub(1, 5) == "echo " then
    conn:send(cmd:sub(6) .. "\n")
  else
    conn:send("unknown " .. cmd .. "\n")
  end
end

return {
  listen = { "tcp://127.0.0.1:7404" },

  init = function()
    inits = inits + 1
  end,

  on_open = function(conn)
    opens = opens + 1
    conn.state.count = 0
    conn:send("hello id=" .. tostring(conn.id) .. " peer=" .. tostring(conn.peer) .. "\n")
  end,

  on_data = function(conn, data)
    local total = #data
    local consumed = 0
    while consumed < total do
      local rest = data:sub(consumed + 1, total)
      local nl = rest:find("\n")
      if not nl then
        break
      end
      handle(conn, tostring(rest:sub(1, nl - 1)))
      consumed = consumed + nl
    end
    return consumed
  end,

  on_close = function(conn, reason)
    closes = closes + 1
    last_reason = tostring(reason):gsub("%s", "_")
  end,
}
