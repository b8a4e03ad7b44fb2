-- Test script that returns nothing.
local function on_data(conn, data)
  conn:send(data)
end
