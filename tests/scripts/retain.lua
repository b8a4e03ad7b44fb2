-- Test script: misuse of a slice after its handler returned.
-- A connection whose first bytes are "keep" stores that slice in conn.state
-- ("keepsub": a sub-slice of it) and answers "kept\n".  Its next bytes name
-- an operation to try on the stored (now stale) slice; each must raise
-- "slice used after its handler returned".  If it does not, "survived" is
-- sent.  Other data is echoed.
local ops = {
  len = function(conn, s) return #s end,
  byte = function(conn, s) return s:byte(1) end,
  sub = function(conn, s) return s:sub(1, 2) end,
  find = function(conn, s) return s:find("e") end,
  tostring = function(conn, s) return tostring(s) end,
  send = function(conn, s) return conn:send(s) end,
}

return {
  listen = "tcp://127.0.0.1:7403",

  on_data = function(conn, data)
    local st = conn.state
    if st.kept then
      local name = tostring(data):match("^(%a+)")
      local op = ops[name]
      if not op then
        conn:send("unknown op\n")
        return
      end
      op(conn, st.kept)
      conn:send("survived " .. name .. "\n")
      return
    end
    if data:find("keepsub") == 1 then
      st.kept = data:sub(2, 5)
      conn:send("kept\n")
      return
    end
    if data:find("keep") == 1 then
      st.kept = data
      conn:send("kept\n")
      return
    end
    conn:send(data)
  end,
}
