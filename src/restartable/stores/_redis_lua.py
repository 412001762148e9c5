"""The Lua scripts behind the Redis store: every write is one atomic script on the server.

Each script is registered once per client (``register_script``) and runs by EVALSHA;
redis-py's ``Script`` loads it again when the server answers NOSCRIPT (after a
restart or SCRIPT FLUSH). Times come from the server (``TIME``) in whole
milliseconds, so leases expire by one clock whatever the runners' clocks say.
Redis 7 replicates a script's effects, not the script, so TIME and INFO are allowed.

Every write script takes the same four keys and first four arguments::

    KEYS[1] run hash       {prefix}run:{job}:{run}
    KEYS[2] history list   {prefix}hist:{job}:{run}
    KEYS[3] cursor set     {prefix}cursors:{job}:{run}   (encoded names of the marker hashes)
    KEYS[4] run index      {prefix}runs                  (zset "job\\0run" -> expiry in ms)
    ARGV[1] index member   ARGV[2] marker key base ({prefix}markers:{job}:{run}:)
    ARGV[3] retention ms (0 = never expire)   ARGV[4] history limit

The marker hashes are named from ARGV[2] plus the cursor set's members rather than
passed as KEYS, which is fine on a standalone server or a replicated primary (the
store does not support Redis Cluster).

The run hash's fields::

    body      the record as canonical JSON (restartable.checkpoint.encode_record)
    epoch     the fencing token, decimal
    status    owner (canonical JSON of Owner.to_dict(), "" for none)
    started   updated   heartbeat   lease (ms on the server clock; lease "" when released)
    done      failed    (copied from the record, for the history entry an acquire appends)

The fields override the same keys inside ``body``: a script never parses JSON
(cjson would round 16-digit epochs), it only sets fields.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "SAVE", "RESTORE", "RENEW", "DELETE", "MARK"]

_PRELUDE = r"""
local run, hist, curs, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member, mbase, ttl, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

-- Whole numbers as plain digits: tostring() would print 1.7e+15.
local function num(n) return string.format('%.0f', n) end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The server's run_id changes on every restart: a missing record plus a new
-- run_id means the server lost its data, not that someone deleted the run.
local function server_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
end

local function push_history(entry)
  redis.call('LPUSH', hist, entry)
  redis.call('LTRIM', hist, 0, limit - 1)
end

-- Refresh the retention of every key of the run, counted from now, and keep the
-- index's score (the run's expiry) in step; the index expires with its last run.
local function touch(now)
  local keys = {run, hist, curs}
  for _, c in ipairs(redis.call('SMEMBERS', curs)) do keys[#keys + 1] = mbase .. c end
  local score = 'inf'
  if ttl > 0 then
    score = num(now + ttl)
    for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ttl) end
  else
    for _, k in ipairs(keys) do redis.call('PERSIST', k) end
  end
  redis.call('ZADD', idx, score, member)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. num(now))
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  if top[2] == 'inf' then redis.call('PERSIST', idx) else redis.call('PEXPIREAT', idx, top[2]) end
end

-- The epoch check shared by save, renew and mark: nil when the caller may write.
local function refused(epoch)
  local stored = redis.call('HGET', run, 'epoch')
  if not stored then return {'missing', server_id()} end
  if stored ~= epoch then return {'fenced', stored} end
  return nil
end
"""

# Shared by save and restore. ARGV[5] epoch, [6] body, [7] status, [8] owner,
# [9] started ms, [10] done, [11] failed, [12] lease ms or "" (release),
# [13] the history entry after its "at" field ('"done":..,"epoch":..}').
_WRITE = r"""
local function write(now)
  local until_ = ''
  if ARGV[12] ~= '' then until_ = num(now + tonumber(ARGV[12])) end
  redis.call('HSET', run, 'body', ARGV[6], 'epoch', ARGV[5], 'status', ARGV[7], 'owner', ARGV[8],
    'started', ARGV[9], 'updated', num(now), 'heartbeat', num(now), 'lease', until_,
    'done', ARGV[10], 'failed', ARGV[11])
  push_history('{"at":' .. num(now) .. ',' .. ARGV[13])
  touch(now)
  return until_
