"""The Redis registry's operations as Lua scripts: each runs atomically inside Redis, so instances
that enroll, connect and answer at the same moment never see half an operation, in one round trip.

They follow the in-memory registry (proto/rendezvous/memory.py) rule for rule; one test suite
(tests/proto/test_rendezvous_registry.py) runs on both. Keys (P is the prefix, "nattrav:" by default):

    P p:ID      hash of a peer: sh (SHA-256 of its secret), key (the identity key it proved at
                enroll; absent or empty: none), info (packed node info), obs, src, inst and
                conn (where it is connected; empty: offline), off (offline since). TTL: its lease while
                online (refreshed by its instance), `retain` once offline
    P s:SRC     zset: the peers registered from one source, oldest first (per-source cap)
    P all       zset: every peer, scored by when it is forgotten (the registry-wide cap)
    P off       zset: offline peers, scored by when they went offline (oldest is evicted first)
    P o:OFFER   hash of a pending offer: ini, tgt, src (the initiator's), rid, exp. TTL: its timeout
    P po:ID     set: the pending offers a peer is part of (bounded by max_offers_per_peer)
    P i:INST    set: the peers online at one instance (its reaper's list once it dies)
    P insts     zset: instance heartbeats; an instance silent for `dead_after` is dead, its peers offline
    P names     hash: name -> the identity key that first claimed it (no TTL: a binding is for good;
                Redis's persistence, RDB or AOF, keeps it across restarts)
    P n:INST    stream: notices relayed to one instance (io/redis_registry.py appends and reads them)

Every script takes the same first arguments (the prefix, the caller's registry time and the limits)
and builds its key names from the prefix: a standalone Redis or a replicated pair, not a Cluster
(docs/deploy.md says what a Cluster would need). Lua numbers returned to Redis become integers, so
times and counts go back as strings.
"""

from __future__ import annotations

# The arguments every script starts with, in this order (RedisRegistry._common builds them).
COMMON = ("prefix", "now", "lease", "retain", "dead_after", "max_peers", "max_peers_per_source",
          "max_offers_per_peer", "max_offers_per_source")

PRELUDE = r"""
local P = ARGV[1]
local now = tonumber(ARGV[2])
local lease, retain, dead_after = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_peers, max_per_source = tonumber(ARGV[6]), tonumber(ARGV[7])
local max_offers_peer, max_offers_source = tonumber(ARGV[8]), tonumber(ARGV[9])
local A = 10

local function pk(id) return P .. 'p:' .. id end
local function ms(s) return math.max(1, math.floor(s * 1000)) end
local function num(x) return string.format('%.17g', x) end

local function alive(inst)
  if not inst or inst == '' then return false end
  local hb = redis.call('ZSCORE', P .. 'insts', inst)
  return hb and tonumber(hb) >= now - dead_after
end

local function forget(id)
  local f = redis.call('HMGET', pk(id), 'src', 'inst')
  redis.call('DEL', pk(id), P .. 'po:' .. id)
  redis.call('ZREM', P .. 'all', id)
  redis.call('ZREM', P .. 'off', id)
  if f[1] then redis.call('ZREM', P .. 's:' .. f[1], id) end
  if f[2] and f[2] ~= '' then redis.call('SREM', P .. 'i:' .. f[2], id) end
end

-- A peer's record (sh, src, inst, conn, off, key), nil when unknown; an offline peer whose retention
-- is over by the caller's clock is forgotten here (Redis's own TTL may not have fired yet).
local function peer(id)
  local f = redis.call('HMGET', pk(id), 'sh', 'src', 'inst', 'conn', 'off', 'key')
  if not f[1] then return nil end
  if f[3] == '' and f[5] and f[5] ~= '' and tonumber(f[5]) + retain <= now then
    forget(id)
    return nil
  end
  return f
end

-- Where a peer is connected: instance and connection, or nil (offline, unknown, instance dead).
local function home(id)
  local f = peer(id)
  if f and alive(f[3]) then return f[3], f[4] end
  return nil
end

local function offers_of(id)
  local key = P .. 'po:' .. id
  local out = {}
  for _, o in ipairs(redis.call('SMEMBERS', key)) do
    if redis.call('EXISTS', P .. 'o:' .. o) == 1 then out[#out + 1] = o else redis.call('SREM', key, o) end
  end
  return out
end

-- Drop a pending offer; append to `out` who is to be told (8 fields, '' for nobody).
local function end_offer(o, out)
  local f = redis.call('HMGET', P .. 'o:' .. o, 'ini', 'tgt', 'rid')
  if not f[1] then return end
  redis.call('DEL', P .. 'o:' .. o)
  redis.call('SREM', P .. 'po:' .. f[1], o)
  redis.call('SREM', P .. 'po:' .. f[2], o)
  local ii, ic = home(f[1])
  local ti, tc = home(f[2])
  for _, v in ipairs({o, f[1], ii or '', ic or '', f[3] or '', f[2], ti or '', tc or ''}) do
    out[#out + 1] = v
  end
end

local function go_offline(id, inst, out)
  redis.call('HSET', pk(id), 'inst', '', 'conn', '', 'off', num(now))
  redis.call('PEXPIRE', pk(id), ms(retain))
  redis.call('ZADD', P .. 'off', num(now), id)
  redis.call('ZADD', P .. 'all', num(now + retain), id)
  redis.call('SREM', P .. 'i:' .. inst, id)
  for _, o in ipairs(offers_of(id)) do end_offer(o, out) end
end

local function at(id, inst, conn)
  local f = peer(id)
  return f and f[3] == inst and f[4] == conn, f
end
"""

