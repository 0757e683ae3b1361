"""The Redis store's scripts: each step that touches a job's record and its queue entry
together runs as one script, so no other instance sees half of it.

Keys (``P`` = the key prefix): ``Pjob:ID`` (a hash), ``Pbatch:ID`` (a hash),
``Pq:POOL:PRIORITY`` (a stream, one per priority, read by the consumer group ``runners``),
``Pdelayed:POOL`` (a sorted set: jobs waiting out a retry backoff, by due time) and
``Phooks`` (a sorted set: callbacks due, by time). Scripts build job and batch keys from the
prefix, so the store does not support Redis Cluster.
"""

from __future__ import annotations

__all__ = ["SUBMIT", "BEGIN", "FINISH", "REQUEUE", "RELEASE", "PROMOTE", "CANCEL", "RENEW", "DUE_HOOKS",
           "HOOK_DONE", "DEPTH"]

# Shared by the scripts that end a job: the record expires after the result TTL, the entry
# leaves the queue, the batch lives at least as long, the callback becomes due.
# KEYS[1] the job, KEYS[2] its stream (or the job key again when there is none).
_CLOSE = """
local function close(job, stream, group, entry, state, now, ttl, prefix)
  redis.call('HSET', job, 'state', state, 'finished', now, 'run', '')
  redis.call('PEXPIRE', job, ttl)
  if entry ~= '' and stream ~= job then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
  end
  local batch = redis.call('HGET', job, 'batch')
  if batch and batch ~= '' then redis.call('PEXPIRE', prefix .. 'batch:' .. batch, ttl) end
  local hook = redis.call('HGET', job, 'hook_url')
  if hook and hook ~= '' and state ~= 'cancelled' then
    redis.call('ZADD', prefix .. 'hooks', now, redis.call('HGET', job, 'id'))
  end
end
"""

DEPTH = """
local depth = redis.call('ZCARD', KEYS[4])
for i = 1, 3 do
  redis.pcall('XGROUP', 'CREATE', KEYS[i], ARGV[1], '0', 'MKSTREAM')
  depth = depth + redis.call('XLEN', KEYS[i]) - redis.call('XPENDING', KEYS[i], ARGV[1])[1]
end
return depth
"""

# KEYS: the pool's three streams, its delayed set. ARGV: group, max_queue ('' for no bound),
# prefix, batch id ('' for none), jobs counted against the bound, batch field count, batch
# fields..., job count, then per job: id, priority, field count, fields...
SUBMIT = """
local group, max_queue, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local depth = redis.call('ZCARD', KEYS[4])
for i = 1, 3 do
  redis.pcall('XGROUP', 'CREATE', KEYS[i], group, '0', 'MKSTREAM')
  depth = depth + redis.call('XLEN', KEYS[i]) - redis.call('XPENDING', KEYS[i], group)[1]
end
local counted = tonumber(ARGV[5])
local pos = 6
local batch_fields = tonumber(ARGV[pos])
local batch_at = pos + 1
pos = pos + 1 + 2 * batch_fields
local count = tonumber(ARGV[pos])
pos = pos + 1
if max_queue and depth + counted > max_queue then return 0 end
if ARGV[4] ~= '' then
  redis.call('HSET', prefix .. 'batch:' .. ARGV[4], unpack(ARGV, batch_at, batch_at + 2 * batch_fields - 1))
end
for _ = 1, count do
  local id, priority, fields = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  local first = pos + 3
  pos = first + 2 * fields
  local entry = redis.call('XADD', KEYS[priority + 1], '*', 'job', id)
  redis.call('HSET', prefix .. 'job:' .. id, 'entry', entry, 'state', 'queued', 'attempts', 0, 'run', '',
             unpack(ARGV, first, pos - 1))
end
return 1
"""

