-- Test script that raises at top level: the server must refuse to start.
local t = {}
error("kaboom at top level")
return t