# ARGV[A..]: inst conn source observed info name secret_hash candidate_id candidate_hash key ordinary
# (ordinary '1': `name` is an ordinary name, bound to the first key that claims it; a name that is a
# peer ID belongs to the key it encodes, which the caller checked)
# -> {'ok', id, evicted, replaced_inst, replaced_conn, renewed, ended...} | {'no', code, message} | {'again'}
# (renewed '1': the peer's secret is now candidate_hash's: a peer with a key proved it by the key)
ENROLL = PRELUDE + r"""
local inst, conn, src, obs, info = ARGV[A], ARGV[A + 1], ARGV[A + 2], ARGV[A + 3], ARGV[A + 4]
local name, sh, cand, cand_sh, key = ARGV[A + 5], ARGV[A + 6], ARGV[A + 7], ARGV[A + 8], ARGV[A + 9]
local ordinary = ARGV[A + 10] == '1'
local renewed = '0'
local bound = nil
if ordinary then
  bound = redis.call('HGET', P .. 'names', name)
  if bound and bound ~= key then return {'no', 'name-taken', 'that name is bound to another key'} end
end
local evicted = 0

local function make_room(new_peer)
  local skey = P .. 's:' .. src
  if redis.call('ZCARD', skey) >= max_per_source then
    local victim = nil
    for _, m in ipairs(redis.call('ZRANGE', skey, 0, -1)) do
      if not peer(m) then
        redis.call('ZREM', skey, m)
      elseif victim == nil and home(m) == nil then
        victim = m
      end
    end
    if redis.call('ZCARD', skey) >= max_per_source then
      if victim == nil then
        return 'too many peers from ' .. src .. ' (at most ' .. max_per_source .. ')'
      end
      forget(victim)
      evicted = evicted + 1
    end
  end
  if new_peer then
    redis.call('ZREMRANGEBYSCORE', P .. 'all', '-inf', num(now))
    redis.call('ZREMRANGEBYSCORE', P .. 'off', '-inf', num(now - retain))
    if redis.call('ZCARD', P .. 'all') >= max_peers then
      local victim = redis.call('ZRANGE', P .. 'off', 0, 0)[1]
      if not victim then return 'too many peers' end
      forget(victim)
      evicted = evicted + 1
    end
  end
  return nil
end

local id, out = nil, {}
local rinst, rconn = '', ''
local existing = name ~= '' and peer(name) or nil
if existing then
  local proven
  if existing[6] and existing[6] ~= '' then
    proven = key ~= '' and existing[6] == key
  else
    proven = sh ~= '' and existing[1] == sh
  end
  if not proven then return {'no', 'name-taken', 'belongs to another peer'} end
end
-- bound once the claim is proven, before anything else (a claim later refused for room keeps it)
if ordinary and not bound and key ~= '' then redis.call('HSET', P .. 'names', name, key) end
if existing then
  id = name
  if key ~= '' then
    -- a key proves it each time; the secret (for key-less clients) is only renewed
    redis.call('HSET', pk(id), 'key', key, 'sh', cand_sh)
    renewed = '1'
  end
  if existing[2] ~= src then
    local refusal = make_room(false)
    if refusal then return {'no', 'busy', refusal} end
    redis.call('ZREM', P .. 's:' .. existing[2], id)
    redis.call('ZADD', P .. 's:' .. src, num(now), id)
  end
  for _, o in ipairs(offers_of(id)) do end_offer(o, out) end
  if existing[3] ~= '' then
    if alive(existing[3]) and not (existing[3] == inst and existing[4] == conn) then
      rinst, rconn = existing[3], existing[4]
    end
    redis.call('SREM', P .. 'i:' .. existing[3], id)
  end
  redis.call('ZREM', P .. 'off', id)
else
  local refusal = make_room(true)
  if refusal then return {'no', 'busy', refusal} end
  id = name ~= '' and name or cand
  if redis.call('EXISTS', pk(id)) == 1 then return {'again'} end
  redis.call('HSET', pk(id), 'sh', sh ~= '' and sh or cand_sh, 'key', key)
  redis.call('ZADD', P .. 's:' .. src, num(now), id)
end
redis.call('HSET', pk(id), 'src', src, 'inst', inst, 'conn', conn, 'obs', obs, 'info', info, 'off', '')
redis.call('PEXPIRE', pk(id), ms(lease))
redis.call('PEXPIRE', P .. 's:' .. src, ms(math.max(lease, retain)))
redis.call('ZADD', P .. 'all', num(now + lease), id)
redis.call('SADD', P .. 'i:' .. inst, id)
redis.call('PEXPIRE', P .. 'i:' .. inst, ms(lease))
local reply = {'ok', id, tostring(evicted), rinst, rconn, renewed}
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
"""

