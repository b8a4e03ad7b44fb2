-- Test script that returns a number instead of the service table.
return 42