# KEYS: job, stream. ARGV: group, entry, token, max_attempts, now, ttl (ms), prefix.
BEGIN = _CLOSE + """
local job, stream, group, entry = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local state, current = unpack(redis.call('HMGET', job, 'state', 'entry'))
if not state or (state ~= 'queued' and state ~= 'running') or current ~= entry then
  redis.call('XACK', stream, group, entry)
  if not state or current ~= entry then redis.call('XDEL', stream, entry) end
  return {'skip'}
end
local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0')
if attempts >= tonumber(ARGV[4]) then
  local why = redis.call('HGET', job, 'error')
  if not why or why == '' then why = 'its runs did not finish (the instances running it stopped)' end
  redis.call('HSET', job, 'error', 'gave up after ' .. attempts .. ' attempts: ' .. why)
  close(job, stream, group, entry, 'failed', ARGV[5], ARGV[6], ARGV[7])
  return {'gave_up'}
end
attempts = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'state', 'running', 'run', ARGV[3], 'started', ARGV[5])
local fields = redis.call('HMGET', job, 'pool', 'method', 'target', 'headers', 'body', 'tenant', 'priority',
                          'client_ip', 'hook_url', 'batch', 'submitted')
return {'run', tostring(attempts), unpack(fields)}
"""

# KEYS: job, stream. ARGV: group, entry, token, state, now, ttl (ms), prefix, fields...
FINISH = _CLOSE + """
local job = KEYS[1]
if redis.call('HGET', job, 'run') ~= ARGV[3] or ARGV[3] == '' then return 0 end
if #ARGV > 7 then redis.call('HSET', job, unpack(ARGV, 8, #ARGV)) end
close(job, KEYS[2], ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
"""

# KEYS: job, stream, delayed set. ARGV: group, entry, token, due, error.
REQUEUE = """
local job = KEYS[1]
if redis.call('HGET', job, 'run') ~= ARGV[3] or ARGV[3] == '' then return 0 end
redis.call('HSET', job, 'state', 'queued', 'run', '', 'error', ARGV[5], 'entry', '')
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], redis.call('HGET', job, 'id'))
return 1
"""

# KEYS: job, stream. ARGV: group, entry, token ('' when no run began).
RELEASE = """
local job, stream, group, entry, token = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local state, run, current = unpack(redis.call('HMGET', job, 'state', 'run', 'entry'))
if not state then
  redis.call('XACK', stream, group, entry)
  return 0
end
if token ~= '' then
  if run ~= token then return 0 end
elseif state ~= 'queued' or current ~= entry then
  if current ~= entry then redis.call('XACK', stream, group, entry) end
  return 0
end
redis.call('XACK', stream, group, entry)
redis.call('XDEL', stream, entry)
local fresh = redis.call('XADD', stream, '*', 'job', redis.call('HGET', job, 'id'))
redis.call('HSET', job, 'state', 'queued', 'run', '', 'entry', fresh)
return 1
"""

# KEYS: delayed set, the pool's three streams. ARGV: now, prefix, limit.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[2] .. 'job:' .. id
  local state, priority = unpack(redis.call('HMGET', job, 'state', 'priority'))
  if state == 'queued' then
    local entry = redis.call('XADD', KEYS[tonumber(priority) + 2], '*', 'job', id)
    redis.call('HSET', job, 'entry', entry)
  end
end
return #due
"""

# KEYS: job. ARGV: group, now, ttl (ms), prefix.
CANCEL = _CLOSE + """
local job, prefix = KEYS[1], ARGV[4]
local state, pool, priority, entry, id = unpack(redis.call('HMGET', job, 'state', 'pool', 'priority', 'entry', 'id'))
if not state then return '' end
if state ~= 'queued' then return state end
local stream = prefix .. 'q:' .. pool .. ':' .. priority
redis.call('ZREM', prefix .. 'delayed:' .. pool, id)
close(job, stream, ARGV[1], entry or '', 'cancelled', ARGV[2], ARGV[3], prefix)
return 'cancelled'
"""

# KEYS: the stream of each claim. ARGV: group, consumer, the entry of each claim.
RENEW = """
local lost = {}
for i = 1, #KEYS do
  local entry = ARGV[i + 2]
  local mine = redis.call('XPENDING', KEYS[i], ARGV[1], entry, entry, 1, ARGV[2])
  if #mine == 0 then
    table.insert(lost, i)
  else
    redis.call('XCLAIM', KEYS[i], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
  end
end
return lost
"""

# KEYS: hooks set. ARGV: now, lease until, count.
DUE_HOOKS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""

# KEYS: job, hooks set. ARGV: id, retry at ('' when over), fields...
HOOK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3, #ARGV))
if ARGV[2] == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
return 1
"""
