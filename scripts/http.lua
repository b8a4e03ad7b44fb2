-- http.lua: a small HTTP/1.1 service: hello, echo of headers and body, static files.
--
--   GET  /          "hello world"
--   GET  /echo      the request headers, one per line
--   POST /echo      the request body (sent back from the receive buffer)
--   GET  /static/*  files under RINGLINE_HTTP_ROOT (default: ./public), sent
--                   from disk by the worker; HEAD, conditional requests,
--                   ranges (see ringline/http/static.lua)
--
-- Settings come from the environment: RINGLINE_HTTP_LISTEN (default
-- tcp://0.0.0.0:8080), RINGLINE_HTTP_ROOT.
local http = require "ringline.http.server"
local static = require "ringline.http.static"

local app = http.new()

local HELLO = "hello world\n"

app:get("/", function(req, res)
  res:send(HELLO, "text/plain")
end)

app:get("/echo", function(req, res)
  local lines = {}
  for i = 1, req:header_count() do
    local name, value = req:header_at(i)
    lines[#lines + 1] = tostring(name) .. ": " .. tostring(value) .. "\n"
  end
  res:send(table.concat(lines), "text/plain")
end)

app:post("/echo", function(req, res)
  res:send(req:body() or "", "application/octet-stream")
end)

-- -- Static files: streamed from disk, conditional requests and ranges
-- (lua/ringline/http/static.lua).

static.mount(app, "/static/", { root = os.getenv("RINGLINE_HTTP_ROOT") or "public" })

return app:service({
  listen = os.getenv("RINGLINE_HTTP_LISTEN") or "tcp://0.0.0.0:8080",
})
