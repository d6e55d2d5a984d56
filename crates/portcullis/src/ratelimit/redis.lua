-- Portcullis rate limits: every rule of one request, atomically, in one call.
-- A line-by-line port of portcullis-core/src/ratelimit/algorithm.rs.
--
-- ARGV[1]   mode: "check" (record if every rule admits), "peek", "reset"
-- ARGV[2]   n: the number of rules; KEYS[1..n] are their keys
-- ARGV[3..] 5 arguments per rule: algorithm ("g" gcra, "l" sliding log,
--           "f" fixed window), then
--             g: emission_us, tolerance_us, burst
--             l: limit, period_us, 0
--             f: limit, period_us, 0
--           then the tokens asked for (a lease, see ratelimit/lease.rs; 1
--           for one request). A rule grants at most a quarter of what it has
--           left beyond the first token, so near the limit it grants one.
--
-- Returns {allowed, remaining, reset_us, retry_us, limit, granted} per rule,
-- then the server time in Unix µs. "reset" deletes the keys and returns {deleted}.
-- Time is the Redis server's TIME, so replicas with skewed clocks agree.

local mode = ARGV[1]
local n = tonumber(ARGV[2])

if mode == 'reset' then
  local deleted = 0
  for i = 1, n do
    deleted = deleted + redis.call('DEL', KEYS[i])
  end
  return {deleted}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function fmt(x)
  return string.format('%.0f', x)
end

local function ms(us)
  return math.floor(us / 1000) + 1
end

-- Tokens granted of `ask` when `fit` (at least 1) are available.
local function grant(ask, fit)
  return math.max(1, math.min(ask, 1 + math.floor((fit - 1) / 4)))
end

local out = {}
-- Pending writes, applied only if every rule admits: kind, key, values.
local wk, wkey, wa, wb, wc = {}, {}, {}, {}, {}
local nw = 0
local all = true

for i = 1, n do
  local key = KEYS[i]
  local base = 2 + (i - 1) * 5
  local algo = ARGV[base + 1]
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  local c = tonumber(ARGV[base + 4])
  local ask = tonumber(ARGV[base + 5]) or 1
  local allowed, remaining, reset, retry, limit
  local granted = 0
  if algo == 'g' then
    local emission, tolerance = a, b
    limit = c
    local tat = tonumber(redis.call('GET', key)) or 0
    local start = math.max(tat, now)
    local horizon = now + tolerance
    local fit = math.floor((horizon - start) / emission)
    if fit >= 1 then
      granted = grant(ask, fit)
      local new_tat = start + granted * emission
      allowed, remaining, reset, retry = 1, math.floor((horizon - new_tat) / emission), new_tat - now, 0
      nw = nw + 1
      wk[nw], wkey[nw], wa[nw], wb[nw] = 'g', key, new_tat, ms(new_tat - now)
    else
      allowed, remaining, reset, retry = 0, 0, start - now, start + emission - horizon
    end
  elseif algo == 'l' then
    local period = b
    limit = a
    local at = now
    local newest = tonumber(redis.call('LINDEX', key, -1))
    if newest and newest > at then at = newest end
    while true do
      local first = tonumber(redis.call('LINDEX', key, 0))
      if first and first + period <= at then
        redis.call('LPOP', key)
      else
        break
      end
    end
    local len = redis.call('LLEN', key)
    local oldest = tonumber(redis.call('LINDEX', key, 0))
    if len < limit then
      granted = grant(ask, limit - len)
      oldest = oldest or at
      allowed, remaining, reset, retry = 1, limit - len - granted, oldest + period - at, 0
      nw = nw + 1
      wk[nw], wkey[nw], wa[nw], wb[nw], wc[nw] = 'l', key, at, ms(period), granted
    else
      oldest = oldest or at
      newest = newest or at
      allowed, remaining, reset, retry = 0, 0, newest + period - at, oldest + period - at
    end
  else
    local period = b
    limit = a
    local start_now = now - math.fmod(now, period)
    local cur = redis.call('HMGET', key, 's', 'c')
    local start = tonumber(cur[1]) or 0
    local count = tonumber(cur[2]) or 0
    if start_now > start then
      start, count = start_now, 0
    end
    local reset_us = math.max(start + period - now, 0)
    if count < limit then
      granted = grant(ask, limit - count)
      allowed, remaining, reset, retry = 1, limit - count - granted, reset_us, 0
      nw = nw + 1
      wk[nw], wkey[nw], wa[nw], wb[nw] = 'f', key, start, ms(reset_us)
      wc[nw] = count + granted
    else
      allowed, remaining, reset, retry = 0, 0, reset_us, reset_us
    end
  end
  if allowed == 0 then all = false end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
  out[#out + 1] = limit
  out[#out + 1] = granted
end

if mode == 'check' and all then
  for j = 1, nw do
    local kind, key = wk[j], wkey[j]
    if kind == 'g' then
      redis.call('SET', key, fmt(wa[j]), 'PX', wb[j])
    elseif kind == 'l' then
      for _ = 1, wc[j] do
        redis.call('RPUSH', key, fmt(wa[j]))
      end
      redis.call('PEXPIRE', key, wb[j])
    else
      redis.call('HSET', key, 's', fmt(wa[j]), 'c', wc[j])
      redis.call('PEXPIRE', key, wb[j])
    end
  end
end

out[#out + 1] = now
return out
