-- ringline.http.static: files under a root directory, streamed from disk.
--
--   local static = require "ringline.http.static"
--   static.mount(app, "/static/", { root = "public" })
--
-- The file is opened beneath the root by the core (rl_file_open_at:
-- openat2 with RESOLVE_BENEATH, so "..", absolute paths and symlinks that
-- lead out of the root are refused by the kernel) and its bytes are sent
-- by the worker with conn:send_file: the file is never read into Lua, and a
-- download's memory does not follow its size.
--
-- What is answered (RFC 9110):
--   GET, HEAD                   200 with Content-Type (from the extension),
--                               Content-Length, Last-Modified, ETag,
--                               Accept-Ranges: bytes; HEAD sends no body
--   other methods               405, Allow: GET, HEAD
--   If-Match / If-Unmodified-Since failing                   412
--   If-None-Match (weak comparison, lists, *)                304
--   If-Modified-Since (IMF-fixdate, RFC 850, asctime), when there is no
--   If-None-Match, file not modified since                   304
--   Range: bytes=a-b, a-, -n (GET only; If-Range honoured)   206 + Content-Range
--     nothing satisfiable                                    416, Content-Range: bytes */size
--     several ranges: the satisfiable ones; if exactly one remains it is
--     served as 206, more than one gets the whole file (200; allowed by
--     RFC 9110 14.2, no multipart/byteranges)
--     a malformed Range header is ignored (200)
--   a missing file, "." or ".." segments, an absolute path, a backslash,
--   malformed %-escapes or %00, a path leading out of the root     404
--   a directory (no listings, no index.html), a fifo, device or socket,
--   a file the server may not read                                  403
--   too many open files                                             503
-- Bodies of error answers are fixed texts: no path is ever echoed.
--
-- The ETag is strong: "<size hex>-<mtime ns hex>-<inode hex>".  The core
-- closes a connection whose file ends before the promised length (a file
-- truncated during a download).
local ffi = require "ffi"
local bit = require "bit"

local C = ffi.C
local byte, char, sub, find, lower, format = string.byte, string.char,
  string.sub, string.find, string.lower, string.format
local floor, tonumber, type = math.floor, tonumber, type

local M = {}

-- -- Content types -------------------------------------------------------------

local U8 = "; charset=utf-8"
local TYPES = {
  html = "text/html" .. U8, htm = "text/html" .. U8, txt = "text/plain" .. U8,
  css = "text/css", js = "text/javascript", mjs = "text/javascript",
  json = "application/json", map = "application/json",
  xml = "application/xml", svg = "image/svg+xml", csv = "text/csv" .. U8,
  md = "text/markdown" .. U8, webmanifest = "application/manifest+json",
  png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg",
  gif = "image/gif", webp = "image/webp", avif = "image/avif",
  ico = "image/x-icon", bmp = "image/bmp",
  wasm = "application/wasm", pdf = "application/pdf",
  zip = "application/zip", gz = "application/gzip", tar = "application/x-tar",
  br = "application/octet-stream", bz2 = "application/x-bzip2",
  xz = "application/x-xz", zst = "application/zstd",
  mp4 = "video/mp4", webm = "video/webm", ogg = "audio/ogg",
  mp3 = "audio/mpeg", wav = "audio/wav", m4a = "audio/mp4",
  woff = "font/woff", woff2 = "font/woff2", ttf = "font/ttf", otf = "font/otf",
}
M.TYPES = TYPES
M.DEFAULT_TYPE = "application/octet-stream"

-- Raw extension (as in the request, any case) -> type, memoised: after the
-- first request for an extension the lookup is one table hit.
local by_raw, n_raw = {}, 0

-- The content type for an extension (without the dot, any case) or nil.
function M.mime(ext)
  if not ext then return M.DEFAULT_TYPE end
  local t = by_raw[ext]
  if t then return t end
  t = TYPES[lower(ext)] or M.DEFAULT_TYPE
  if n_raw < 512 then by_raw[ext], n_raw = t, n_raw + 1 end
  return t
