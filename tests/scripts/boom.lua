-- Test script: an echo whose on_data raises a Lua error when the bytes it is
-- offered start with "boom" (an error() call) or with "oops" (a runtime
-- error: indexing nil).  Used by tests/integration/test_handlers.py, which
-- looks up the line numbers of the two marked lines below.
return {
  listen = "tcp://127.0.0.1:7401",

  on_data = function(conn, data)
    if data:find("boom") == 1 then
      error("boom requested by the client") -- BOOM-LINE
    end
    if data:find("oops") == 1 then
      local missing = nil
      return missing.field -- OOPS-LINE
    end
    conn:send(data)
  end,
}
