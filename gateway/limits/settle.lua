-- Settle finished requests (one call may carry many): give back or charge the difference on tpm
-- buckets, release concurrency leases, and turn budget reservations into spend.
-- ARGV[1]: a JSON array of settlements [kind, key, a, b, c, lease] (see rules.Settlement).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local settlements = cjson.decode(ARGV[1])
for i = 1, #settlements do
  local kind, key, a, b, c, lease = unpack(settlements[i])
  if kind == 'rate' then
    local limit, per, delta = a, b, c
    if limit > 0 and delta ~= 0 then
      local tat = tonumber(redis.call('GET', key) or '0')
      local new
      if delta > 0 then
        new = math.max(tat, now) + delta * per / limit
      else
        new = math.max(now, tat + delta * per / limit)
      end
      if new > now then
        redis.call('SET', key, string.format('%.3f', new), 'PX', math.max(1, math.ceil(new - now)))
      else
        redis.call('DEL', key)
      end
    end
  elseif kind == 'conc' then
    redis.call('ZREM', key, lease)
  else
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'r', string.format('%d', -a)) -- admission added `a` to this very key
      redis.call('HINCRBY', key, 's', string.format('%d', b))
    end
  end
end
return 1
