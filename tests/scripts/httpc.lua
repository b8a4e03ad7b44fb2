-- httpc.lua: line commands that drive the HTTP client (ringline.http.client)
-- for the tests; each answers one line:
--   get URL [REDIRECTS]   "status S len L reused R body <first 60 bytes>"
--   head URL              "status S len L"
--   post URL BYTES        POST a body of BYTES ('x' * BYTES) as a string:
--                         "status S len L sum <byte sum of the body>"
--   postslice URL         POST the 5 bytes that follow on the line as a
--                         slice of the received line: "status S body B"
--   stream URL            the body piece by piece: "status S len L pieces P"
--   timeout URL MS        a read timeout of MS: "err <reason>" or a status
--   many URL N            N requests in a row on the pool: "ok N reused R"
--   err ...               every answer that is not a response: "err <why>"
local http = require "ringline.http.client"

local function sum(s)
  local t = 0
  for i = 1, #s do t = t + s:byte(i) end
  return t
end

local function answer(sock, line)
  local cmd, rest = line:match("^(%S+)%s*(.*)$")
  local httpc = http.new()
  httpc:settimeouts(2000, 5000, 5000)
  if cmd == "get" or cmd == "head" then
    local url, hops = rest:match("^(%S+)%s*(%d*)$")
    local res, err = httpc:request_uri(url, { method = cmd == "head" and "HEAD" or "GET",
      follow_redirects = tonumber(hops) or 0 })
    if not res then return "err " .. tostring(err) end
    if cmd == "head" then return ("status %d len %d"):format(res.status, #res.body) end
    return ("status %d len %d body %s"):format(res.status, #res.body,
      res.body:sub(1, 60):gsub("\n", "|"))
  elseif cmd == "post" then
    local url, n = rest:match("^(%S+)%s+(%d+)$")
    local body = ("x"):rep(tonumber(n))
    local res, err = httpc:request_uri(url, { method = "POST", body = body,
      headers = { ["Content-Type"] = "application/octet-stream" } })
    if not res then return "err " .. tostring(err) end
    return ("status %d len %d sum %d"):format(res.status, #res.body, sum(res.body))
  elseif cmd == "postslice" then
    local url = rest:match("^(%S+)")
    local s = sock:peek(1)   -- the 5 bytes after the line, as a slice
    while s and s.size < 5 do s = sock:peek(s.size + 1) end
    if not s then return "err no body" end
    local body = s:sub(1, 5)
    sock:skip(5)
    local res, err = httpc:request_uri(url, { method = "POST", body = body })
    if not res then return "err " .. tostring(err) end
    return ("status %d body %s"):format(res.status, res.body)
  elseif cmd == "stream" then
    local res, err = httpc:request_uri(rest, { stream = true })
    if not res then return "err " .. tostring(err) end
    local len, pieces = 0, 0
    while true do
      local piece, e = res:read()
      if piece == false then break end
      if not piece then return "err " .. tostring(e) end
      len, pieces = len + piece.size, pieces + 1
    end
    return ("status %d len %d pieces %d"):format(res.status, len, pieces)
  elseif cmd == "timeout" then
    local url, ms = rest:match("^(%S+)%s+(%d+)$")
    httpc:settimeouts(2000, 5000, tonumber(ms))
    local res, err = httpc:request_uri(url)
    if not res then return "err " .. tostring(err) end
    return ("status %d"):format(res.status)
  elseif cmd == "many" then
    local url, n = rest:match("^(%S+)%s+(%d+)$")
    local reused = 0
    for _ = 1, tonumber(n) do
      local res, err = httpc:request_uri(url)
      if not res then return "err " .. tostring(err) end
      if res.status ~= 200 then return "err status " .. res.status end
      if httpc.reused then reused = reused + 1 end
    end
    return ("ok %s reused %d"):format(n, reused)
  end
  return "err unknown command"
end

return {
  listen = "tcp://127.0.0.1:0",
  on_connect = function(sock)
    while true do
      local line = sock:receive_line()
      if not line then return end
      sock:send(answer(sock, line) .. "\n")
    end
  end,
}
