-- echo.lua: the default service: every byte received is sent back.
--
-- The received slice is sent as is: no copy, the ring buffer it lives in
-- stays leased until the kernel has sent it.
return {
  listen = "tcp://0.0.0.0:7000",

  on_data = function(conn, data)
    conn:send(data)
    return #data
  end,
}
