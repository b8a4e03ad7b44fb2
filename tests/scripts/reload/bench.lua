-- Reload benchmark service (tests/bench/bench_reload.py).  Each request line
-- is answered with "<VERSION> <line>"; the benchmark alternates VERSION
-- between two values and sends SIGHUP.
local VERSION = "A" -- @VERSION

return {
  listen = "tcp://127.0.0.1:7422",

  on_data = function(conn, data)
    local total, pos = #data, 1
    while pos <= total do
      local nl = data:find("\n", pos)
      if not nl then break end
      conn:send(VERSION .. " " .. data:tostring(pos, nl))
      pos = nl + 1
    end
    return pos - 1
  end,
}
