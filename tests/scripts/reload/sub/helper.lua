-- A module in a subdirectory of the script's directory (require "sub.helper"):
-- reloaded with the script, and --watch sees its changes.  Tests rewrite NAME.
return {
  NAME = "h1", -- @NAME
}
