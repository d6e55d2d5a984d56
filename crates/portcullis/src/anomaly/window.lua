-- One detector window update, shared by the anomaly RECORD script and the
-- rate limiter's script (which carries a request's detector updates):
-- add `member` at `now_ms` to the sorted set `key`, drop what is older than
-- `window` ms, keep at most `threshold` entries (the count saturates there),
-- expire the set with the window. Returns the count and the first entry's time.
local function record_window(key, now_ms, window, threshold, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - window)
  redis.call('ZADD', key, now_ms, member)
  local n = redis.call('ZCARD', key)
  if n > threshold then
    redis.call('ZREMRANGEBYRANK', key, 0, n - threshold - 1)
    n = threshold
  end
  local first = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) or now_ms
  redis.call('PEXPIRE', key, window)
  return n, first
end
