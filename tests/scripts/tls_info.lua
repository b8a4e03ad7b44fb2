-- tls_info.lua: answers each line with what conn.tls says about the
-- connection ("plain" over TCP), for the TLS tests.
return {
  listen = "tcp://127.0.0.1:7000",

  on_data = function(conn, data)
    local s = data:tostring()
    local nl = s:find("\n", 1, true)
    if not nl then return 0 end
    local t = conn.tls
    if not t then
      conn:send("plain\n")
    else
      conn:send(string.format("version=%s cipher=%s alpn=%s sni=%s resumed=%s conn.alpn=%s peer=%s\n",
        t.version, t.cipher, tostring(t.alpn), tostring(t.sni), tostring(t.resumed),
        tostring(conn.alpn), tostring(t.peer_subject)))
    end
    return nl
  end,
}
