"""The Lua scripts behind the Redis store: every write is one atomic script on the server.

Each script is registered once per client (``register_script``) and runs by EVALSHA;
redis-py's ``Script`` loads it again when the server answers NOSCRIPT (after a
restart or SCRIPT FLUSH). Times come from the server (``TIME``), so leases expire by
one clock whatever the runners' clocks say. The scripts compute in whole milliseconds
(exact in a Lua double) but store every time as Unix seconds with three decimals
(``"1796406212.756"``) under a name ending in ``_s``, the unit of the SQL stores, so
``redis-cli HGETALL`` reads like ``sqlite3`` and ``psql``.
Redis 7 replicates a script's effects, not the script, so TIME and INFO are allowed.

Every write script takes the same four keys and first four arguments::

    KEYS[1] run hash       {prefix}run:{job}:{run}
    KEYS[2] history list   {prefix}hist:{job}:{run}
    KEYS[3] run index      {prefix}runs            (zset "job\\0run" -> expiry, Unix seconds, see touch)
    KEYS[4] instance       {prefix}instance        (string: a random id, see below)
    ARGV[1] index member   ARGV[2] marker key base ({prefix}markers:{job}:{run}:)
    ARGV[3] retention ms (0 = never expire)   ARGV[4] history limit

Arguments and answers between the client and the scripts carry times and durations in
whole milliseconds (an internal protocol); only what is stored is in seconds.

The marker hashes are named from ARGV[2] plus the run hash's ``cursors`` field
rather than passed as KEYS, which is fine on a standalone server or a replicated
primary (the store does not support Redis Cluster).

The run hash's fields::

    body      the record as canonical JSON (restartable._checkpoint.encode_record)
    epoch     the fencing token, decimal
    status    owner (canonical JSON of Owner.to_dict(), "" for none)
    started_at_s   updated_at_s   heartbeat_at_s   lease_until_s
              (Unix seconds on the server clock, e.g. "1796406212.756"; lease_until_s ""
              when released)
    done      failed    (copied from the record, for the history entry an acquire appends)
    seq       the sequence number of the last save at this epoch ("0" after an acquire; absent
              in records written before it existed: 0). SAVE writes only a higher one: the
              epoch does not order the saves of one runner, and a save whose bytes were
              delayed past the read deadline (the client gave up, retried, and saved again
              since) would otherwise land later and move the checkpoint backwards; a retried
              save that finds its own number was applied already and is answered as done
    cursors   " name1 name2 ": the percent-encoded cursor names that have marker hashes
    expires_at_s  when the run's keys expire (Unix seconds), "never" with ttl 0 (see touch)

History entries are canonical JSON, ``{"at_s":1796406212.756,"done":..,"epoch":..,
"failed":..,"status":".."}``, newest first.

Stores written before record format 2 name these fields ``started updated heartbeat
lease expires`` and history entries ``at``, all in milliseconds, and score the index in
milliseconds. Every script reads either form (a ``_s`` field wins); ACQUIRE, the one
write that can meet an old run first (a save needs the epoch an acquire gave),
rewrites an old run's fields in the new form and deletes the old ones. Old history
entries stay until they age out of the list; readers accept both. Old index scores
(above 1e11: no time in seconds is that large before the year 5138) are pruned by
their own unit.

ACQUIRE, DELETE and RESTORE take a fifth key, ``{prefix}epoch-floor`` (a decimal
string that never expires): the highest epoch ever given to or deleted from any run
under the prefix. A record created (again) starts at the larger of the client's clock
seed and floor + 1, so after a reset, or after the run's keys expired by ``ttl``, no
epoch of the new record can equal one a stale runner of the old record still holds,
even when the client's clock stepped back (see ``base.first_epoch``). ACQUIRE raises
it to every epoch it hands out (which covers records that expire: they leave nothing
behind to raise it from), DELETE to the epoch it removes (which covers records written
before the key existed), RESTORE to the epoch it writes back. A store without the key
reads it as 0: records are then seeded from the clock alone, as before.

The instance key tells a reset from a loss. ``acquire`` (and ``restore``) create it
once per prefix with a random id and it never expires; ``delete`` never touches it.
A save, renew or mark that finds the run hash missing answers ``{"missing",
instance id or "", run_id}``: when the id is the one the runner saw at its acquire,
the data survived and the run was deleted (a reset: the runner is fenced); when it
is gone or different, everything under the prefix was lost (a restart without
persistence, FLUSHALL/FLUSHDB) and the runner may write its record back. RESTORE
makes that same judgement again inside the script, so a reset, a second runner or
another restore between the refusal and the write-back cannot be overwritten.

The fields override the same keys inside ``body``: a script never parses JSON
(cjson would round 16-digit epochs), it only sets fields. Scripts are kept to a
few commands each (a command costs 2-5 µs inside a script): the epoch check reads
the cursor list and the expiry in the same HMGET, expiries are pushed ahead in
steps rather than on every write, and the history is trimmed in batches.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "DELETE", "MARK", "RENEW", "RESTORE", "SAVE"]

_PRELUDE = r"""
local run, hist, idx, inst = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member, mbase, ttl, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

