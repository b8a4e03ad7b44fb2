-- sendfile.lua: each request line "PATH OFFSET LEN\n" is answered with
-- "HDR LEN\n", then LEN bytes of the file under RINGLINE_TEST_ROOT from
-- OFFSET (conn:send_file: read by the worker through the ring), then
-- "END\n".  A file that cannot be opened is answered "ERR <errno>\n".
-- "STATS\n" is answered "DIRECT <bytes>\n": the file bytes this worker
-- sent with sendfile from the page cache (the rest were read first).
local ffi = require "ffi"
local ringline = require "ringline"
local C = ffi.C

local root
local info = ffi.new("rl_file_info")

return {
  listen = "tcp://127.0.0.1:7000",

  init = function()
    root = C.rl_file_open_root(os.getenv("RINGLINE_TEST_ROOT") or ".")
    assert(root >= 0, "cannot open the test root")
  end,

  on_data = function(conn, data)
    local s = data:tostring()
    local pos = 0
    while true do
      local nl = s:find("\n", pos + 1, true)
      if not nl then break end
      local line = s:sub(pos + 1, nl - 1)
      pos = nl
      if line == "STATS" then
        conn:send("DIRECT " .. ringline.stats().file_bytes_direct .. "\n")
      else
        local path, off, len = line:match("^(%S+) (%d+) (%d+)$")
        local fd = C.rl_file_open_at(root, path, info)
        if fd < 0 then
          conn:send("ERR " .. -fd .. "\n")
        else
          conn:send("HDR " .. len .. "\n")
          local ok, err = conn:send_file(fd, tonumber(off), tonumber(len))
          if not ok then
            C.rl_file_close(fd)
            error("send_file: " .. err)
          end
          conn:send("END\n")
        end
      end
      if not conn:writable() then break end
    end
    return pos
  end,
}
