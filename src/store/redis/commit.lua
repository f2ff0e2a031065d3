#!lua
-- One queue transaction's commit (src/store/redis/queues.rs builds it): all or nothing, one round
-- trip. ARGV is a list of steps, each its name and then its arguments; a key argument is its index in
-- KEYS. Every key is declared and hashes to one slot (the brand's tag).
--
-- Pass 1 checks that what the transaction read still holds; if anything changed it returns 0 and
-- writes nothing, and the engine runs the transaction again. Pass 2 writes. Pass 3 keeps what follows
-- from the writes: each player's pending count and oldest pixel, the brand's depth, the versions.
--
-- Checks:  VER v p n   the player p's version in hash v is still n (then raised)
--          VAL k f t   field f of hash k is as read: t is '' for absent, '=' and the value otherwise
--          HAS k m     member m is in sorted set k
--          QUEUE q b o c p   queue q of player p changes: backlog b, oldest o, counts c follow it
--          BUMP v p    raise player p's version (written, not read)
-- Writes:  HSET k f v | HDEL k f | ZADD k s m | ZREM k m | ZREMSCORE k s | ZREMPREFIX k lo hi
--          LADD l s h m c   member m into lane l, host h into lane set s, counts c
--          LREM l s h m c   member m out of lane l (h out of s once the lane is empty)
--          DAY c d n   n new events on UTC day d
--          WAIT c n    n more (or fewer, negative) pixels waiting for consent
local arity = {
  VER = 3, VAL = 3, HAS = 2, QUEUE = 5, BUMP = 2,
  HSET = 3, HDEL = 2, ZADD = 3, ZREM = 2, ZREMSCORE = 2, ZREMPREFIX = 3,
  LADD = 5, LREM = 5, DAY = 3, WAIT = 2,
}

local function key(i) return KEYS[tonumber(i)] end

-- Pass 1: checks, and each changing queue's length before.
local before = {}
local i = 1
while i <= #ARGV do
  local op, a, b, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'VER' then
    local now = redis.call('HGET', key(a), b) or '0'
    if now ~= c then return 0 end
  elseif op == 'VAL' then
    local now = redis.call('HGET', key(a), b)
    if now then now = '=' .. now else now = '' end
    if now ~= c then return 0 end
  elseif op == 'HAS' then
    if not redis.call('ZSCORE', key(a), b) then return 0 end
  elseif op == 'QUEUE' then
    before[i] = redis.call('ZCARD', key(a))
  elseif not arity[op] then
    return redis.error_reply('commit: unknown step ' .. tostring(op))
  end
  i = i + 1 + arity[op]
end

-- Pass 2: writes.
i = 1
while i <= #ARGV do
  local op, a, b, c, d, e = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  if op == 'HSET' then
    redis.call('HSET', key(a), b, c)
  elseif op == 'HDEL' then
    redis.call('HDEL', key(a), b)
  elseif op == 'ZADD' then
    redis.call('ZADD', key(a), b, c)
  elseif op == 'ZREM' then
    redis.call('ZREM', key(a), b)
  elseif op == 'ZREMSCORE' then
    redis.call('ZREMRANGEBYSCORE', key(a), b, b)
  elseif op == 'ZREMPREFIX' then
    redis.call('ZREMRANGEBYLEX', key(a), b, c)
  elseif op == 'LADD' then
    if redis.call('ZADD', key(a), 0, d) == 1 then
      redis.call('HINCRBY', key(e), 'outbox', 1)
    end
    redis.call('SADD', key(b), c)
  elseif op == 'LREM' then
    if redis.call('ZREM', key(a), d) == 1 then
      redis.call('HINCRBY', key(e), 'outbox', -1)
    end
    if redis.call('ZCARD', key(a)) == 0 then
      redis.call('SREM', key(b), c)
    end
  elseif op == 'DAY' then
    if redis.call('HGET', key(a), 'day') ~= b then
      redis.call('HSET', key(a), 'day', b, 'events', 0)
    end
    redis.call('HINCRBY', key(a), 'events', c)
  elseif op == 'WAIT' then
    redis.call('HINCRBY', key(a), 'waiting', b)
  end
  i = i + 1 + arity[op]
end

-- Pass 3: what follows from the writes.
i = 1
while i <= #ARGV do
  local op, a, b, c, d, e = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  if op == 'VER' or op == 'BUMP' then
    redis.call('HINCRBY', key(a), b, 1)
  elseif op == 'QUEUE' then
    local n = redis.call('ZCARD', key(a))
    if n == 0 then
      redis.call('ZREM', key(b), e)
      redis.call('ZREM', key(c), e)
    else
      redis.call('ZADD', key(b), n, e)
      local head = redis.call('ZRANGE', key(a), 0, 0)[1]
      redis.call('ZADD', key(c), tonumber(string.sub(head, 21, 40)), e)
    end
    if n ~= before[i] then
      redis.call('HINCRBY', key(d), 'depth', n - before[i])
    end
  end
  i = i + 1 + arity[op]
end
return 1
