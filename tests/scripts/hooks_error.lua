-- Test script: errors in on_open and on_close (run with --workers 1).
-- Every second connection's on_open raises (that connection must be closed);
-- the others are greeted with "welcome\n" and echo.  A connection that sends
-- "closeerr\n" is closed by the handler and its on_close raises.
local opened = 0

return {
  listen = "tcp://127.0.0.1:7405",

  on_open = function(conn)
    opened = opened + 1
    if opened % 2 == 0 then
      error("on_open failure " .. opened) -- OPEN-LINE
    end
    conn:send("welcome\n")
  end,

  on_data = function(conn, data)
    if data:find("closeerr") == 1 then
      conn.state.fail_close = true
      conn:send("closing\n")
      conn:close()
      return
    end
    conn:send(data)
  end,

  on_close = function(conn, reason)
    if conn.state.fail_close then
      error("on_close failure") -- CLOSE-LINE
    end
  end,
}
