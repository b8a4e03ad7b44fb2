-- http.lua: a small HTTP/1.1 service: hello, echo of headers and body, static files.
--
--   GET  /          "hello world"
--   GET  /echo      the request headers, one per line
--   POST /echo      the request body (sent back from the receive buffer)
--   GET  /static/*  files under RINGLINE_HTTP_ROOT (default: ./public)
--
-- Settings come from the environment: RINGLINE_HTTP_LISTEN (default
-- tcp://0.0.0.0:8080), RINGLINE_HTTP_ROOT.
local ffi = require "ffi"
local http = require "ringline.http.server"

pcall(ffi.cdef, [[
char *realpath(const char *path, char *resolved_path);
void free(void *ptr);
]])

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

-- -- Static files --------------------------------------------------------------

local TYPES = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8",
  txt = "text/plain; charset=utf-8", css = "text/css", js = "text/javascript",
  json = "application/json", xml = "application/xml", svg = "image/svg+xml",
  png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
  ico = "image/x-icon", webp = "image/webp", wasm = "application/wasm",
  pdf = "application/pdf", woff2 = "font/woff2",
}

local function real(path)
  local p = ffi.C.realpath(path, nil)
  if p == nil then return nil end
  local s = ffi.string(p)
  ffi.C.free(p)
  return s
end

local root = real(os.getenv("RINGLINE_HTTP_ROOT") or "public")

-- Percent-decode a path; nil if it is malformed or decodes to a NUL.
local function unescape(p)
  local bad = false
  local out = p:gsub("%%(..)", function(h)
    local n = tonumber(h, 16)
    if not n or n == 0 then bad = true return "" end
    return string.char(n)
  end)
  if bad then return nil end
  return out
end

app:prefix("GET", "/static/", function(req, res)
  if not root then return res:status(404):send("no static root\n") end
  local rel = unescape(req:path():tostring():sub(#"/static/" + 1))
  -- Refuse anything that could step out: "..", backslashes, absolute.
  if not rel or rel == "" or rel:find("..", 1, true) or rel:find("\\", 1, true)
     or rel:sub(1, 1) == "/" then
    return res:status(404):send("not found\n", "text/plain")
  end
  -- The resolved file must still be under the root (no symlink escapes).
  local full = real(root .. "/" .. rel)
  if not full or full:sub(1, #root + 1) ~= root .. "/" then
    return res:status(404):send("not found\n", "text/plain")
  end
  local f = io.open(full, "rb")
  local data = f and f:read("*a")
  if f then f:close() end
  if not data then return res:status(404):send("not found\n", "text/plain") end
  local ext = full:match("%.([%w]+)$")
  res:send(data, TYPES[ext and ext:lower()] or "application/octet-stream")
end)

return app:service({
  listen = os.getenv("RINGLINE_HTTP_LISTEN") or "tcp://0.0.0.0:8080",
})
