#!lua name=vitals
-- The vitals fleet's Redis functions (FUNCTION LOAD; docs/FLEET.md has the key layout and the rules).
-- Every function touches the keys of one session and its partition only, all named with the same
-- hash tag, so that a Redis Cluster keeps them in one slot. None raises an error: each answers a
-- table whose first element says what happened ('ok', 'lost', 'fenced', 'unknown', 'badtoken',
-- 'full', 'exists', 'gap').
--
-- Session hash fields: tok (SHA-1 of the resume token), epoch (bumped by every takeover: the
-- owner's fence), owner (node id), state (live | parked), since (ms), in_next (next inbound seq
-- not yet committed), out_next (next outbound seq), out_acked (the client's cumulative ack),
-- rtt_us, reason (why it was parked), p:<origin> (last publish counter from that origin).
-- Outbound stream: message seq s is entry 0-(s+1), field d = payload.

local function out_id(seq)
  return '0-' .. tostring(seq + 1)
end

local function event(key, ...)
  redis.call('XADD', key, 'MAXLEN', '~', '100000', '*', ...)
end

-- The owner's fence: nil when `epoch` is the session's, else the answer to give ('lost' when the
-- session is gone, 'fenced' when another owner took it over). Extra fields are read with it.
local function fence(meta, epoch, ...)
  local f = redis.call('HMGET', meta, 'epoch', ...)
  if not f[1] then
    return {'lost'}, f
  end
  if f[1] ~= epoch then
    return {'fenced'}, f
  end
  return nil, f
end

local function expire_pair(meta, out, ms)
  redis.call('PEXPIRE', meta, ms)
  if redis.call('EXISTS', out) == 1 then
    redis.call('PEXPIRE', out, ms)
  end
end

-- KEYS: meta, live, events. ARGV: sid, tok, node, now_ms, lease_ms.
local function register(keys, args)
  local meta, live, events = keys[1], keys[2], keys[3]
  local sid, tok, node, now, lease = args[1], args[2], args[3], args[4], args[5]
  local f = redis.call('HMGET', meta, 'tok', 'owner', 'epoch')
  if f[1] then
    if f[1] == tok and f[2] == node then
      return {'ok', tonumber(f[3])} -- a retried register
    end
    return {'exists'}
  end
  redis.call('HSET', meta, 'tok', tok, 'epoch', 1, 'owner', node, 'state', 'live', 'since', now,
    'in_next', 0, 'out_next', 0, 'out_acked', 0, 'rtt_us', 0)
  redis.call('PEXPIRE', meta, lease)
  redis.call('ZADD', live, now, sid)
  event(events, 'type', 'connect', 'session', sid, 'node', node, 'epoch', '1', 't', now)
  return {'ok', 1}
end

-- KEYS: meta, in. ARGV: sid, epoch, node, first_seq, maxlen, payload...
-- Appends the payloads with seq >= in_next to the partition's inbound stream, in order.
-- Answers {'ok', in_next, first_new}.
local function commit(keys, args)
  local meta, inbound = keys[1], keys[2]
  local sid, epoch, node, first, maxlen = args[1], args[2], args[3], tonumber(args[4]), args[5]
  local refused, f = fence(meta, epoch, 'in_next')
  if refused then
    return refused
  end
  local nxt = tonumber(f[2])
  if first > nxt then
    return {'gap', nxt}
  end
  local first_new = nxt
  for i = 6, #args do
    local seq = first + (i - 6)
    if seq == nxt then
      redis.call('XADD', inbound, 'MAXLEN', '~', maxlen, '*', 'session', sid, 'seq', tostring(seq),
        'node', node, 'data', args[i])
      nxt = nxt + 1
    end
  end
  redis.call('HSET', meta, 'in_next', nxt)
  return {'ok', nxt, first_new}
end

-- KEYS: meta, out. ARGV: sid, origin, counter, max_pending, channel_prefix, payload.
-- Answers {'ok', seq, owner} ({'ok', -1, owner} for a retried publish already applied). The owner's
-- doorbell rings unless the publisher is the owner (it hands the message over itself).
local function publish(keys, args)
  local meta, out = keys[1], keys[2]
  local sid, origin, counter, maxpending, chan = args[1], args[2], tonumber(args[3]), tonumber(args[4]), args[5]
  local f = redis.call('HMGET', meta, 'out_next', 'out_acked', 'owner', 'state', 'p:' .. origin)
  if not f[1] then
    return {'unknown'}
  end
  if counter > 0 and f[5] and tonumber(f[5]) >= counter then
    return {'ok', -1, f[3]}
  end
  local nxt = tonumber(f[1])
  if nxt - tonumber(f[2]) >= maxpending then
    return {'full'}
  end
  redis.call('XADD', out, out_id(nxt), 'd', args[6])
  if counter > 0 then
    redis.call('HSET', meta, 'out_next', nxt + 1, 'p:' .. origin, counter)
  else
    redis.call('HSET', meta, 'out_next', nxt + 1)
  end
  if nxt == 0 then
    -- The stream was just made: it expires with the session (touch, park and takeover renew both;
    -- trimming never deletes it).
    local ttl = redis.call('PTTL', meta)
    if ttl > 0 then
      redis.call('PEXPIRE', out, ttl)
    end
  end
  if f[4] == 'live' and f[3] ~= origin then
    redis.call('PUBLISH', chan .. f[3], 'd ' .. sid)
  end
  return {'ok', nxt, f[3]}
end

-- KEYS: meta, out, live, events. ARGV: sid, tok, node, client_ack, now_ms, lease_ms, channel_prefix.
-- Answers {'ok', epoch, in_next, out_next, payload of client_ack, ..., payload of out_next - 1}.
local function takeover(keys, args)
  local meta, out, live, events = keys[1], keys[2], keys[3], keys[4]
  local sid, tok, node, cack, now, lease, chan = args[1], args[2], args[3], tonumber(args[4]), args[5], args[6], args[7]
  local f = redis.call('HMGET', meta, 'tok', 'epoch', 'owner', 'state', 'in_next', 'out_next', 'out_acked')
  if not f[1] then
    return {'unknown'}
  end
  if f[1] ~= tok then
    return {'badtoken'}
  end
  local out_next = tonumber(f[6])
  if cack > out_next then
    -- The client received messages that this store no longer holds: it lost writes. Continuing
    -- would reuse their sequence numbers; end the session and say so.
    redis.call('DEL', meta, out)
    redis.call('ZREM', live, sid)
    event(events, 'type', 'lost', 'session', sid, 'node', node, 't', now)
    return {'lost'}
  end
  local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
  redis.call('HSET', meta, 'owner', node, 'state', 'live', 'since', now)
  if cack > tonumber(f[7]) then
    redis.call('HSET', meta, 'out_acked', cack)
    redis.call('XTRIM', out, 'MINID', out_id(cack))
  end
  expire_pair(meta, out, lease)
  redis.call('ZADD', live, now, sid)
  event(events, 'type', 'resume', 'session', sid, 'node', node, 'from', f[3], 'epoch', tostring(epoch), 't', now)
  if f[4] == 'live' and f[3] ~= node then
    redis.call('PUBLISH', chan .. f[3], 'k ' .. sid .. ' ' .. tostring(epoch))
  end
  local r = {'ok', epoch, tonumber(f[5]), out_next}
  for _, e in ipairs(redis.call('XRANGE', out, out_id(cack), '+')) do
    r[#r + 1] = e[2][2]
  end
  return r
end

-- KEYS: meta, out. ARGV: epoch, acked.
local function ack(keys, args)
  local meta, out = keys[1], keys[2]
  local epoch, acked = args[1], tonumber(args[2])
  local refused, f = fence(meta, epoch, 'out_acked', 'out_next')
  if refused then
    return refused
  end
  if acked > tonumber(f[2]) and acked <= tonumber(f[3]) then
    redis.call('HSET', meta, 'out_acked', acked)
    redis.call('XTRIM', out, 'MINID', out_id(acked))
  end
  return {'ok'}
end

-- KEYS: meta, out, live, events. ARGV: sid, epoch, node, reason, ttl_ms, rtt_us, now_ms.
local function park(keys, args)
  local meta, out, live, events = keys[1], keys[2], keys[3], keys[4]
  local sid, epoch, node, reason, ttl, rtt, now = args[1], args[2], args[3], args[4], args[5], args[6], args[7]
  local refused = fence(meta, epoch)
  if refused then
    return refused
  end
  redis.call('HSET', meta, 'state', 'parked', 'since', now, 'rtt_us', rtt, 'reason', reason)
  expire_pair(meta, out, ttl)
  redis.call('ZREM', live, sid)
  event(events, 'type', 'park', 'session', sid, 'node', node, 'reason', reason, 't', now)
  return {'ok'}
end

-- KEYS: meta, out, live, events. ARGV: sid, epoch, node, reason, now_ms.
local function finish(keys, args)
  local meta, out, live, events = keys[1], keys[2], keys[3], keys[4]
  local sid, epoch, node, reason, now = args[1], args[2], args[3], args[4], args[5]
  local refused = fence(meta, epoch)
  if refused then
    return refused
  end
  redis.call('DEL', meta, out)
  redis.call('ZREM', live, sid)
  event(events, 'type', 'end', 'session', sid, 'node', node, 'reason', reason, 't', now)
  return {'ok'}
end

-- KEYS: meta, out. ARGV: epoch, lease_ms, rtt_us. The owner's lease and presence refresh.
local function touch(keys, args)
  local meta, out = keys[1], keys[2]
  local epoch, lease, rtt = args[1], args[2], args[3]
  local refused = fence(meta, epoch)
  if refused then
    return refused
  end
  expire_pair(meta, out, lease)
  redis.call('HSET', meta, 'rtt_us', rtt)
  return {'ok'}
end

redis.register_function('vitals_register', register)
redis.register_function('vitals_commit', commit)
redis.register_function('vitals_publish', publish)
redis.register_function('vitals_takeover', takeover)
redis.register_function('vitals_ack', ack)
redis.register_function('vitals_park', park)
redis.register_function('vitals_finish', finish)
redis.register_function('vitals_touch', touch)