# ARGV[A..]: id inst conn info -> {1} | {0} (a list: every script answers one)
PUBLISH_INFO = PRELUDE + r"""
local ok = at(ARGV[A], ARGV[A + 1], ARGV[A + 2])
if not ok then return {0} end
redis.call('HSET', pk(ARGV[A]), 'info', ARGV[A + 3])
return {1}
"""

# ARGV[A..]: id inst conn -> {ended...}
OFFLINE = PRELUDE + r"""
local id, inst = ARGV[A], ARGV[A + 1]
local out = {}
if at(id, inst, ARGV[A + 2]) then go_offline(id, inst, out) end
return out
"""

# ARGV[A..]: id inst conn target timeout rid offer_id
# -> {'ok', target_inst, target_conn, info, key} | {'no', code, message} | {'again'}
CONNECT = PRELUDE + r"""
local id, inst, conn, target = ARGV[A], ARGV[A + 1], ARGV[A + 2], ARGV[A + 3]
local timeout, rid, oid = tonumber(ARGV[A + 4]), ARGV[A + 5], ARGV[A + 6]
local ok, me = at(id, inst, conn)
if not ok then return {'no', 'name-taken', 'this peer enrolled again elsewhere'} end
if target == id then return {'no', 'bad-request', 'cannot connect to yourself'} end
local t = peer(target)
if not t then return {'no', 'unknown-peer', 'no peer'} end
if not alive(t[3]) then return {'no', 'offline', 'offline'} end
local mine = offers_of(id)
if #mine >= max_offers_peer then
  return {'no', 'busy', 'you have ' .. #mine .. ' pending offers (at most ' .. max_offers_peer .. ')'}
end
local theirs = offers_of(target)
local from_source = 0
for _, o in ipairs(theirs) do
  local f = redis.call('HMGET', P .. 'o:' .. o, 'ini', 'src')
  if f[1] == id then return {'no', 'busy', 'already asking ' .. target .. ': wait for its answer'} end
  if f[2] == me[2] then from_source = from_source + 1 end
end
if from_source >= max_offers_source then
  return {'no', 'busy', from_source .. ' offers to ' .. target .. ' from ' .. me[2] .. ' are pending'}
end
if #theirs >= max_offers_peer then return {'no', 'busy', target .. ' has too many pending offers'} end
local okey = P .. 'o:' .. oid
if redis.call('EXISTS', okey) == 1 then return {'again'} end
redis.call('HSET', okey, 'ini', id, 'tgt', target, 'src', me[2], 'rid', rid, 'exp', num(now + timeout))
redis.call('PEXPIRE', okey, ms(timeout + 60))
for _, p in ipairs({id, target}) do
  redis.call('SADD', P .. 'po:' .. p, oid)
  redis.call('PEXPIRE', P .. 'po:' .. p, ms(math.max(lease, retain)))
end
return {'ok', t[3], t[4], redis.call('HGET', pk(id), 'info'), redis.call('HGET', pk(id), 'key') or ''}
"""

