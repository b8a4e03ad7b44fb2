-- cosocket.lua: a sequential (on_connect) service whose line commands
-- drive coroutines, cosockets and the Redis client for the tests:
--   redis N ROUNDS POOL   N tasks, each ROUNDS x (connect, SET, GET, keep
--                         alive) against RINGLINE_TEST_REDIS, POOL
--                         connections at most; "done N bad B fresh F"
--   connect ADDR          a connect and one read: "ok" or "err <reason>"
--   connectms ADDR MS     a connect with an MS connect timeout
--   read ADDR MS          connect, read a line with an MS read timeout
--   slice ADDR            read a slice, wait, use it: "err <message>"
--   first                 thread.wait of a fast and a slow task: "first X"
--   sleep MS              "slept"
--   boom                  the coroutine fails (the connection closes)
--   mc ADDR               the memcached client's commands against ADDR:
--                         "mc ok" or "mc fail <step> <what came back>"
--   forget ADDR           a task connects to ADDR and ends without closing
--                         it: "forgot" (the socket closes with the task)
--   gslice N              SET a key to N bytes, GET it back as a slice
--                         (get_slice), a missing key, then the slice
--                         after that wait: "gslice <len> <same> <null>
--                         <valid before> valid|dead"
--   echo ...              answered with the rest of the line
local ringline = require "ringline"
local redis = require "ringline.redis"
local memcached = require "ringline.memcached"

local REDIS = os.getenv("RINGLINE_TEST_REDIS") or "127.0.0.1:6379"

