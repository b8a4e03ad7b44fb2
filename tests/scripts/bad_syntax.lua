-- Test script with a syntax error (line 4): the server must refuse to start.
return {
  on_data = function(conn, data)
    conn:send(data
  end,
}
