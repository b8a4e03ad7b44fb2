-- Test script: a line protocol.  Every complete line (ending in "\n") is
-- answered with its body reversed and upper-cased, plus "\n".  on_data
-- returns the bytes consumed up to and including the last newline, so a
-- partial line stays unconsumed and is offered again with the next bytes.
local function answer(conn, body)
  conn:send(body:reverse():upper() .. "\n")
end

return {
  listen = "tcp://127.0.0.1:7402",

  on_data = function(conn, data)
    local total = #data
    local consumed = 0
    local rest = data
    while true do
      local nl = rest:find("\n")
      if not nl then
        break
      end
      answer(conn, tostring(rest:sub(1, nl - 1)))
      consumed = consumed + nl
      if consumed >= total then
        break
      end
      rest = data:sub(consumed + 1, total)
    end
    return consumed
  end,
}