-- Whole numbers as plain digits: tostring() would print 1.7e+15.
local function num(n) return string.format('%.0f', n) end

-- A time in ms as stored: Unix seconds with three decimals.
local function secs(ms) return string.format('%.3f', ms / 1000) end

-- A stored time in ms, nil when absent or "" (a released lease): the *_s field `s` when
-- the hash has it (false from HMGET when not), else the ms field `legacy` of a run
-- written before format 2.
local function ms_of(s, legacy)
  if s then
    if s == '' then return nil end
    return math.floor(tonumber(s) * 1000 + 0.5)
  end
  if legacy and legacy ~= '' then return tonumber(legacy) end
  return nil
end

-- ms_of as the text of an answer: digits, or "" for none.
local function ms_text(s, legacy)
  local ms = ms_of(s, legacy)
  if ms then return num(ms) end
  return ''
end

-- The stored expiry for touch: "never", ms, or nil (none yet: touch pushes it).
local function expiry(s, legacy)
  if s == 'never' or (not s and legacy == 'never') then return 'never' end
  return ms_of(s, legacy)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The server's run_id changes on every restart: only for the message, since a
-- restart with appendonly keeps the data (the instance key decides, see above).
local function server_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
end

-- The prefix's instance id, created from `token` when there is none (a new store,
-- a store written before the key existed, or one that lost everything).
local function instance(token)
  local id = redis.call('GET', inst)
  if not id then
    redis.call('SET', inst, token)
    id = token
  end
  return id
end

-- The answer for a missing run hash: the caller compares the instance id with the
-- one it saw at its acquire.
local function missing()
  return {'missing', redis.call('GET', inst) or '', server_id()}
end

-- The list is trimmed back to the limit once it is a fifth over it, not on every
-- push; readers never look past the limit.
local function push_history(entry)
  if redis.call('LPUSH', hist, entry) > limit + math.max(1, math.floor(limit / 5)) then
    redis.call('LTRIM', hist, 0, limit - 1)
  end
end

