-- Admit a request against all of its checks, atomically: every check passes and is applied, or
-- none is. The same arithmetic as gateway/limits/rules.py; time is Redis's own clock.
-- ARGV[1]: lease id; ARGV[2]: a JSON array of checks [kind, key, limit, amount, extra] (see rules.Check).
-- Returns {1, period keys...} when admitted, {0, index (1-based), retry ms} when not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease = ARGV[1]

local function civil(days) -- days since 1970-01-01 -> year, month (proleptic Gregorian)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function first_day(y, m) -- days since 1970-01-01 of the first of month m
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + math.floor((153 * mp + 2) / 5)
  return era * 146097 + doe - 719468
end

local function period(kind)
  local day = math.floor(now / 86400000)
  if kind == 'day' then
    return 'd' .. day, (day + 1) * 86400000
  end
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return string.format('m%04d%02d', y, m), first_day(ny, nm) * 86400000
end

local checks = cjson.decode(ARGV[2])
local plans = {}
local n = #checks
for c = 1, n do
  local kind, key, limit, amount, extra = unpack(checks[c])
  if kind == 'rate' then
    if limit <= 0 then return {0, c, extra} end
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local new = tat + amount * extra / limit
    if new - now - extra > 0.001 then return {0, c, math.ceil(new - now - extra)} end
    plans[c] = {new}
  elseif kind == 'conc' then
    -- each lease is scored by its own expiry; only at the cap are lapsed ones (of dead processes) swept
    if redis.call('ZCARD', key) >= limit then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      if redis.call('ZCARD', key) >= limit then return {0, c, 1000} end
    end
  else
    local suffix, ends = period(kind)
    local full = key .. ':' .. suffix
    local v = redis.call('HMGET', full, 's', 'r')
    local used = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
    if amount > 0 and used + amount > limit then return {0, c, math.ceil(ends - now)} end
    plans[c] = {full, ends}
  end
end

local out = {1}
for c = 1, n do
  local kind, key, _, amount, extra = unpack(checks[c])
  if kind == 'rate' then
    local new = plans[c][1]
    redis.call('SET', key, string.format('%.3f', new), 'PX', math.max(1, math.ceil(new - now)))
  elseif kind == 'conc' then
    redis.call('ZADD', key, now + extra, lease)
    -- the set lives as long as its longest lease: a short request never cuts a long stream's lease
    if redis.call('PTTL', key) < extra then redis.call('PEXPIRE', key, extra) end
  else
    local full, ends = plans[c][1], plans[c][2]
    redis.call('HINCRBY', full, 'r', string.format('%d', amount))
    redis.call('PEXPIREAT', full, math.ceil(ends) + 86400000)
    out[#out + 1] = full
  end
end
return out