end

-- The content type for a file name or path.
function M.mime_of(path)
  local ext = path:match("%.([^./]*)$")
  return M.mime(ext)
end

-- -- Dates (RFC 9110 5.6.7) -----------------------------------------------------

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                 "Sep", "Oct", "Nov", "Dec" }
local MONTH_NO = {}
for i, m in ipairs(MONTHS) do MONTH_NO[m] = i end
local LONG_DAYS = { Sunday = 1, Monday = 2, Tuesday = 3, Wednesday = 4,
                    Thursday = 5, Friday = 6, Saturday = 7 }
local SHORT_DAYS = {}
for i, d in ipairs(DAYS) do SHORT_DAYS[d] = i end

-- Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
-- days_from_civil), and back.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524)
                     - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function leap(y) return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) end
local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- IMF-fixdate of unix seconds: "Sun, 06 Nov 1994 08:49:37 GMT".
function M.http_date(t)
  t = floor(t)
  local days = floor(t / 86400)
  local s = t - days * 86400
  local y, m, d = civil_from_days(days)
  return format("%s, %02d %s %04d %02d:%02d:%02d GMT", DAYS[(days + 4) % 7 + 1],
    d, MONTHS[m], y, floor(s / 3600), floor(s / 60) % 60, s % 60)
end

local function to_unix(y, mon, d, hh, mm, ss, wday)
  local m = MONTH_NO[mon]
  if not m then return nil end
  y, d, hh, mm, ss = tonumber(y), tonumber(d), tonumber(hh), tonumber(mm),
    tonumber(ss)
  if d < 1 or d > (m == 2 and leap(y) and 29 or MDAYS[m]) or hh > 23 or
     mm > 59 or ss > 60 then
    return nil
  end
  if ss == 60 then ss = 59 end          -- a leap second: the same second
  local days = days_from_civil(y, m, d)
  if wday and (days + 4) % 7 + 1 ~= wday then return nil end
  return days * 86400 + hh * 3600 + mm * 60 + ss
end

