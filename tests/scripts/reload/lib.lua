-- A module required by svc.lua from the script's own directory: reloaded
-- with the script.  The tests rewrite K.
return {
  K = 100, -- @K
}
