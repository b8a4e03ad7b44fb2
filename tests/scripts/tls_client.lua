-- tls_client.lua: outbound TLS for the tests.  Each line from a test
-- client is a connect to make, "ADDR [key=value ...]" (ca, sni, alpn,
-- cert, key, verify=0, send=N bytes to echo); the answer line says how it
-- went: "open version=... resumed=... peer=... echoed=N" once the echo
-- came back whole, or "close REASON" when it closed before that.  A line
-- "https URL [ca=FILE]" fetches URL with ringline.http.client instead:
-- "status=N bytes=N".
local ringline = require "ringline"

local function parse(line)
  local words = {}
  for w in line:gmatch("%S+") do words[#words + 1] = w end
  local opts = {}
  for i = 2, #words do
    local k, v = words[i]:match("^([%w_]+)=(.*)$")
    if k then opts[k] = v end
  end
  return words[1], opts
end

local function outbound(client, addr, o)
  local want = tonumber(o.send or "1000")
  local opts = { ca = o.ca, sni = o.sni, alpn = o.alpn, cert = o.cert, key = o.key,
    verify = o.verify ~= "0", timeout = 5000 }
  local payload = string.rep("0123456789abcdef", math.ceil(want / 16)):sub(1, want)
  local got, opened, info, answered = {}, false, nil, false
  local c, err = ringline.connect(addr, {
    on_open = function(c)
      opened = true
      local t = c.tls
      info = ("open version=%s resumed=%s peer=%s alpn=%s"):format(t.version,
        tostring(t.resumed), tostring(t.peer_subject), tostring(t.alpn))
      c:send(payload)
    end,
    on_data = function(c, s)
      got[#got + 1] = s:tostring()
      local all = table.concat(got)
      if #all >= want and not answered then
        answered = true
        client:send(info .. (" echoed=%s\n"):format(all == payload and #all or "WRONG"))
        c:close()
      end
      return #s
    end,
    on_close = function(_, why)
      -- (TLS 1.3: a server's refusal of our certificate comes after open.)
      if not answered and not client.closed then
        answered = true
        client:send("close " .. tostring(why) .. "\n")
      end
    end,
  }, opts)
  if not c then client:send("error " .. tostring(err) .. "\n") end
end

local function https(client, url, o)
  ringline.spawn(function()
    local http = require "ringline.http.client"
    local h = http.new()
    local res, err = h:request_uri(url, { ssl_ca = o.ca, ssl_verify = o.verify ~= "0" })
    if client.closed then return end
    if not res then client:send("error " .. tostring(err) .. "\n") return end
    client:send(("status=%d bytes=%d\n"):format(res.status, #res.body))
  end)
end

return {
  listen = "tcp://127.0.0.1:7000",

  on_data = function(conn, data)
    local s = data:tostring()
    local nl = s:find("\n", 1, true)
    if not nl then return 0 end
    local line = s:sub(1, nl - 1)
    local first, opts = parse(line)
    if first == "https" then
      https(conn, line:match("^https%s+(%S+)"), opts)
    else
      outbound(conn, first, opts)
    end
    return nl
  end,
}
