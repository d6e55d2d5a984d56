-- One detector window update: add the members ARGV[base + 4 ..
-- base + 3 + n] at `now_ms` to the sorted set `key`, drop what is older
-- than `window` ms, keep at most `threshold` entries (the count saturates
-- there), expire the set with the window. Returns the count and the first
-- entry's time. A replica sends one member per event it saw since its last
-- call (unique event ids), or a distinct-count member.
local function record_window(key, now_ms, window, threshold, members)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - window)
  -- ZADD in slices: a script's stack holds a few thousand arguments.
  local args = {}
  for i = 1, #members do
    args[#args + 1] = now_ms
    args[#args + 1] = members[i]
    if #args >= 1000 or i == #members then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  local n = redis.call('ZCARD', key)
  if n > threshold then
    redis.call('ZREMRANGEBYRANK', key, 0, n - threshold - 1)
    n = threshold
  end
  local first = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) or now_ms
  redis.call('PEXPIRE', key, window)
  return n, first
end