-- Unix seconds of an HTTP-date (a string), or nil if it is none of the
-- three forms RFC 9110 5.6.7 lets a recipient accept.  now_year: for the
-- two-digit years of RFC 850 (default: the current year).
function M.parse_http_date(s, now_year)
  if type(s) ~= "string" or #s > 64 then return nil end
  -- IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
  local wd, d, mon, y, hh, mm, ss = s:match(
    "^(%a%a%a), (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if wd then
    local w = SHORT_DAYS[wd]
    if not w then return nil end
    return to_unix(y, mon, d, hh, mm, ss, w)
  end
  -- RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
  wd, d, mon, y, hh, mm, ss = s:match(
    "^(%a+), (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if wd then
    local w = LONG_DAYS[wd]
    if not w then return nil end
    -- RFC 9110: a year more than 50 years ahead is the last past year with
    -- those two digits.
    local cur = now_year or tonumber(os.date("!%Y"))
    local yy = floor(cur / 100) * 100 + tonumber(y)
    if yy > cur + 50 then yy = yy - 100 end
    return to_unix(yy, mon, d, hh, mm, ss, w)
  end
  -- asctime: Sun Nov  6 08:49:37 1994
  wd, mon, d, hh, mm, ss, y = s:match(
    "^(%a%a%a) (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  if wd then
    local w = SHORT_DAYS[wd]
    if not w then return nil end
    return to_unix(y, mon, d:gsub("^ ", ""), hh, mm, ss, w)
  end
  return nil
end

-- -- Entity tags (RFC 9110 8.8.3, 13.1.1) --------------------------------------------

-- The strong ETag of a file: size, mtime in ns and inode, in hex.
function M.etag(size, mtime_sec, mtime_nsec, ino)
  local ns = ffi.new("uint64_t", mtime_sec) * 1000000000ULL + mtime_nsec
  return format('"%x-%x-%x"', size, ns, ino)
end

-- Does the field value (If-None-Match, If-Match: "*" or a list of
-- entity-tags) match etag (a strong tag with its quotes)?  weak: the weak
-- comparison (W/ prefixes ignored on the list's tags); otherwise strong
-- (a W/ tag never matches).  A malformed member ends the list.
function M.etag_match(value, etag, weak)
  local i, n = 1, #value
  while i <= n do
    local c = byte(value, i)
    if c == 32 or c == 9 or c == 44 then       -- OWS and commas
      i = i + 1
    elseif c == 42 then                         -- *
      return true
    else
      local is_weak = false
      if c == 87 and byte(value, i + 1) == 47 then   -- W/
        is_weak = true
        i = i + 2
        c = byte(value, i)
      end
      if c ~= 34 then return false end
      local j = find(value, '"', i + 1, true)
      if not j then return false end
      if (weak or not is_weak) and j - i + 1 == #etag and
         sub(value, i, j) == etag then
        return true
      end
      i = j + 1
    end
  end
  return false
end

-- -- Ranges (RFC 9110 14.1.2) ------------------------------------------------------

local HUGE = 2 ^ 53

-- A decimal position at i..j of s (digits only), clamped to HUGE.
local function pos(s, i, j)
  while i < j and byte(s, i) == 48 do i = i + 1 end   -- leading zeros
  if j - i >= 15 then return HUGE end
  return tonumber(sub(s, i, j))
end

-- Parse a Range field value for a representation of size bytes.
-- Returns "ok", first, last (inclusive) for one satisfiable range;
-- "unsatisfiable" when the ranges are well-formed and none is satisfiable;
-- "ignore" when the header is malformed, not in bytes, or asks for several
-- satisfiable ranges (the whole representation is served).
function M.parse_range(value, size)
  if type(value) ~= "string" then return "ignore" end
  local n = #value
  local i = 1
  while i <= n and (byte(value, i) == 32 or byte(value, i) == 9) do i = i + 1 end
  if n - i < 6 or lower(sub(value, i, i + 5)) ~= "bytes=" then
    return "ignore"
  end
  i = i + 6
  local count, first, last = 0, nil, nil
  local any = false
  while true do
    -- OWS, then one range-spec, then OWS, then "," or the end.
    while i <= n and (byte(value, i) == 32 or byte(value, i) == 9) do i = i + 1 end
    if i > n then break end
    local c = byte(value, i)
    if c == 44 then          -- an empty list element (RFC 9110 5.6.1)
      i = i + 1
    else
      local a, b
      local s1, e1 = find(value, "^%d+", i)
      if s1 then
        if byte(value, e1 + 1) ~= 45 then return "ignore" end   -- '-'
        a = pos(value, s1, e1)
        i = e1 + 2
        local s2, e2 = find(value, "^%d+", i)
        if s2 then
          b = pos(value, s2, e2)
          if b < a then return "ignore" end       -- invalid range-spec
          i = e2 + 1
        else
          b = HUGE
        end
        any = true
        if a < size then
          if b > size - 1 then b = size - 1 end
          count, first, last = count + 1, a, b
        end
      elseif c == 45 then                         -- -suffix
        local s2, e2 = find(value, "^%d+", i + 1)
        if not s2 then return "ignore" end
        local k = pos(value, s2, e2)
        i = e2 + 1
        any = true
        if k > 0 then
          if size == 0 then return "ignore" end   -- nothing to cut: all (0 bytes)
          if k > size then k = size end
          count, first, last = count + 1, size - k, size - 1
        end
      else
        return "ignore"
      end
      while i <= n and (byte(value, i) == 32 or byte(value, i) == 9) do i = i + 1 end
      if i <= n then
        if byte(value, i) ~= 44 then return "ignore" end
        i = i + 1
      end
    end
  end
  if not any then return "ignore" end
  if count == 0 then return "unsatisfiable" end
  if count > 1 then return "ignore" end
  return "ok", first, last
end

-- -- Paths ------------------------------------------------------------------------

local PATH_MAX = 4096
local pathbuf = ffi.new("uint8_t[?]", PATH_MAX + 1)

local function hexval(c)
  if c >= 48 and c <= 57 then return c - 48 end
  c = bit.bor(c, 32)
  if c >= 97 and c <= 102 then return c - 87 end
  return nil
end

-- Percent-decode n bytes at p (a pointer) into the module's path buffer,
-- NUL-terminated.  Returns the decoded length and the offset just after the
-- last '.' of the last segment (or -1), or nil when the path must be
-- refused: a malformed escape, a NUL, a backslash, an absolute path, a
-- "." or ".." segment, too long.  An empty path becomes ".".
local function decode_path(p, n)
  local o, seg, dot = 0, 0, -1
  local k = 0
  while k < n do
    local c = p[k]
    if c == 37 then                                -- %
      if k + 2 >= n then return nil end
      local h, l = hexval(p[k + 1]), hexval(p[k + 2])
      if not h or not l then return nil end
      c = h * 16 + l
      if c == 0 then return nil end
      k = k + 3
    else
      k = k + 1
    end
    if c == 92 then return nil end                 -- backslash
    if c == 47 then                                -- '/'
      if o == 0 then return nil end                -- absolute
      local len = o - seg
      if (len == 1 and pathbuf[seg] == 46) or
         (len == 2 and pathbuf[seg] == 46 and pathbuf[seg + 1] == 46) then
        return nil
      end
      seg, dot = o + 1, -1
    elseif c == 46 then
      dot = o + 1
    end
    if o >= PATH_MAX then return nil end
    pathbuf[o] = c
    o = o + 1
  end
  local len = o - seg
  if (len == 1 and pathbuf[seg] == 46) or
     (len == 2 and pathbuf[seg] == 46 and pathbuf[seg + 1] == 46) then
    return nil
  end
  if o == 0 then
    pathbuf[0], o = 46, 1
  end
  pathbuf[o] = 0
  return o, dot
end

-- Decode a path (a Lua string) the way a request's is: the decoded string,
-- or nil if it is refused.  For tests.
function M.decode_path(s)
  local tmp = ffi.new("uint8_t[?]", #s + 1)
  ffi.copy(tmp, s, #s)
  local n = decode_path(tmp, #s)
  if not n then return nil end
  return ffi.string(pathbuf, n)
end

-- -- Serving ------------------------------------------------------------------------

local ERRNO_EPERM, ERRNO_EACCES, ERRNO_ENFILE, ERRNO_EMFILE = 1, 13, 23, 24

local function plain(res, code, text)
  res:status(code):send(text, "text/plain; charset=utf-8")
end

-- Per-file header strings (ETag, Last-Modified), cached by inode and
-- checked against device, size and mtime: the steady state makes none.
local function new_cache() return { n = 0 } end

local function validators(cache, info)
  local ino = tonumber(info.ino)
  local e = cache[ino]
  local size, sec, nsec = tonumber(info.size), tonumber(info.mtime_sec),
    tonumber(info.mtime_nsec)
  local dev = tonumber(info.dev)
  if e and e.size == size and e.sec == sec and e.nsec == nsec and e.dev == dev then
    return e
  end
  if not e then
    if cache.n >= 4096 then
      for k in pairs(cache) do cache[k] = nil end
      cache.n = 0
    end
    cache.n = cache.n + 1
    e = {}
    cache[ino] = e
  end
  e.size, e.sec, e.nsec, e.dev = size, sec, nsec, dev
  e.etag = M.etag(size, sec, nsec, info.ino)
  e.lastmod = M.http_date(sec)
  e.clen = nil
  return e
end

-- A request handler serving files beneath opts.root for paths under
-- prefix (the part after it is the file's path relative to the root).
-- The root is opened on the first request of each worker (and again
-- after a failure); its fd is closed when the handler is collected.
function M.handler(prefix, opts)
  opts = opts or {}
  local root_path = opts.root or "public"
  local plen = #prefix
  local info = ffi.new("rl_file_info")
  local root_holder                       -- int[1] with a __gc closing it
  local cache = new_cache()

  local function root_fd()
    if root_holder then return root_holder[0] end
    local fd = C.rl_file_open_root(root_path)
    if fd < 0 then return nil end
    root_holder = ffi.gc(ffi.new("int[1]", fd), function(h)
      if h[0] >= 0 then C.rl_file_close(h[0]) end
    end)
    return fd
  end

  return function(req, res)
    local is_head = req:method_is("HEAD")
    if not is_head and not req:method_is("GET") then
      res:status(405):header("Allow", "GET, HEAD")
      return plain(res, 405, "method not allowed\n")
    end
    local path = req:path()
    local n, dot = decode_path(path:ptr() + plen, #path - plen)
    if not n then return plain(res, 404, "not found\n") end
    local root = root_fd()
    if not root then return plain(res, 404, "not found\n") end
    local fd = C.rl_file_open_at(root, pathbuf, info)
    if fd < 0 then
      if fd == -ERRNO_EACCES or fd == -ERRNO_EPERM then
        return plain(res, 403, "forbidden\n")
      elseif fd == -ERRNO_EMFILE or fd == -ERRNO_ENFILE then
        return plain(res, 503, "service unavailable\n")
      end
      return plain(res, 404, "not found\n")
    end
    if info.kind ~= C.RL_FILE_REGULAR then
      C.rl_file_close(fd)
      return plain(res, 403, "forbidden\n")
    end
    local v = validators(cache, info)
    local size = v.size
    local etag, lastmod = v.etag, v.lastmod
    local ctype = M.mime(dot >= 0 and ffi.string(pathbuf + dot, n - dot) or nil)

    -- Preconditions, in RFC 9110 13.2.2's order.
    local h = req:header("If-Match")
    if h then
      if not M.etag_match(h:tostring(), etag, false) then
        C.rl_file_close(fd)
        return plain(res, 412, "precondition failed\n")
      end
    else
      h = req:header("If-Unmodified-Since")
      if h then
        local t = M.parse_http_date(h:tostring())
        if t and v.sec > t then
          C.rl_file_close(fd)
          return plain(res, 412, "precondition failed\n")
        end
      end
    end
    local not_modified = false
    h = req:header("If-None-Match")
    if h then
      not_modified = M.etag_match(h:tostring(), etag, true)
    else
      h = req:header("If-Modified-Since")
      if h then
        local t = M.parse_http_date(h:tostring())
        not_modified = t ~= nil and v.sec <= t
      end
    end
    res:header("ETag", etag):header("Last-Modified", lastmod)
    if not_modified then
      C.rl_file_close(fd)
      return res:status(304):send_head(nil)
    end
    res:header("Accept-Ranges", "bytes")

    local first, len = 0, size
    if not is_head then
      h = req:header("Range")
      if h then
        local use = true
        local ir = req:header("If-Range")
        if ir then
          local s = ir:tostring()
          if byte(s, 1) == 34 or byte(s, 1) == 87 then   -- '"' or W/
            use = s == etag                               -- strong comparison
          else
            use = M.parse_http_date(s) == v.sec
          end
        end
        if use then
          local kind, a, b = M.parse_range(h:tostring(), size)
          if kind == "ok" then
            first, len = a, b - a + 1
            res:status(206):header("Content-Range",
              format("bytes %d-%d/%d", a, b, size))
          elseif kind == "unsatisfiable" then
            C.rl_file_close(fd)
            res:header("Content-Range", format("bytes */%d", size))
            return plain(res, 416, "range not satisfiable\n")
          end
        end
      end
    end
    return res:send_file(fd, first, len, ctype)
  end
end

-- Route every GET/HEAD (and, to answer 405, every other method) under
-- prefix on app (a ringline.http.server) to M.handler(prefix, opts).
function M.mount(app, prefix, opts)
  return app:prefix("*", prefix, M.handler(prefix, opts))
end

return M
