-- resume.lua: bytes a handler leaves unconsumed while its connection is
-- paused are offered again when it is resumed, without the peer sending
-- more (tests/integration/test_resume.py).
--
-- A line protocol; each command line is answered:
--   "pause MS"    consume this line, pause, leave the rest unconsumed (even
--                 whole lines); a timer resumes after MS ms      -> "paused"
--   "repause MS"  the same, but that timer resumes and pauses again at once
--                 (no re-offer then); another resumes MS ms later -> "paused"
--   "drop MS"     the same, but the timer closes the connection instead
--   "rclose MS"   the same, but the timer resumes and then closes at once
--   "flip"        pause and resume inside this call and leave the rest:
--                 not paused when it returns, so no re-offer      -> "flipped"
--   "calls"       -> "calls N": on_data calls on this connection so far
--   "empty"       -> "empty N": calls that were offered no bytes at all
--   anything else -> PREFIX .. " " .. line
-- A partial line is left unconsumed.  While paused on_data takes nothing.
-- With on_eof (left out when RL_TEST_NO_EOF=1), the peer's EOF is answered
-- "eof after N lines" and the connection closed.
local ringline = require "ringline"

local PREFIX = ">" -- @PREFIX

local function hold(conn, st, cmd, ms)
  st.paused = true
  conn:pause()
  conn:send("paused\n")
  ringline.after(ms, function()
    if conn.closed then return end
    if cmd == "drop" then conn:close() return end
    st.paused = false
    conn:resume()
    if cmd == "rclose" then conn:close() return end
    if cmd == "repause" then
      st.paused = true
      conn:pause()
      ringline.after(ms, function()
        if conn.closed then return end
        st.paused = false
        conn:resume()
      end)
    end
  end)
end

local service = {
  on_open = function(conn)
    local st = conn.state
    st.calls, st.empty, st.lines = 0, 0, 0
  end,

  on_data = function(conn, data)
    local st = conn.state
    st.calls = st.calls + 1
    if #data == 0 then st.empty = st.empty + 1 end
    if st.paused then return 0 end
    local pos = 0
    while true do
      local nl = data:find_byte(10, pos + 1)
      if not nl then break end
      local line = data:tostring(pos + 1, nl - 1)
      pos = nl
      st.lines = st.lines + 1
      local cmd, ms = line:match("^(%a+) (%d+)$")
      if cmd == "pause" or cmd == "repause" or cmd == "drop" or cmd == "rclose" then
        hold(conn, st, cmd, tonumber(ms))
        return pos
      elseif line == "flip" then
        conn:pause()
        conn:resume()
        conn:send("flipped\n")
        return pos
      elseif line == "calls" then
        conn:send(("calls %d\n"):format(st.calls))
      elseif line == "empty" then
        conn:send(("empty %d\n"):format(st.empty))
      else
        conn:send(PREFIX .. " " .. line .. "\n")
      end
    end
    return pos
  end,
}

if os.getenv("RL_TEST_NO_EOF") ~= "1" then
  service.on_eof = function(conn)
    conn:send(("eof after %d lines\n"):format(conn.state.lines))
    conn:close()
  end
end

return service
