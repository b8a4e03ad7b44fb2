-- http_proxy.lua: an HTTP/1.1 reverse proxy (ringline/http/proxy.lua).
--
-- Settings (environment, read when the script loads):
--   RINGLINE_HTTP_PROXY_LISTEN      default tcp://0.0.0.0:8000
--   RINGLINE_HTTP_PROXY_UPSTREAMS   comma-separated addresses of the
--                                   default route ("*" host, prefix "/"),
--                                   e.g. "127.0.0.1:8081,127.0.0.1:8082"
--   RINGLINE_HTTP_PROXY_ROUTES      a routes file: lines "HOST PREFIX
--                                   ADDR[,ADDR...]" (HOST "*": any), the
--                                   longest prefix of the request's host
--                                   first, then of "*"; # comments
--   RINGLINE_HTTP_PROXY_CONNECT_TIMEOUT  ms (2000)
--   RINGLINE_HTTP_PROXY_READ_TIMEOUT     ms for an upstream's response
--                                        head: 504 past it (60000)
--   RINGLINE_HTTP_PROXY_SEND_TIMEOUT     ms (60000)
--   RINGLINE_HTTP_PROXY_CLIENT_TIMEOUT   ms a keep-alive client may idle
--                                        (60000)
--   RINGLINE_HTTP_PROXY_HEADER_TIMEOUT   ms for a whole request head (10000)
--   RINGLINE_HTTP_PROXY_KEEPALIVE        idle upstream connections kept per
--                                        upstream (32)
--   RINGLINE_HTTP_PROXY_MAX_FAILS, RINGLINE_HTTP_PROXY_FAIL_TIMEOUT
--                                   failures within FAIL_TIMEOUT ms that
--                                   take an upstream out of rotation for
--                                   FAIL_TIMEOUT (1, 10000)
--   RINGLINE_HTTP_PROXY_TLS_CA, _TLS_SNI, _TLS_VERIFY (on/off)
--                                   for tls:// upstreams: the CA file
--                                   (default the system's), the name
--                                   checked (default the upstream's host),
--                                   verification (on)
-- At least one of UPSTREAMS and ROUTES is needed.
local proxy = require "ringline.http.proxy"

local function env(name)
  local v = os.getenv("RINGLINE_HTTP_PROXY_" .. name)
  if v == "" then return nil end
  return v
end

local function env_num(name, key, cfg)
  local v = env(name)
  if v == nil then return end
  local n = tonumber(v)
  if not n or n < 0 or n % 1 ~= 0 then
    error("RINGLINE_HTTP_PROXY_" .. name .. " must be a whole number", 0)
  end
  cfg[key] = n
end

local routes = {}
if env("ROUTES") then routes = proxy.read_routes(env("ROUTES")) end
if env("UPSTREAMS") then
  local ups = {}
  for a in env("UPSTREAMS"):gmatch("[^,%s]+") do ups[#ups + 1] = a end
  routes[#routes + 1] = { host = "*", prefix = "/", upstreams = ups }
end
if #routes == 0 then
  error("http_proxy.lua: set RINGLINE_HTTP_PROXY_UPSTREAMS or RINGLINE_HTTP_PROXY_ROUTES", 0)
end

local cfg = { listen = env("LISTEN") or "tcp://0.0.0.0:8000", routes = routes }
env_num("CONNECT_TIMEOUT", "connect_timeout", cfg)
env_num("READ_TIMEOUT", "read_timeout", cfg)
env_num("SEND_TIMEOUT", "send_timeout", cfg)
env_num("CLIENT_TIMEOUT", "client_timeout", cfg)
env_num("HEADER_TIMEOUT", "header_timeout", cfg)
env_num("KEEPALIVE", "keepalive", cfg)
env_num("MAX_FAILS", "max_fails", cfg)
env_num("FAIL_TIMEOUT", "fail_timeout", cfg)
local verify = env("TLS_VERIFY") or "on"
if verify ~= "on" and verify ~= "off" then
  error("RINGLINE_HTTP_PROXY_TLS_VERIFY must be on or off", 0)
end
cfg.upstream_tls = { ca = env("TLS_CA"), sni = env("TLS_SNI"), verify = verify == "on" }

return proxy.service(cfg)