end
"""

#: Take the lease. ARGV[5] first epoch, [6] body of a new record, [7] owner,
#: [8] lease ms, [9] steal epoch or "".
#: Returns {"ok", run_id, field, value, ...} or {"locked", now, owner, heartbeat, lease}.
ACQUIRE = _PRELUDE + r"""
local now = clock()
local owner, lease = ARGV[7], tonumber(ARGV[8])
local epoch = redis.call('HGET', run, 'epoch')
local status, done, failed = 'running', '0', '0'
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', run, 'body', ARGV[6], 'epoch', epoch, 'status', status, 'owner', owner,
    'started', num(now), 'updated', num(now), 'heartbeat', num(now), 'lease', num(now + lease),
    'done', done, 'failed', failed)
else
  local f = redis.call('HMGET', run, 'lease', 'owner', 'status', 'heartbeat', 'done', 'failed')
  local held_until = tonumber(f[1])
  -- The rule of Store._take_over: free, stolen from a proven-dead holder, or our own.
  local free = held_until == nil or held_until <= now or ARGV[9] == epoch or f[2] == owner
  if not free then return {'locked', num(now), f[2], f[4], f[1]} end
  epoch = num(redis.call('HINCRBY', run, 'epoch', 1))
  if f[3] == 'completed' then status = 'completed' end
  done, failed = f[5] or '0', f[6] or '0'
  redis.call('HSET', run, 'status', status, 'owner', owner, 'updated', num(now),
    'heartbeat', num(now), 'lease', num(now + lease))
end
push_history(string.format('{"at":%s,"done":%s,"epoch":%s,"failed":%s,"status":"%s"}',
  num(now), done, epoch, failed, status))
touch(now)
local out = {'ok', server_id()}
for _, v in ipairs(redis.call('HGETALL', run)) do out[#out + 1] = v end
return out
"""

#: Compare-and-set the whole record on its epoch. Returns {"ok", now, lease or ""},
#: {"fenced", stored epoch} or {"missing", run_id}.
SAVE = _PRELUDE + _WRITE + r"""
local no = refused(ARGV[5])
if no then return no end
local now = clock()
return {'ok', num(now), write(now)}
"""

#: Write the record back unconditionally (after the server lost it). Returns {"ok", now, lease, run_id}.
RESTORE = _PRELUDE + _WRITE + r"""
local now = clock()
return {'ok', num(now), write(now), server_id()}
"""

#: Extend the lease. ARGV[5] epoch, [6] lease ms. Returns {"ok", lease} or a refusal.
RENEW = _PRELUDE + r"""
local no = refused(ARGV[5])
if no then return no end
local now = clock()
local until_ = num(now + tonumber(ARGV[6]))
redis.call('HSET', run, 'heartbeat', num(now), 'lease', until_)
touch(now)
return {'ok', until_}
"""

#: Remove the run and all its keys. ARGV[5] epoch or "" (any). Returns 1 or 0.
DELETE = _PRELUDE + r"""
local stored = redis.call('HGET', run, 'epoch')
if not stored or (ARGV[5] ~= '' and stored ~= ARGV[5]) then return 0 end
local keys = {run, hist, curs}
for _, c in ipairs(redis.call('SMEMBERS', curs)) do keys[#keys + 1] = mbase .. c end
redis.call('DEL', unpack(keys))
redis.call('ZREM', idx, member)
return 1
"""

#: Record one item as done. KEYS[5] the cursor's marker hash; ARGV[5] epoch,
#: [6] encoded cursor name, [7] item key, [8] JSON value. Returns {"ok"} or a refusal.
MARK = _PRELUDE + r"""
local no = refused(ARGV[5])
if no then return no end
redis.call('HSET', KEYS[5], ARGV[7], ARGV[8])
redis.call('SADD', curs, ARGV[6])
touch(clock())
return {'ok'}
"""
