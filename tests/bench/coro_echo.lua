-- coro_echo.lua: echo as a sequential on_connect task (read_any a slice, send
-- it back, no copy): bench_echo.sh's "coro" server, the cost of the
-- coroutine model against scripts/echo.lua's callbacks.
return {
  on_connect = function(sock)
    while true do
      local s = sock:read_any(1048576)
      if not s then return end
      if not sock:send(s) then return end
    end
  end,
}