# ARGV[A..]: id inst conn offer_id
# -> {'ok', initiator, ini_inst, ini_conn, rid, ini_info, info, ini_key, key} | {'no', code, message}
ANSWER = PRELUDE + r"""
local id, oid = ARGV[A], ARGV[A + 3]
local ok = at(id, ARGV[A + 1], ARGV[A + 2])
local okey = P .. 'o:' .. oid
local f = redis.call('HMGET', okey, 'ini', 'tgt', 'rid')
if not ok or not f[1] or f[2] ~= id then return {'no', 'unknown-offer', 'no such pending offer'} end
redis.call('DEL', okey)
redis.call('SREM', P .. 'po:' .. f[1], oid)
redis.call('SREM', P .. 'po:' .. id, oid)
local ii, ic = home(f[1])
local ini_info = redis.call('HGET', pk(f[1]), 'info') or ''
return {'ok', f[1], ii or '', ic or '', f[3] or '', ini_info, redis.call('HGET', pk(id), 'info'),
        redis.call('HGET', pk(f[1]), 'key') or '', redis.call('HGET', pk(id), 'key') or ''}
"""

# ARGV[A..]: offer_id -> {ended...} (empty when it had ended already)
EXPIRE_OFFER = PRELUDE + r"""
local out = {}
end_offer(ARGV[A], out)
return out
"""

# One maintenance round of an instance. ARGV[A..]: inst cursor batch
# -> {previous_heartbeat, next_cursor, reaped_instance, ended...}
# Heartbeat; refresh the leases of a share of our own online peers (about 8 refreshes per lease at one
# round a second, at most `batch`); and, if some instance is dead,
# take one batch of its peers offline (their pending offers end: the caller tells the other sides).
MAINTAIN = PRELUDE + r"""
local inst, cursor, batch = ARGV[A], ARGV[A + 1], tonumber(ARGV[A + 2])
local before = redis.call('ZSCORE', P .. 'insts', inst) or ''
redis.call('ZADD', P .. 'insts', num(now), inst)
local mine = P .. 'i:' .. inst
-- paced: at one round a second, each online peer's lease is refreshed about 8 times per lease, not
-- `batch` peers every second (which cost Redis more than the connects did in the 10,000-connect bench)
local refresh = math.min(batch, math.max(16, math.ceil(redis.call('SCARD', mine) * 8 / lease)))
local scan = redis.call('SSCAN', mine, cursor, 'COUNT', refresh)
for _, id in ipairs(scan[2]) do
  local f = redis.call('HMGET', pk(id), 'inst')
  if f[1] == inst then
    redis.call('PEXPIRE', pk(id), ms(lease))
    redis.call('ZADD', P .. 'all', 'XX', num(now + lease), id)
  else
    redis.call('SREM', mine, id)
  end
end
redis.call('PEXPIRE', mine, ms(lease))
local out = {before, scan[1], ''}
local dead = redis.call('ZRANGEBYSCORE', P .. 'insts', '-inf', '(' .. num(now - dead_after), 'LIMIT', 0, 1)[1]
if dead and dead ~= inst then
  out[3] = dead
  local theirs = P .. 'i:' .. dead
  for _, id in ipairs(redis.call('SPOP', theirs, batch)) do
    local f = redis.call('HMGET', pk(id), 'inst')
    if f[1] == dead then go_offline(id, dead, out) end
  end
  if redis.call('SCARD', theirs) == 0 then
    redis.call('ZREM', P .. 'insts', dead)
    redis.call('DEL', P .. 'n:' .. dead)  -- its notice stream: nobody reads it any more
  end
end
return out
"""

# ARGV[A..]: (nothing) -> {peers, offline, instances}
COUNTS = PRELUDE + r"""
redis.call('ZREMRANGEBYSCORE', P .. 'all', '-inf', num(now))
return {redis.call('ZCARD', P .. 'all'), redis.call('ZCARD', P .. 'off'), redis.call('ZCARD', P .. 'insts')}
"""

SCRIPTS = {"enroll": ENROLL, "publish_info": PUBLISH_INFO, "offline": OFFLINE, "connect": CONNECT,
           "answer": ANSWER, "expire_offer": EXPIRE_OFFER, "maintain": MAINTAIN, "counts": COUNTS}