local function redis_rounds(n, rounds, pool)
  local bad, fresh, errs = 0, 0, {}
  local threads = {}
  for i = 1, n do
    threads[i] = ringline.thread.spawn(function()
      for r = 1, rounds do
        local red = redis.new()
        red:set_timeout(10000)
        local ok, err = red:connect(REDIS, { pool_size = pool, backlog = n })
        if not ok then error("connect: " .. tostring(err)) end
        if red:get_reused_times() == 0 then fresh = fresh + 1 end
        local key, val = "k" .. i, ("v%d-%d"):format(i, r)
        local res, e = red:set(key, val)
        if res ~= "OK" then bad = bad + 1; errs[#errs + 1] = tostring(e) end
        res, e = red:get(key)
        if res ~= val then bad = bad + 1; errs[#errs + 1] = tostring(res) .. " " .. tostring(e) end
        red:set_keepalive(10000, pool)
      end
    end)
  end
  local failed = 0
  for _, r in ipairs(ringline.thread.wait_all(unpack(threads))) do
    if not r[1] then failed = failed + 1; errs[#errs + 1] = tostring(r[2]) end
  end
  return ("done %d bad %d fresh %d failed %d %s"):format(n, bad, fresh, failed,
    errs[1] or "")
end

-- Every client call against a real server, each answer checked.
local function mc_scenario(addr)
  local mc = memcached.new()
  mc:set_timeout(2000)
  local ok, err = mc:connect(addr)
  if not ok then return "mc fail connect " .. tostring(err) end
  local big = ("0123456789abcdef"):rep(20000)      -- 320,000 bytes
  local steps = {
    { "flush", function() return mc:flush_all() end, true },
    { "miss", function() return mc:get("nokey") end, nil },
    { "set", function() return mc:set("a", "alpha", 0, 42) end, true },
    { "get", function() local v, f = mc:get("a"); return v .. "/" .. f end, "alpha/42" },
    { "add exists", function() local _, e = mc:add("a", "x"); return e end, "NOT_STORED" },
    { "replace", function() return mc:replace("a", "beta") end, true },
    { "append", function() return mc:append("a", "+") end, true },
    { "prepend", function() return mc:prepend("a", "-") end, true },
    { "get2", function() return (mc:get("a")) end, "-beta+" },
    { "gets cas", function()
        local _, _, cas = mc:gets("a")
        local ok1 = mc:cas("a", "gamma", cas)
        local _, e = mc:cas("a", "delta", cas)
        return tostring(ok1) .. " " .. tostring(e)
      end, "true EXISTS" },
    { "multi", function()
        mc:set("b", "bee")
        local r = mc:get({ "a", "b", "zz" })
        return r.a[1] .. r.b[1] .. tostring(r.zz)
      end, "gammabeenil" },
    { "incr", function() mc:set("n", "10"); return mc:incr("n", 5) end, 15 },
    { "decr", function() return mc:decr("n", 20) end, 0 },
    { "incr miss", function() local _, e = mc:incr("nokey", 1); return e end, "NOT_FOUND" },
    { "touch", function() return mc:touch("a", 100) end, true },
    { "delete", function() return mc:delete("a") end, true },
    { "delete again", function() local _, e = mc:delete("a"); return e end, "NOT_FOUND" },
    { "big", function()
        assert(mc:set("big", big))
        local v = mc:get("big")
        return #v == #big and v == big
      end, true },
  }
  for _, st in ipairs(steps) do
    local got = st[2]()
    if got ~= st[3] then
      return ("mc fail %s %s"):format(st[1], tostring(got))
    end
  end
  mc:set_keepalive(1000, 4)
  return "mc ok"
end

local held

return {
  on_connect = function(sock)
    while true do
      local line = sock:receive_line()
      if not line then return end
      local cmd, rest = line:match("^(%S+)%s*(.*)$")
      local out
      if cmd == "redis" then
        local n, rounds, pool = rest:match("^(%d+) (%d+) (%d+)$")
        out = redis_rounds(tonumber(n), tonumber(rounds), tonumber(pool))
      elseif cmd == "connect" then
        local s = ringline.tcp()
        s:settimeouts(2000, 2000, 2000)
        local ok, err = s:connect(rest)
        out = ok and "ok" or "err " .. tostring(err)
        s:close()
      elseif cmd == "connectms" then
        local addr, ms = rest:match("^(%S+) (%d+)$")
        local s = ringline.tcp()
        s:settimeouts(tonumber(ms), 2000, 2000)
        local ok, err = s:connect(addr)
        out = ok and "ok" or "err " .. tostring(err)
        s:close()
      elseif cmd == "read" then
        local addr, ms = rest:match("^(%S+) (%d+)$")
        local s = ringline.tcp()
        s:settimeouts(2000, 2000, tonumber(ms))
        local ok, err = s:connect(addr)
        if ok then ok, err = s:receive_line() end
        out = ok and "line " .. ok or "err " .. tostring(err)
        s:close()
      elseif cmd == "slice" then
        local s = ringline.tcp()
        local ok, err = s:connect(rest)
        if ok then
          local sl = s:read(4)
          held = sl
          local first = sl:tostring()
          ringline.sleep(1)            -- a wait: the slice's lease ends
          local ok2, e2 = pcall(function() return held:tostring() end)
          out = ("first %s after %s"):format(first, ok2 and "valid" or "err " .. tostring(e2))
        else
          out = "err " .. tostring(err)
        end
        s:close()
      elseif cmd == "first" then
        local slow = ringline.thread.spawn(function() ringline.sleep(300); return "slow" end)
        local fast = ringline.thread.spawn(function() ringline.sleep(10); return "fast" end)
        local ok, v = ringline.thread.wait(slow, fast)
        out = "first " .. tostring(ok) .. " " .. tostring(v)
      elseif cmd == "forget" then
        local t = ringline.thread.spawn(function()
          local s = ringline.tcp()
          assert(s:connect(rest))
          s:send("hi\n")
        end)
        ringline.thread.wait(t)
        out = "forgot"
      elseif cmd == "gslice" then
        local red = redis.new()
        red:set_timeout(5000)
        local n = tonumber(rest)
        local ok, err = red:connect(REDIS)
        if not ok then
          out = "err " .. tostring(err)
        else
          local val = ("0123456789"):rep(n / 10)
          red:set("gslice", val)
          local v = red:get_slice("gslice")
          local same = v and v:tostring() == val
          local okv = pcall(function() return v:tostring() end)
          -- The next command waits for its reply: the slice ends there.
          local missing = red:get_slice("gslice-missing")
          local after = pcall(function() return v:tostring() end)
          red:set_keepalive(1000, 4)
          out = ("gslice %d %s %s %s %s"):format(v and v.size or -1, tostring(same),
            tostring(missing == redis.null), tostring(okv), after and "valid" or "dead")
        end
      elseif cmd == "mc" then
        out = mc_scenario(rest)
      elseif cmd == "sleep" then
        ringline.sleep(tonumber(rest))
        out = "slept"
      elseif cmd == "boom" then
        error("boom requested")
      else
        out = rest
      end
      sock:send(out .. "\n")
    end
  end,
}
