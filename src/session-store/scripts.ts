// The Lua scripts of the Redis store. Every write is fenced twice: by the client id's ownership
// key (only the owning instance writes) and by the record id in the hash (only the session
// object that started or resumed the record writes), so that a write arriving late, from an
// instance that lost the client id or from a shard whose session ended, changes nothing.

/** KEYS: session hash, ownership key. ARGV: instance, ttl ms, reset (1/0), record id, number of
 *  field/value pairs n, then n pairs, then the fields to delete. Returns 1 when applied. */
export const SAVE = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'r', ARGV[4])
elseif redis.call('HGET', KEYS[1], 'r') ~= ARGV[4] then
  return 0
end
local n = tonumber(ARGV[5])
local i = 6
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, i, i + 2 * n - 1)) end
i = i + 2 * n
if i <= #ARGV then redis.call('HDEL', KEYS[1], unpack(ARGV, i, #ARGV)) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

/** KEYS: session hash, ownership key. ARGV: instance, record id. Deletes that record only. */
export const REMOVE = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'r') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
`;

/** KEYS: ownership key. ARGV: instance, ttl ms. Takes a free (or own) client id; returns the
 *  previous owner ('' for none), which keeps it when it is another instance. */
export const CLAIM = `
local old = redis.call('GET', KEYS[1])
if not old or old == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return old or ''
end
return old
`;

/** KEYS: ownership key, session hash. ARGV: instance, ttl ms, clean (1/0). Takes the client id
 *  whoever has it (a takeover); clean also ends the session recorded for it. Returns the previous owner. */
export const TAKE = `
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
return old or ''
`;

/** KEYS: ownership key. ARGV: instance, ttl ms, expected owner. Takes the client id
 *  from `expected` (the owner that was asked to hand it over, or found gone), or when it is free
 *  or already ours; another instance that took it meanwhile keeps it. Returns the owner found
 *  ('' for none): the client id is ours when that is `expected`, '' or this instance. */
export const TAKE_FROM = `
local old = redis.call('GET', KEYS[1])
if not old or old == ARGV[1] or old == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return old or ''
`;

/** KEYS: ownership key. ARGV: instance. Lets go of a client id this instance owns. */
export const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
`;