-- Keep every key of the run alive for at least `ttl` after now. The expiry (and the
-- index score, which is the run's expiry in seconds) is pushed to now + ttl + step,
-- step a tenth of ttl and at most a minute, and only when the last push (`expires`:
-- the run hash's expires_at_s through expiry()) falls outside [now + ttl, now + ttl +
-- step]: most writes skip it, and a run lives between ttl and ttl + step after its
-- last update. `force` after a new key was made (a new marker hash), which has no
-- expiry yet.
local function touch(now, cursors, expires, force)
  local keys = {run, hist}
  for c in string.gmatch(cursors or '', '%S+') do keys[#keys + 1] = mbase .. c end
  if ttl == 0 then
    if expires == 'never' and not force then return end
    for _, k in ipairs(keys) do redis.call('PERSIST', k) end
    redis.call('HSET', run, 'expires_at_s', 'never')
    redis.call('ZADD', idx, 'inf', member)
    redis.call('PERSIST', idx)
    return
  end
  local step = math.min(math.floor(ttl / 10), 60000)
  local last = tonumber(expires)
  if not force and last and last >= now + ttl and last <= now + ttl + step then return end
  local at = now + ttl + step
  for _, k in ipairs(keys) do redis.call('PEXPIREAT', k, num(at)) end
  redis.call('HSET', run, 'expires_at_s', secs(at))
  redis.call('ZADD', idx, secs(at), member)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. secs(now))
  -- Scores of runs indexed before format 2 are ms (above 1e11): pruned by their own unit.
  redis.call('ZREMRANGEBYSCORE', idx, '1e11', '(' .. num(now))
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  if top[2] == 'inf' then
    redis.call('PERSIST', idx)
  else
    local t = tonumber(top[2])
    if t < 1e11 then t = t * 1000 end
    redis.call('PEXPIREAT', idx, num(math.ceil(t)))
  end
end

-- The epoch floor (KEYS[5] of acquire, delete and restore): raised, never lowered.
local function raise_floor(epoch)
  local floor = tonumber(redis.call('GET', KEYS[5]) or '0') or 0
  if tonumber(epoch) > floor then redis.call('SET', KEYS[5], epoch) end
end

-- The epoch check of mark: (nil, cursors, expires) when the caller may write, else the
-- refusal to return. (save and renew read more fields in the same HMGET.)
local function check(epoch)
  local f = redis.call('HMGET', run, 'epoch', 'cursors', 'expires_at_s', 'expires')
  if not f[1] then return missing() end
  if f[1] ~= epoch then return {'fenced', f[1]} end
  return nil, f[2], expiry(f[3], f[4])
end
"""

# Shared by save and restore. ARGV[5] epoch, [6] body, [7] status, [8] owner,
# [9] started ms, [10] done, [11] failed, [12] lease ms or "" (release),
# [13] the history entry after its "at" field ('"done":..,"epoch":..}'), [14] the save's seq.
_WRITE = r"""
-- True when the stored seq (field f of an HMGET) is this save's or a later one: applied already.
local function applied(f)
  return tonumber(f or '0') >= tonumber(ARGV[14])
end

local function write(now, cursors, expires)
  local at, until_, until_s = secs(now), '', ''
  if ARGV[12] ~= '' then
    until_ = num(now + tonumber(ARGV[12]))
    until_s = secs(now + tonumber(ARGV[12]))
  end
  redis.call('HSET', run, 'body', ARGV[6], 'epoch', ARGV[5], 'status', ARGV[7], 'owner', ARGV[8],
    'started_at_s', secs(tonumber(ARGV[9])), 'updated_at_s', at, 'heartbeat_at_s', at, 'lease_until_s', until_s,
    'done', ARGV[10], 'failed', ARGV[11], 'seq', ARGV[14])
  push_history('{"at_s":' .. at .. ',' .. ARGV[13])
  touch(now, cursors, expires)
  return until_
end
"""

#: Take the lease. KEYS[5] the epoch floor. ARGV[5] first epoch (the client's clock seed;
#: the floor + 1 when that is higher), [6] body of a new record, [7] owner,
#: [8] lease ms, [9] steal epoch or "", [10] a fresh random id for the instance key,
#: [11] a takeover's epoch step (random, 1 to 2**20: see base.next_epoch).
#: Returns {"ok", instance id, run_id, field, value, ...} or {"locked", now, owner, heartbeat, lease}.
ACQUIRE = (
    _PRELUDE
    + r"""
local now = clock()
local at, owner, lease = secs(now), ARGV[7], tonumber(ARGV[8])
-- f[10..14]: the fields of a run written before format 2 (ms), false in a newer one.
local f = redis.call('HMGET', run, 'epoch', 'lease_until_s', 'owner', 'status', 'heartbeat_at_s', 'done', 'failed',
  'cursors', 'expires_at_s', 'lease', 'heartbeat', 'expires', 'started_at_s', 'started')
local epoch, status, done, failed = f[1], 'running', '0', '0'
local expires = expiry(f[9], f[12])
if not epoch then
  -- Above every epoch handed out or deleted under the prefix, whatever the client's clock says.
  local floor = tonumber(redis.call('GET', KEYS[5]) or '0') or 0
  epoch = num(math.max(tonumber(ARGV[5]), floor + 1))
  redis.call('HSET', run, 'body', ARGV[6], 'epoch', epoch, 'status', status, 'owner', owner,
    'started_at_s', at, 'updated_at_s', at, 'heartbeat_at_s', at, 'lease_until_s', secs(now + lease),
    'done', done, 'failed', failed, 'seq', '0')
else
  local held_until = ms_of(f[2], f[10])
  -- The rule of Store._take_over: free, stolen from a proven-dead holder, or our own.
  local free = held_until == nil or held_until <= now or ARGV[9] == epoch or f[3] == owner
  if not free then return {'locked', num(now), f[3], ms_text(f[5], f[11]), ms_text(f[2], f[10])} end
  epoch = num(redis.call('HINCRBY', run, 'epoch', tonumber(ARGV[11])))
  if f[4] == 'completed' then status = 'completed' end
  done, failed = f[6] or '0', f[7] or '0'
  redis.call('HSET', run, 'status', status, 'owner', owner, 'updated_at_s', at, 'heartbeat_at_s', at,
    'lease_until_s', secs(now + lease), 'seq', '0')
  if not f[13] and f[14] then
    -- A run written before format 2: its start in seconds, its ms fields gone (touch
    -- below writes expires_at_s, as `expires` is then nil).
    redis.call('HSET', run, 'started_at_s', secs(tonumber(f[14])))
    redis.call('HDEL', run, 'started', 'updated', 'heartbeat', 'lease', 'expires')
    expires = nil
  end
end
raise_floor(epoch)
push_history(string.format('{"at_s":%s,"done":%s,"epoch":%s,"failed":%s,"status":"%s"}',
  at, done, epoch, failed, status))
touch(now, f[8], expires)
local out = {'ok', instance(ARGV[10]), server_id()}
for _, v in ipairs(redis.call('HGETALL', run)) do out[#out + 1] = v end
return out
"""
)

#: Compare-and-set the whole record on its epoch and seq. Returns {"ok", now, lease or ""}
#: (the stored updated and lease when this save or a later one was applied already),
#: {"fenced", stored epoch} or {"missing", instance id, run_id}.
SAVE = (
    _PRELUDE
    + _WRITE
    + r"""
local f = redis.call('HMGET', run, 'epoch', 'cursors', 'expires_at_s', 'seq', 'updated_at_s', 'lease_until_s')
if not f[1] then return missing() end
if f[1] ~= ARGV[5] then return {'fenced', f[1]} end
if applied(f[4]) then return {'ok', ms_text(f[5]), ms_text(f[6])} end
local now = clock()
return {'ok', num(now), write(now, f[2], expiry(f[3]))}
"""
)

#: Write the record back after the server lost it: a compare-and-set on the loss itself.
#: KEYS[5] the epoch floor. ARGV[5..14] as SAVE, [15] the instance id the runner saw ("" when it saw none),
#: [16] a fresh random id (the same for every retry of one restore). Writes only when
#: the run hash is still absent and the instance key is gone or differs from ARGV[15]
#: (with ARGV[15] "": only when it is gone) and from ARGV[16] (an id this very restore
#: made in an attempt whose answer was lost: the run was written back, then reset), or
#: when the hash is back at the caller's epoch (a retried restore whose first answer
#: was lost, or another thread of the same runner: a plain save then).
#: Returns {"ok", now, lease, instance id, run_id}, {"fenced", epoch} when another
#: runner created the run meanwhile, or {"missing", instance id, run_id} when the
#: data was not lost (the run was reset).
RESTORE = (
    _PRELUDE
    + _WRITE
    + r"""
local f = redis.call('HMGET', run, 'epoch', 'cursors', 'expires_at_s', 'seq', 'updated_at_s', 'lease_until_s')
if f[1] then
  if f[1] ~= ARGV[5] then return {'fenced', f[1]} end
  if applied(f[4]) then return {'ok', ms_text(f[5]), ms_text(f[6]), redis.call('GET', inst) or '', server_id()} end
else
  local id = redis.call('GET', inst)
  if id and (ARGV[15] == '' or id == ARGV[15] or id == ARGV[16]) then return missing() end
end
raise_floor(ARGV[5])
local now = clock()
return {'ok', num(now), write(now, f[2], expiry(f[3])), instance(ARGV[16]), server_id()}
"""
)

#: Extend the lease. ARGV[5] epoch, [6] lease ms. Returns {"ok", lease}, a refusal, or
#: {"released", epoch} when the lease at that epoch was released (lease field ""): a renewal
#: delayed past the release must not take the lease again.
RENEW = (
    _PRELUDE
    + r"""
local f = redis.call('HMGET', run, 'epoch', 'cursors', 'expires_at_s', 'lease_until_s')
if not f[1] then return missing() end
if f[1] ~= ARGV[5] then return {'fenced', f[1]} end
if f[4] == '' then return {'released', f[1]} end
local now = clock()
local until_ = now + tonumber(ARGV[6])
redis.call('HSET', run, 'heartbeat_at_s', secs(now), 'lease_until_s', secs(until_))
touch(now, f[2], expiry(f[3]))
return {'ok', num(until_)}
"""
)

#: Remove the run and all its keys, raising the epoch floor (KEYS[5]) to its epoch.
#: ARGV[5] epoch or "" (any). Returns 1 or 0.
DELETE = (
    _PRELUDE
    + r"""
local f = redis.call('HMGET', run, 'epoch', 'cursors')
if not f[1] or (ARGV[5] ~= '' and f[1] ~= ARGV[5]) then return 0 end
raise_floor(f[1])
local keys = {run, hist}
for c in string.gmatch(f[2] or '', '%S+') do keys[#keys + 1] = mbase .. c end
redis.call('DEL', unpack(keys))
redis.call('ZREM', idx, member)
return 1
"""
)

#: Record one item as done. KEYS[5] the cursor's marker hash; ARGV[5] epoch,
#: [6] encoded cursor name, [7] item key, [8] JSON value. Returns {"ok"} or a refusal.
MARK = (
    _PRELUDE
    + r"""
local no, cursors, expires = check(ARGV[5])
if no then return no end
redis.call('HSET', KEYS[5], ARGV[7], ARGV[8])
cursors = cursors or ' '
local new = not string.find(cursors, ' ' .. ARGV[6] .. ' ', 1, true)
if new then
  cursors = cursors .. ARGV[6] .. ' '
  redis.call('HSET', run, 'cursors', cursors)
end
touch(clock(), cursors, expires, new)
return {'ok'}
"""
)
