-- ringline.http.chars: byte classes shared by the HTTP head parsers and the
-- chunked decoder (token, field value, target, quoted text, whitespace).
local ffi = require "ffi"

local M = {}

local CR, LF, SP, HT = 13, 10, 32, 9
local COMMA, DQUOTE, BSLASH = 44, 34, 92
M.CR, M.LF, M.SP, M.HT = CR, LF, SP, HT
M.COLON, M.QMARK, M.COMMA, M.SEMI, M.EQUALS, M.DQUOTE, M.BSLASH =
  58, 63, 44, 59, 61, 34, 92


local C_TOKEN, C_VALUE, C_TARGET, C_QTEXT, C_WS, C_SEP = 1, 2, 4, 8, 16, 32
local cls = ffi.new("uint8_t[256]")
do
  local tchar = "!#$%&'*+-.^_`|~"
  for c = 0, 255 do
    local v = 0
    if (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122)
       or tchar:find(string.char(c), 1, true) then
      v = v + C_TOKEN
    end
    -- field-content: VCHAR, obs-text, SP, HT
    if c == HT or (c >= 0x20 and c ~= 0x7f) then v = v + C_VALUE end
    -- request-target: VCHAR, obs-text
    if c > 0x20 and c ~= 0x7f then v = v + C_TARGET end
    -- qdtext: HT, SP, 0x21, 0x23-0x5b, 0x5d-0x7e, obs-text
    if c == HT or (c >= 0x20 and c ~= 0x7f and c ~= DQUOTE and c ~= BSLASH) then
      v = v + C_QTEXT
    end
    if c == SP or c == HT then v = v + C_WS + C_SEP end
    if c == COMMA then v = v + C_SEP end
    cls[c] = v
  end
end

M.cls = cls
M.C_TOKEN, M.C_VALUE, M.C_TARGET, M.C_QTEXT, M.C_WS, M.C_SEP =
  C_TOKEN, C_VALUE, C_TARGET, C_QTEXT, C_WS, C_SEP
M.MAX_EXACT = 9007199254740991 -- 2^53 - 1

return M
