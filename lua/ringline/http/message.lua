-- ringline.http.message: HTTP/1.1 heads and bodies read from a cosocket in place:
-- the response head of an upstream (the client, the proxy) and a body by
-- Content-Length, chunked coding or to the close, as slices.
--
--   local s, n = message.read_head(sock, res, max_header_bytes, parse)
--     peeks and parses (parse: parser.parse_response by default) until a
--     head is whole; s is the slice it was parsed in (valid until the
--     task's next wait), n the head's length, not yet skipped.  nil and
--     the error otherwise: "closed", "timeout", or "bad head" (res.status
--     says 431 or 502 for a response, 4xx/5xx for a request).
--
--   local rd = message.reader()             -- once per connection
--   rd:start(sock, mode, length, raw, max_body)
--     mode: message.NONE, LENGTH (length bytes), CHUNKED, CLOSE (to the
--     peer's close); raw: chunked bodies keep their framing (to relay
--     them as they came), otherwise pieces are the decoded data.
--   rd:next(max) -> a slice of the body (valid until the task's next
--     wait), false at its end, or nil and "closed", "timeout",
--     "bad chunked body", "body too large".
local parser = require "ringline.http.parser"
local chunked = require "ringline.http.chunked"
local slice = require "ringline.slice"

local setmetatable, min = setmetatable, math.min
local parse_response, decode = parser.parse_response, chunked.decode
local Slice = slice.type

local M = {}

M.NONE, M.LENGTH, M.CHUNKED, M.CLOSE = 0, 1, 2, 3
local NONE, LENGTH, CHUNKED, CLOSE = M.NONE, M.LENGTH, M.CHUNKED, M.CLOSE

local PIECE_MAX = 1048576      -- rd:next() without a max

function M.read_head(sock, msg, max_hdr, parse)
  parse = parse or parse_response
  local s, err = sock:peek(1)
  if not s then return nil, err end
  local n = parse(s, msg, max_hdr)
  while n == -2 do
    s, err = sock:peek(s.size + 1)
    if not s then return nil, err end
    n = parse(s, msg, max_hdr)
  end
  if n < 0 then return nil, "bad head" end
  return s, n
end

-- The body mode of a parsed response: what follows its head.
function M.response_mode(res, head_request)
  if not parser.response_has_body(res, head_request) then return NONE, 0 end
  if res.chunked then return CHUNKED, 0 end
  if res.content_length >= 0 then
    if res.content_length == 0 then return NONE, 0 end
    return LENGTH, res.content_length
  end
  return CLOSE, 0
end

-- The body mode of a parsed request.
function M.request_mode(req)
  if req.chunked then return CHUNKED, 0 end
  if req.content_length > 0 then return LENGTH, req.content_length end
  return NONE, 0
end

local Reader = {}
Reader.__index = Reader

function M.reader()
  local rd = setmetatable({ sock = nil, mode = NONE, left = 0, raw = false,
    max = nil, done = true, d = chunked.new(), k = 0, s = nil, total = 0 },
    Reader)
  return rd
end

function Reader:start(sock, mode, length, raw, max_body)
  self.sock, self.mode, self.left, self.raw = sock, mode, length or 0, raw
  self.max, self.k, self.s, self.total = max_body, 0, nil, 0
  self.d:reset()
  self.done = mode == NONE or (mode == LENGTH and self.left == 0)
  if mode == LENGTH and max_body and self.left > max_body then
    self.too_large = true
  else
    self.too_large = false
  end
end

local function chunk_next(self, max)
  local d = self.d
  if not self.raw then
    -- The ranges the last decode found, one per call.
    local k = self.k
    if k < d.n then
      k = k + 1
      self.k = k
      local s = self.s
      return Slice(s.base + d.off[k], d.len[k], s.bid, s.epoch)
    end
    if d:done() then
      self.done = true
      return false
    end
  end
  while true do
    local s, err = self.sock:peek(1)
    if not s then return nil, err end
    if s.size > max then s = Slice(s.base, max, s.bid, s.epoch) end
    local st, used = decode(s, 0, d, self.max)
    if st < 0 then
      return nil, d.status == 413 and "body too large" or "bad chunked body"
    end
    self.sock:skip(used)
    if self.raw then
      if st == 1 then self.done = true end
      return Slice(s.base, used, s.bid, s.epoch)
    end
    if d.n > 0 then
      self.s, self.k = s, 1
      return Slice(s.base + d.off[1], d.len[1], s.bid, s.epoch)
    end
    if st == 1 then
      self.done = true
      return false
    end
  end
end

function Reader:next(max)
  if self.done then return false end
  if self.too_large then return nil, "body too large" end
  max = max or PIECE_MAX
  local mode = self.mode
  if mode == LENGTH then
    local s, err = self.sock:read_any(min(self.left, max))
    if not s then return nil, err end
    self.left = self.left - s.size
    if self.left == 0 then self.done = true end
    return s
  elseif mode == CLOSE then
    local s, err = self.sock:read_any(max)
    if not s then
      if err ~= "closed" then return nil, err end
      self.done = true
      return false
    end
    self.total = self.total + s.size
    if self.max and self.total > self.max then return nil, "body too large" end
    return s
  end
  return chunk_next(self, max)
end

return M
