"""The deployment store: Redis, every multi-key change one Lua script.

Each write that reads before it writes (leasing, reporting, invites, fingerprints, revocation) is
one script, so it is atomic against every other client; single-command writes are plain commands.
Scripts check everything first and write last, so a refusal changes nothing (invariant 2). The
clock is the server's `TIME` (invariant 1). Durability comes from the server: run it with
`appendonly yes` and `appendfsync always` (invariant 6); `durability()` reports what it runs with.

Key names live in `redis_keys`; records are hashes of their fields (see `base.record_to_row`).
Unit code is content-addressed (invariant 12): a unit hash holds `train_py_sha256` and
`profiles_json_sha256`, the texts live once each under `blob:<sha256>`. Unit hashes written before
that still hold `train_py` / `profiles_json` inline and read back as they are.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.parse
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from coordinator.store import redis_keys as keys
from coordinator.store.base import (
    RowValue,
    Store,
    StoreSnapshot,
    check_class_stats,
    check_count,
    check_enum,
    check_hypothesis,
    check_json,
    check_limit,
    check_merge,
    check_metrics,
    check_positive,
    check_result_filter,
    check_score,
    check_snapshot,
    check_text,
    check_unit,
    record_from_row,
    record_to_row,
    refuse_unless_empty,
    result_matches,
    to_json,
    unit_code_hashes,
    unit_from_row,
    unit_to_row,
    validate_numbers,
)
from coordinator.store.errors import (
    ConflictError,
    DuplicateError,
    InvalidValueError,
    InviteError,
    LeaseExpiredError,
    NotFoundError,
    PermissionDeniedError,
    StoreError,
)
from coordinator.store.types import (
    MAX_HARDWARE_JSON_BYTES,
    MAX_META_VALUE_BYTES,
    MAX_REASON_BYTES,
    UNIT_KIND_RANK,
    ClassStats,
    CodeStorage,
    Hypothesis,
    HypothesisState,
    Invite,
    Lease,
    LeaseExtension,
    LeaseState,
    MergeRecord,
    NormalizedScore,
    Principal,
    ReportContext,
    ResultFilter,
    ResultRecord,
    Role,
    RunMetrics,
    UnitKind,
    UnitState,
    WorkUnit,
)

log = logging.getLogger("autoswarm.store.redis")

DEFAULT_PREFIX = "autoswarm"
ALL = 2**31  # "no limit" for index reads that return every member
RESULT_PAGE_CHUNK = 500  # results read per script call while a filter skips some
SNAPSHOT_BATCH_RECORDS = 200  # records per pipeline when a snapshot is imported or its heavy fields read
BLOB_READ_BATCH = 200  # code blobs per MGET when reads resolve unit code
PAGE_CHUNK = 200  # records per page script: each script blocks Redis while it runs
RECONNECT_RETRIES = 3  # a command that met a broken connection is sent again this often...
RECONNECT_BACKOFF_S = 0.05  # ...after 50 ms, doubling...
RECONNECT_BACKOFF_CAP_S = 0.5  # ...up to half a second between tries
PENDING_INDEX_FLAG = "units-pending-indexed"  # meta field: UNITS_PENDING is built (see redis_keys)
BLOB_CACHE_ENTRIES = 256  # code texts kept in process (~40 KB each); the cache restarts when full
# Fields written once with their record and never changed, and large (code, logs): a snapshot reads
# them after its one-moment script, in batches, so that script's reply stays small.
_HEAVY_FIELDS: dict[str, tuple[str, ...]] = {
    keys.PRINCIPAL: ("hardware_json",),
    keys.HYPOTHESIS: ("rationale", "patch"),
    keys.UNIT: ("train_py", "profiles_json"),  # only unit hashes written before blobs hold these
    keys.RESULT: ("metrics",),
}
_ID_FIELDS: dict[str, str] = {
    keys.PRINCIPAL: "principal_id",
    keys.INVITE: "token_hash",
    keys.HYPOTHESIS: "hypothesis_id",
    keys.UNIT: "unit_id",
    keys.LEASE: "lease_id",
    keys.RESULT: "result_id",
    keys.MERGE: "commit",
}

# ---------------------------------------------------------------------------------------------
# Lua. Every script gets ARGV[1] = the store's key root; KEYS[1] is the sequence key, so a
# cluster routes the call to the store's slot. Numbers are written with %.17g: they read back
# as the same double.
# ---------------------------------------------------------------------------------------------

_PRELUDE = (
    keys.lua_key_builders()
    + r"""
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
local function fail(kind, message, original)
  error({err = 'STORE ' .. cjson.encode({kind = kind, message = message, original = original or ''})})
end
local function record(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local r = {}
  for i = 1, #flat, 2 do r[flat[i]] = flat[i + 1] end
  return r
end
local function fields_from(first)
  local f = {}
  for i = first, #ARGV, 2 do f[ARGV[i]] = ARGV[i + 1] end
  return f
end
local function hset_all(key, f)
  local flat = {}
  for name, value in pairs(f) do flat[#flat + 1] = name; flat[#flat + 1] = value end
  redis.call('HSET', key, unpack(flat))
end
local function next_seq() return redis.call('INCR', KEY_SEQUENCE) end
local function queue_member(unit_id, seq) return string.format('%016d', tonumber(seq)) .. ':' .. unit_id end
local function is_pending(state) return state == 'queued' or state == 'leased' end
local function set_unit_state(unit_id, unit, new_state)
  if unit.state == new_state then return end
  redis.call('ZREM', key_units_by_state(unit.state), unit_id)
  redis.call('ZADD', key_units_by_state(new_state), unit.seq, unit_id)
  if is_pending(unit.state) ~= is_pending(new_state) then
    local pending = key_units_pending(unit.kind, unit.hardware_class, unit.base_commit)
    if is_pending(new_state) then redis.call('ZADD', pending, unit.seq, unit_id) else redis.call('ZREM', pending, unit_id) end
  end
  local queue = key_queue(unit.kind_rank, unit.hardware_class)
  if unit.state == 'queued' then redis.call('ZREM', queue, queue_member(unit_id, unit.seq)) end
  if new_state == 'queued' then
    redis.call('ZADD', queue, fmt(-tonumber(unit.priority)), queue_member(unit_id, unit.seq))
  end
  redis.call('HSET', key_unit(unit_id), 'state', new_state)
  unit.state = new_state
end
local function end_lease(lease_id, state, reason, t)
  local lkey = key_lease(lease_id)
  redis.call('HSET', lkey, 'state', state, 'ended_s', fmt(t), 'end_reason', reason)
  redis.call('ZREM', KEY_LEASES_ACTIVE, lease_id)
  if state ~= 'reported' then
    local unit_id = redis.call('HGET', lkey, 'unit_id')
    local unit = record(key_unit(unit_id))
    if unit and unit.state == 'leased' then set_unit_state(unit_id, unit, 'queued') end
  end
end
local function expire_due(t)
  local due = redis.call('ZRANGEBYSCORE', KEY_LEASES_ACTIVE, '-inf', fmt(t))
  for _, lease_id in ipairs(due) do end_lease(lease_id, 'expired', 'deadline passed', t) end
  return due
end
local function live_lease(lease_id, volunteer_id, t)
  local lease = record(key_lease(lease_id))
  if not lease then fail('NotFound', 'unknown lease ' .. lease_id) end
  if lease.volunteer_id ~= volunteer_id then
    fail('PermissionDenied', 'lease ' .. lease_id .. ' belongs to another volunteer')
  end
  if lease.state ~= 'active' then fail('LeaseExpired', 'lease ' .. lease_id .. ' is ' .. lease.state) end
  if tonumber(lease.deadline_s) <= t then fail('LeaseExpired', 'lease ' .. lease_id .. ' passed its deadline') end
  return lease
end
"""
)

_SCRIPTS: dict[str, str] = {
    # ARGV: key, has_expected (1/0), expected, value
    "compare_and_set_meta": r"""
local current = redis.call('HGET', KEY_META, ARGV[2])
local matches
if ARGV[3] == '0' then matches = (current == false) else matches = (current == ARGV[4]) end
if not matches then return 0 end
redis.call('HSET', KEY_META, ARGV[2], ARGV[5])
return 1
""",
    # ARGV: invite token hash ('' for none), then the principal's fields as name/value pairs
    "create_principal": r"""
local invite_hash = ARGV[2]
local f = fields_from(3)
local pid = f.principal_id
if redis.call('EXISTS', key_principal(pid)) == 1 then fail('Duplicate', 'principal id taken', pid) end
local holder = redis.call('HGET', KEY_PRINCIPAL_BY_TOKEN, f.token_hash)
if holder then fail('Duplicate', 'a principal with this token already exists', holder) end
local t = now_s()
if invite_hash ~= '' then
  local invite = record(key_invite(invite_hash))
  if not invite then fail('Invite', 'unknown invite token') end
  if tonumber(invite.uses) >= tonumber(invite.max_uses) then fail('Invite', 'this invite has been used up') end
  if tonumber(invite.expires_s) > 0 and t >= tonumber(invite.expires_s) then
    fail('Invite', 'this invite has expired')
  end
  redis.call('HINCRBY', key_invite(invite_hash), 'uses', 1)
  f.owner = invite.owner
end
local seq = next_seq()
f.created_s = fmt(t)
f.last_seen_s = fmt(t)
f.seq = seq
hset_all(key_principal(pid), f)
redis.call('ZADD', KEY_PRINCIPALS, seq, pid)
redis.call('ZADD', key_principals_by_owner(f.owner), seq, pid)
redis.call('HSET', KEY_PRINCIPAL_BY_TOKEN, f.token_hash, pid)
return redis.call('HGETALL', key_principal(pid))
""",
    # ARGV: token hash. Returns the principal's fields, or nil.
    "principal_by_token": r"""
local id = redis.call('HGET', KEY_PRINCIPAL_BY_TOKEN, ARGV[2])
if not id then return false end
return redis.call('HGETALL', key_principal(id))
""",
    # ARGV: principal id
    "touch_principal": r"""
if redis.call('EXISTS', key_principal(ARGV[2])) == 0 then fail('NotFound', 'unknown principal ' .. ARGV[2]) end
redis.call('HSET', key_principal(ARGV[2]), 'last_seen_s', fmt(now_s()))
return 1
""",
    # ARGV: mode ('principal' | 'owner'), principal id or owner, reason
    # Returns {results that stopped counting, newly revoked principal ids...}
    "revoke": r"""
local function revoke_one(pid, reason, t)
  local pkey = key_principal(pid)
  if redis.call('HGET', pkey, 'revoked') == '1' then return 0 end
  redis.call('HSET', pkey, 'revoked', '1', 'revoked_reason', reason)
  for _, lease_id in ipairs(redis.call('ZRANGE', KEY_LEASES_ACTIVE, 0, -1)) do
    if redis.call('HGET', key_lease(lease_id), 'volunteer_id') == pid then
      end_lease(lease_id, 'released', 'revoked: ' .. reason, t)
    end
  end
  local discounted = 0
  for _, rid in ipairs(redis.call('ZRANGE', key_results_by_volunteer(pid), 0, -1)) do
    if redis.call('HGET', key_result(rid), 'counts') == '1' then
      redis.call('HSET', key_result(rid), 'counts', '0')
      discounted = discounted + 1
    end
  end
  return discounted
end
local mode, target, reason = ARGV[2], ARGV[3], ARGV[4]
local t = now_s()
if mode == 'principal' then
  if redis.call('EXISTS', key_principal(target)) == 0 then fail('NotFound', 'unknown principal ' .. target) end
  return {revoke_one(target, reason, t)}
end
local out = {0}
for _, pid in ipairs(redis.call('ZRANGE', key_principals_by_owner(target), 0, -1)) do
  if redis.call('HGET', key_principal(pid), 'revoked') ~= '1' then
    out[1] = out[1] + revoke_one(pid, reason, t)
    out[#out + 1] = pid
  end
end
return out
""",
    # ARGV: the invite's fields as name/value pairs
    "create_invite": r"""
local f = fields_from(2)
if redis.call('EXISTS', key_invite(f.token_hash)) == 1 then
  fail('Duplicate', 'an invite with this token already exists', f.token_hash)
end
f.created_s = fmt(now_s())
hset_all(key_invite(f.token_hash), f)
return redis.call('HGETALL', key_invite(f.token_hash))
""",
    # ARGV: the hypothesis's fields as name/value pairs
    "add_hypothesis": r"""
local f = fields_from(2)
local original = redis.call('HGET', KEY_HYPOTHESIS_BY_FINGERPRINT, f.fingerprint)
if original then fail('Duplicate', 'the same change was submitted as ' .. original, original) end
if redis.call('EXISTS', key_hypothesis(f.hypothesis_id)) == 1 then
  fail('Duplicate', 'hypothesis ' .. f.hypothesis_id .. ' exists', f.hypothesis_id)
end
local t = now_s()
local seq = next_seq()
f.created_s = fmt(t)
f.updated_s = fmt(t)
f.seq = seq
hset_all(key_hypothesis(f.hypothesis_id), f)
redis.call('ZADD', KEY_HYPOTHESES, seq, f.hypothesis_id)
redis.call('ZADD', key_hypotheses_by_state(f.state), seq, f.hypothesis_id)
redis.call('HSET', KEY_HYPOTHESIS_BY_FINGERPRINT, f.fingerprint, f.hypothesis_id)
return redis.call('HGETALL', key_hypothesis(f.hypothesis_id))
""",
    # ARGV: hypothesis id, expected state ('' for any), then changed fields as name/value pairs
    "update_hypothesis": r"""
local id, expected = ARGV[2], ARGV[3]
local changes = fields_from(4)
local h = record(key_hypothesis(id))
if not h then fail('NotFound', 'unknown hypothesis ' .. id) end
if expected ~= '' and h.state ~= expected then
  fail('Conflict', 'hypothesis ' .. id .. ' is ' .. h.state .. ', not ' .. expected)
end
local t = now_s()
if changes.state and changes.state ~= h.state then
  redis.call('ZREM', key_hypotheses_by_state(h.state), id)
  redis.call('ZADD', key_hypotheses_by_state(changes.state), h.seq, id)
end
if changes.priority then
  local delta = tonumber(changes.priority) - tonumber(h.priority)
  if delta ~= 0 then
    for _, uid in ipairs(redis.call('ZRANGE', key_units_by_hypothesis(id), 0, -1)) do
      local u = record(key_unit(uid))
      if u.state == 'queued' then
        local p = tonumber(u.priority) + delta
        redis.call('HSET', key_unit(uid), 'priority', fmt(p))
        redis.call('ZADD', key_queue(u.kind_rank, u.hardware_class), fmt(-p), queue_member(uid, u.seq))
      end
    end
  end
end
changes.updated_s = fmt(t)
hset_all(key_hypothesis(id), changes)
return redis.call('HGETALL', key_hypothesis(id))
""",
    # ARGV: number of code blobs N, N (sha256, text) pairs, then the unit's fields (code as
    # hashes, with kind_rank) as name/value pairs. A blob already stored is left as it is.
    "enqueue_unit": r"""
local blob_count = tonumber(ARGV[2])
local f = fields_from(3 + 2 * blob_count)
if f.hypothesis_id ~= '' and redis.call('EXISTS', key_hypothesis(f.hypothesis_id)) == 0 then
  fail('NotFound', 'unknown hypothesis ' .. f.hypothesis_id)
end
if redis.call('EXISTS', key_unit(f.unit_id)) == 1 then fail('Duplicate', 'unit ' .. f.unit_id .. ' exists', f.unit_id) end
for i = 1, blob_count do
  redis.call('SET', key_blob(ARGV[1 + 2 * i]), ARGV[2 + 2 * i], 'NX')
end
local seq = next_seq()
f.created_s = fmt(now_s())
f.seq = seq
hset_all(key_unit(f.unit_id), f)
redis.call('ZADD', KEY_UNITS, seq, f.unit_id)
if f.hypothesis_id ~= '' then redis.call('ZADD', key_units_by_hypothesis(f.hypothesis_id), seq, f.unit_id) end
redis.call('ZADD', key_units_by_state('queued'), seq, f.unit_id)
redis.call('ZADD', key_units_pending(f.kind, f.hardware_class, f.base_commit), seq, f.unit_id)
redis.call('ZADD', key_queue(f.kind_rank, f.hardware_class), fmt(-tonumber(f.priority)), queue_member(f.unit_id, seq))
return redis.call('HGETALL', key_unit(f.unit_id))
""",
    # ARGV: hypothesis id
    "cancel_units": r"""
local hid = ARGV[2]
if redis.call('EXISTS', key_hypothesis(hid)) == 0 then fail('NotFound', 'unknown hypothesis ' .. hid) end
local cancelled = 0
for _, uid in ipairs(redis.call('ZRANGE', key_units_by_hypothesis(hid), 0, -1)) do
  local u = record(key_unit(uid))
  if u.state == 'queued' then
    set_unit_state(uid, u, 'cancelled')
    cancelled = cancelled + 1
  end
end
return cancelled
""",
    # ARGV: kind, class, base commit. Units queued or leased matching all three: read here, so a
    # caller gets one number instead of every pending unit (about two per volunteer online).
    "count_pending_units": r"""
if redis.call('HGET', KEY_META, ARGV[5]) ~= '1' then
  -- First count since the index existed (an upgrade, or a restore of an older snapshot): build it
  -- from units-by-state once; state changes keep it from then on.
  for _, state in ipairs({'queued', 'leased'}) do
    for _, uid in ipairs(redis.call('ZRANGE', key_units_by_state(state), 0, -1)) do
      local f = redis.call('HMGET', key_unit(uid), 'kind', 'hardware_class', 'base_commit', 'seq')
      redis.call('ZADD', key_units_pending(f[1], f[2], f[3]), f[4], uid)
    end
  end
  redis.call('HSET', KEY_META, ARGV[5], '1')
end
return redis.call('ZCARD', key_units_pending(ARGV[2], ARGV[3], ARGV[4]))
""",
    # ARGV: unit id. Returns 1 when cancelled, 0 when it was no longer queued.
    "cancel_unit": r"""
local uid = ARGV[2]
local u = record(key_unit(uid))
if not u then fail('NotFound', 'unknown unit ' .. uid) end
if u.state ~= 'queued' then return 0 end
set_unit_state(uid, u, 'cancelled')
return 1
""",
    # ARGV: unit id
    "requeue_unit": r"""
local uid = ARGV[2]
local u = record(key_unit(uid))
if not u then fail('NotFound', 'unknown unit ' .. uid) end
if u.state ~= 'done' and u.state ~= 'cancelled' then
  fail('Conflict', 'unit ' .. uid .. ' is ' .. u.state .. '; only done or cancelled units requeue')
end
set_unit_state(uid, u, 'queued')
return redis.call('HGETALL', key_unit(uid))
""",
    # ARGV: volunteer id, owner, class, lease duration, slot, new lease id
    # Returns {unit fields, lease fields} or nil when nothing is eligible.
    "lease_unit": r"""
local vid, owner, class, duration, slot, lease_id = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local v = record(key_principal(vid))
if not v then fail('NotFound', 'unknown principal ' .. vid) end
if v.revoked == '1' then fail('PermissionDenied', 'volunteer ' .. vid .. ' is revoked') end
if v.role ~= 'volunteer' then fail('PermissionDenied', 'principal ' .. vid .. ' is a ' .. v.role .. ', not a volunteer') end
if v.owner ~= owner then fail('InvalidValue', 'volunteer ' .. vid .. ' belongs to another owner') end
local t = now_s()
redis.call('HSET', key_principal(vid), 'last_seen_s', fmt(t))
expire_due(t)
local function listed(json_list, value)
  for _, item in ipairs(cjson.decode(json_list)) do if item == value then return true end end
  return false
end
for rank = 0, 2 do
  local queue = key_queue(rank, class)
  local start = 0
  while true do
    local batch = redis.call('ZRANGE', queue, start, start + 63)
    if #batch == 0 then break end
    for _, member in ipairs(batch) do
      local uid = string.sub(member, 18)
      local excluded = redis.call('HMGET', key_unit(uid), 'excluded_volunteers', 'excluded_owners')
      if not listed(excluded[1], vid) and not listed(excluded[2], owner) then
        local unit = record(key_unit(uid))
        set_unit_state(uid, unit, 'leased')
        redis.call('HINCRBY', key_unit(uid), 'attempts', 1)
        local seq = next_seq()
        local deadline = t + tonumber(duration)
        redis.call('HSET', key_lease(lease_id), 'lease_id', lease_id, 'unit_id', uid, 'volunteer_id', vid,
          'owner', owner, 'issued_s', fmt(t), 'deadline_s', fmt(deadline), 'state', 'active', 'slot', slot,
          'progress_step', '0', 'progress_fraction', '0', 'progress_loss', '0', 'heartbeat_s', fmt(t),
          'ended_s', '0', 'end_reason', '', 'seq', seq)
        redis.call('ZADD', KEY_LEASES, seq, lease_id)
        redis.call('ZADD', KEY_LEASES_ACTIVE, fmt(deadline), lease_id)
        local hid = unit.hypothesis_id or ''
        if hid ~= '' then
          local hkey = key_hypothesis(hid)
          local h = redis.call('HMGET', hkey, 'state', 'seq')
          if h[1] == 'queued' then
            redis.call('ZREM', key_hypotheses_by_state('queued'), hid)
            redis.call('ZADD', key_hypotheses_by_state('leased'), h[2], hid)
            redis.call('HSET', hkey, 'state', 'leased', 'updated_s', fmt(t))
          end
        end
        return {redis.call('HGETALL', key_unit(uid)), redis.call('HGETALL', key_lease(lease_id))}
      end
    end
    start = start + 64
  end
end
return false
""",
    # ARGV: lease id, volunteer id, lease duration, step, fraction, loss
    "extend_lease": r"""
local lease_id = ARGV[2]
local t = now_s()
live_lease(lease_id, ARGV[3], t)
local deadline = t + tonumber(ARGV[4])
redis.call('HSET', key_lease(lease_id), 'deadline_s', fmt(deadline), 'progress_step', ARGV[5],
  'progress_fraction', ARGV[6], 'progress_loss', ARGV[7], 'heartbeat_s', fmt(t))
redis.call('ZADD', KEY_LEASES_ACTIVE, fmt(deadline), lease_id)
return redis.call('HGETALL', key_lease(lease_id))
""",
    # ARGV: lease id, volunteer id, reason
    "release_lease": r"""
local t = now_s()
live_lease(ARGV[2], ARGV[3], t)
end_lease(ARGV[2], 'released', ARGV[4], t)
return redis.call('HGETALL', key_lease(ARGV[2]))
""",
    "expire_leases": r"""
local out = {}
for _, lease_id in ipairs(expire_due(now_s())) do out[#out + 1] = redis.call('HGETALL', key_lease(lease_id)) end
return out
""",
    # ARGV: lease id, volunteer id, result id, metrics JSON, score JSON, status
    # Returns {1 if it was reported before else 0, result fields}
    "record_result": r"""
local lease_id, vid, rid = ARGV[2], ARGV[3], ARGV[4]
local lease = record(key_lease(lease_id))
if not lease then fail('NotFound', 'unknown lease ' .. lease_id) end
if lease.volunteer_id ~= vid then fail('PermissionDenied', 'lease ' .. lease_id .. ' belongs to another volunteer') end
local stored = redis.call('HGET', KEY_RESULT_BY_LEASE, lease_id)
if stored then return {1, redis.call('HGETALL', key_result(stored))} end
if redis.call('EXISTS', key_result(rid)) == 1 then fail('Duplicate', 'result id ' .. rid .. ' is taken', rid) end
local t = now_s()
live_lease(lease_id, vid, t)
if redis.call('HGET', key_principal(vid), 'revoked') == '1' then fail('PermissionDenied', 'volunteer ' .. vid .. ' is revoked') end
local unit = record(key_unit(lease.unit_id))
local seq = next_seq()
redis.call('HSET', key_result(rid), 'result_id', rid, 'lease_id', lease_id, 'unit_id', lease.unit_id,
  'kind', unit.kind, 'hypothesis_id', unit.hypothesis_id, 'hardware_class', unit.hardware_class,
  'base_commit', unit.base_commit, 'volunteer_id', vid, 'owner', lease.owner, 'metrics', ARGV[5],
  'score', ARGV[6], 'status', ARGV[7], 'reported_s', fmt(t), 'counts', '1', 'seq', seq)
redis.call('ZADD', KEY_RESULTS, seq, rid)
redis.call('ZADD', key_results_by_class(unit.hardware_class), seq, rid)
redis.call('ZADD', key_results_by_volunteer(vid), seq, rid)
if unit.hypothesis_id ~= '' then redis.call('ZADD', key_results_by_hypothesis(unit.hypothesis_id), seq, rid) end
redis.call('HSET', KEY_RESULT_BY_LEASE, lease_id, rid)
end_lease(lease_id, 'reported', '', t)
set_unit_state(lease.unit_id, unit, 'done')
return {0, redis.call('HGETALL', key_result(rid))}
""",
    # ARGV: lease id. Returns {lease fields, unit fields, stored result fields or {}, class stats}:
    # what a report reads before it is scored, in one trip (the result only once the lease is no
    # longer active). The class stats of the unit's (class, base commit) are their JSON, '' when
    # none are stored, or false when the names are not plain enough to spell the field as Python's
    # json.dumps does (the caller then reads them itself).
    "report_context": r"""
local lease_id = ARGV[2]
local lease = record(key_lease(lease_id))
if not lease then fail('NotFound', 'unknown lease ' .. lease_id) end
local existing = {}
if lease.state ~= 'active' then
  local stored = redis.call('HGET', KEY_RESULT_BY_LEASE, lease_id)
  if stored then existing = redis.call('HGETALL', key_result(stored)) end
end
local unit = redis.call('HGETALL', key_unit(lease.unit_id))
local unit_class, unit_commit = '', ''
for i = 1, #unit, 2 do
  if unit[i] == 'hardware_class' then unit_class = unit[i + 1] elseif unit[i] == 'base_commit' then unit_commit = unit[i + 1] end
end
local stats = false
local plain = '^[%w%.%-_:@+]*$'
if string.find(unit_class, plain) and string.find(unit_commit, plain) then
  stats = redis.call('HGET', KEY_CLASS_STATS, '["' .. unit_class .. '", "' .. unit_commit .. '"]') or ''
end
return {redis.call('HGETALL', key_lease(lease_id)), unit, existing, stats}
""",
    # ARGV: the merge's fields as name/value pairs
    "add_merge": r"""
local f = fields_from(2)
if redis.call('EXISTS', key_merge(f.commit)) == 1 then
  fail('Duplicate', 'merge ' .. f.commit .. ' is already recorded', f.commit)
end
local seq = next_seq()
f.merged_s = fmt(now_s())
f.seq = seq
hset_all(key_merge(f.commit), f)
redis.call('ZADD', KEY_MERGES, seq, f.commit)
return redis.call('HGETALL', key_merge(f.commit))
""",
    # ARGV: commit, reverted by, reason
    "mark_reverted": r"""
local m = record(key_merge(ARGV[2]))
if not m then fail('NotFound', 'unknown merge ' .. ARGV[2]) end
if m.reverted_by ~= '' then fail('Conflict', 'merge ' .. ARGV[2] .. ' was already reverted by ' .. m.reverted_by) end
redis.call('HSET', key_merge(ARGV[2]), 'reverted_by', ARGV[3], 'revert_reason', ARGV[4])
return redis.call('HGETALL', key_merge(ARGV[2]))
""",
    # ARGV: the KEYS pattern of invites (they have no index), then the names of the heavy fields.
    # Every record without its heavy fields, in one reply: a script runs alone, so this is one
    # moment of the store. The heavy fields and code blobs never change once written and neither
    # is ever deleted, so reading them afterwards (in chunks) gives the values of that same moment.
    "export_snapshot": r"""
local heavy = {}
for i = 3, #ARGV do heavy[ARGV[i]] = true end
local function light(key)
  local names = {}
  for _, name in ipairs(redis.call('HKEYS', key)) do
    if not heavy[name] then names[#names + 1] = name end
  end
  local values, out = redis.call('HMGET', key, unpack(names)), {}
  for i, name in ipairs(names) do out[2 * i - 1] = name; out[2 * i] = values[i] end
  return out
end
local function all_records(index, record_key)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do out[#out + 1] = light(record_key(id)) end
  return out
end
local invites = {}
for _, key in ipairs(redis.call('KEYS', ARGV[2])) do invites[#invites + 1] = redis.call('HGETALL', key) end
return {
  redis.call('HGETALL', KEY_META),
  all_records(KEY_PRINCIPALS, key_principal),
  invites,
  all_records(KEY_HYPOTHESES, key_hypothesis),
  all_records(KEY_UNITS, key_unit),
  all_records(KEY_LEASES, key_lease),
  all_records(KEY_RESULTS, key_result),
  redis.call('HVALS', KEY_CLASS_STATS),
  all_records(KEY_MERGES, key_merge),
}
""",
    # ARGV: record key root, exclusive start ('-inf', '(N', or '@record id': after that record),
    # limit, reverse (1/0), index keys...
    # One consistent page of records, in score order across the given indexes.
    "page": r"""
local root, start, limit, reverse = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
if string.sub(start, 1, 1) == '@' then  -- after a record: its seq, looked up here (no extra trip)
  local seq = redis.call('HGET', root .. string.sub(start, 2), 'seq')
  if not seq then fail('NotFound', 'unknown page position ' .. string.sub(start, 2)) end
  start = '(' .. seq
end
local items = {}
for i = 6, #ARGV do
  local got
  if reverse then
    got = redis.call('ZREVRANGEBYSCORE', ARGV[i], start, '-inf', 'WITHSCORES', 'LIMIT', 0, limit)
  else
    got = redis.call('ZRANGEBYSCORE', ARGV[i], start, '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
  end
  for j = 1, #got, 2 do items[#items + 1] = {got[j], tonumber(got[j + 1])} end
end
if #ARGV > 6 then
  table.sort(items, function(a, b) if reverse then return a[2] > b[2] end return a[2] < b[2] end)
end
local out = {}
for k = 1, math.min(limit, #items) do out[k] = redis.call('HGETALL', root .. items[k][1]) end
return out
""",
}

_ERRORS: dict[str, type[StoreError]] = {
    "NotFound": NotFoundError,
    "InvalidValue": InvalidValueError,
    "PermissionDenied": PermissionDeniedError,
    "LeaseExpired": LeaseExpiredError,
    "Conflict": ConflictError,
    "Invite": InviteError,
}


# ---------------------------------------------------------------------------------------------
# One code path for both clients. The calls of the volunteer loop (and the helpers they share) are
# written once, as generators of commands: each yields a command and is sent its reply. RedisStore
# runs them on its blocking client (`_drive`); AsyncRedisStore (redis_aio.py) runs the very same
# generators on an asyncio client, on the serving process's event loop.
#   ("script", name, args)          one script (EVALSHA); a STORE error is raised as its typed error
#   ("scripts", [(name, args), ..]) pipelined scripts, one round trip; each reply or its error
#   ("mget", keys) / ("hget", key, field)
# ---------------------------------------------------------------------------------------------
Command = tuple[Any, ...]
Steps = Generator[Command, Any, Any]


def store_error(exc: redis.ResponseError) -> Exception:
    """Turn a script's `fail(kind, message)` back into the typed error (others pass through)."""
    text = str(exc)
    if not text.startswith("STORE "):
        return exc
    detail, _ = json.JSONDecoder().raw_decode(text, len("STORE "))
    if detail["kind"] == "Duplicate":
        return DuplicateError(detail["message"], detail["original"])
    return _ERRORS.get(detail["kind"], StoreError)(detail["message"])


def _pairs(row: Mapping[str, RowValue]) -> list[RowValue]:
    return [item for name, value in row.items() for item in (name, value)]


def _as_dict(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def reconnect_retry(asyncio_client: bool = False) -> Any:
    """Retries for a command that met a broken connection: after a redis-server restart every
    pooled connection is dead, and without a retry each would fail one call before reconnecting.
    A command is sent again only when the connection failed (refused, reset, closed), which after
    a restart means it never ran; the one case where it could run twice (the connection dropped
    after the server ran it) is harmless for the scripts that matter: a report or a heartbeat
    repeated is the same report or heartbeat, a repeated lease leaves a lease that expires."""
    from redis.backoff import ExponentialBackoff

    if asyncio_client:
        from redis.asyncio.retry import Retry as AsyncRetry

        return AsyncRetry(ExponentialBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=RECONNECT_BACKOFF_S), RECONNECT_RETRIES)
    from redis.retry import Retry

    return Retry(ExponentialBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=RECONNECT_BACKOFF_S), RECONNECT_RETRIES)


class RedisStore(Store):
    """Redis backend. `RedisStore.from_url("redis://host:6379/0?prefix=autoswarm")`."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        if not client.get_encoder().decode_responses:
            raise ValueError("RedisStore needs a client made with decode_responses=True")
        self._redis = client
        self.keys = keys.KeySpace(prefix)
        self.url = ""  # set by from_url (without the prefix): how redis_aio's client reaches the same database
        # Blobs are content-addressed and never change: a lease's code (the same train.py for
        # most units of one head) is read from Redis once, not once per lease.
        self._blob_cache: dict[str, str] = {}
        # register_script hashes the source once; calls go by EVALSHA and reload on NOSCRIPT
        # (after a server restart, say).
        self._scripts: dict[str, Script] = {
            name: client.register_script(_PRELUDE + body) for name, body in _SCRIPTS.items()
        }

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """`redis://[user:password@]host:port/db?prefix=NAME` (also rediss:// and unix://);
        other query parameters go to redis-py."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((value for name, value in query if name == "prefix"), DEFAULT_PREFIX)
        rest = urllib.parse.urlencode([(name, value) for name, value in query if name != "prefix"])
        client = redis.Redis.from_url(
            urllib.parse.urlunsplit(parts._replace(query=rest)), decode_responses=True, retry=reconnect_retry()
        )
        store = cls(client, prefix=prefix)
        store.url = urllib.parse.urlunsplit(parts._replace(query=rest))
        store._warn_unless_durable()
        return store

    def script(self, name: str) -> Script:
        return self._scripts[name]

    def durability(self) -> dict[str, str]:
        """The server's persistence settings (empty when CONFIG is not allowed)."""
        try:
            settings = self._redis.config_get("append*")
        except redis.ResponseError:
            return {}
        return {name: settings[name] for name in ("appendonly", "appendfsync") if name in settings}

    def _warn_unless_durable(self) -> None:
        settings = self.durability()
        if settings and (settings.get("appendonly") != "yes" or settings.get("appendfsync") != "always"):
            log.warning(
                "redis runs with appendonly=%s appendfsync=%s: acknowledged writes may be lost in a crash "
                "(use appendonly yes, appendfsync always)",
                settings.get("appendonly"),
                settings.get("appendfsync"),
            )

    # -- plumbing ---------------------------------------------------------------------------------

    def _run(self, script: str, *args: RowValue) -> Any:
        try:
            return self._scripts[script](
                keys=[self.keys.key(keys.SEQUENCE)], args=[self.keys.root, *args], client=self._redis
            )
        except redis.ResponseError as exc:
            raise store_error(exc) from None

    def script_argv(self, args: Sequence[RowValue]) -> list[RowValue]:
        """EVALSHA's arguments after the sha: one key (the sequence), the root, the script's ARGV."""
        return [1, self.keys.key(keys.SEQUENCE), self.keys.root, *args]

    @staticmethod
    def settle_replies(
        calls: Sequence[tuple[str, Sequence[RowValue]]], todo: list[int], got: Sequence[Any], replies: list[Any],
        attempt: int,
    ) -> list[int]:
        """Pipelined EVALSHA replies into `replies` (errors as typed errors); returns the calls to
        send again because the server had lost the script (NOSCRIPT: they did not run). A pipeline
        of registered scripts would check SCRIPT EXISTS first, a round trip on every group."""
        again = []
        for index, reply in zip(todo, got, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                again.append(index)
            elif isinstance(reply, redis.ResponseError):
                replies[index] = store_error(reply)
            else:
                replies[index] = reply
        return again

    def _drive(self, steps: Steps) -> Any:
        """Run a generator of commands (see Command) on this store's client; its return value."""
        try:
            command = next(steps)
            while True:
                command = steps.send(self._execute(command))
        except StopIteration as done:
            return done.value

    def _execute(self, command: Command) -> Any:
        kind = command[0]
        if kind == "script":
            return self._run(command[1], *command[2])
        if kind == "scripts":
            replies: list[Any] = [None] * len(command[1])
            todo = list(range(len(command[1])))
            for attempt in range(2):
                pipe = self._redis.pipeline(transaction=False)
                for index in todo:
                    name, args = command[1][index]
                    pipe.evalsha(self._scripts[name].sha, *self.script_argv(args))
                got = pipe.execute(raise_on_error=False)
                todo = self.settle_replies(command[1], todo, got, replies, attempt)
                for name in {command[1][index][0] for index in todo}:
                    self._redis.script_load(self._scripts[name].script)
            return replies
        if kind == "mget":
            return self._redis.mget(command[1])
        if kind == "hget":
            return self._redis.hget(command[1], command[2])
        raise ValueError(f"unknown command {kind!r}")

    def _record(self, template: str, record_id: str, record_type: type[Any], what: str) -> Any:
        flat = self._redis.hgetall(self.keys.key(template, record_id))
        if not flat:
            raise NotFoundError(f"unknown {what} {record_id!r}")
        return record_from_row(record_type, flat)

    def _units(
        self, rows: Sequence[Mapping[str, str]], known: Mapping[str, str] | None = None
    ) -> list[WorkUnit]:
        return self._drive(self._units_steps(rows, known))  # type: ignore[no-any-return]

    def _units_steps(self, rows: Sequence[Mapping[str, str]], known: Mapping[str, str] | None = None) -> Steps:
        """Units with their code: each distinct blob fetched once (beyond `known`, {hash: text})
        and its text shared by every unit naming it. Blobs never change or go away, so reading
        them after the records still gives the code those records named."""
        blobs = dict(known or {})
        needed = sorted(set().union(*(unit_code_hashes(row) for row in rows)) - blobs.keys())
        cache = self._blob_cache
        blobs.update((digest, cache[digest]) for digest in needed if digest in cache)
        needed = [digest for digest in needed if digest not in blobs]
        for start in range(0, len(needed), BLOB_READ_BATCH):
            chunk = needed[start : start + BLOB_READ_BATCH]
            texts = yield ("mget", [self.keys.key(keys.BLOB, digest) for digest in chunk])
            found = [(digest, text) for digest, text in zip(chunk, texts, strict=True) if text is not None]
            blobs.update(found)
            if len(cache) + len(found) > BLOB_CACHE_ENTRIES:
                cache.clear()
            cache.update(found[:BLOB_CACHE_ENTRIES])
        return [unit_from_row(row, blobs) for row in rows]

    def _page(self, template: str, indexes: Sequence[str], *args: Any, **kwargs: Any) -> list[dict[str, str]]:
        """_page_steps on this store's client."""
        return self._drive(self._page_steps(template, indexes, *args, **kwargs))  # type: ignore[no-any-return]

    def _page_steps(
        self,
        template: str,
        indexes: Sequence[str],
        start: str = "-inf",
        limit: int = ALL,
        reverse: bool = False,
        by_seq: bool = True,
    ) -> Steps:
        """Records of the indexes in score order after `start`. A long listing is read in chunks
        of PAGE_CHUNK records: Redis runs one script at a time, and one script reading thousands
        of records stalls every other client (the serving processes' leases and heartbeats) for
        tens of milliseconds. Between chunks a record may move from one state index to another,
        so one read twice is kept once. Indexes not scored by `seq` are read in one script."""
        root = self.keys.record_root(template)
        if not by_seq:
            return [_as_dict(flat) for flat in (yield ("script", "page", (root, start, limit, int(reverse), *indexes)))]
        id_field = _ID_FIELDS[template]
        rows: list[dict[str, str]] = []
        seen: set[str] = set()
        while len(rows) < limit:
            want = min(PAGE_CHUNK, limit - len(rows))
            chunk = [_as_dict(flat) for flat in (yield ("script", "page", (root, start, want, int(reverse), *indexes)))]
            for row in chunk:
                if row[id_field] not in seen:
                    seen.add(row[id_field])
                    rows.append(row)
            if len(chunk) < want:
                break
            start = f"({chunk[-1]['seq']}"
        return rows

    def _after(self, template: str, record_id: str) -> str:
        """The exclusive start of the page after record_id (the page script finds its seq)."""
        if not record_id:
            return "-inf"
        return "@" + record_id

    def now(self) -> float:
        seconds, microseconds = self._redis.time()
        return seconds + microseconds / 1_000_000

    def close(self) -> None:
        self._redis.close()

    # -- metadata -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        return self._drive(self.get_meta_steps(key))  # type: ignore[no-any-return]

    def get_meta_steps(self, key: str) -> Steps:
        check_text("key", key, required=True)
        return (yield ("hget", self.keys.key(keys.META), key))

    def set_meta(self, key: str, value: str) -> None:
        check_text("key", key, required=True)
        check_text("value", value, MAX_META_VALUE_BYTES)
        self._redis.hset(self.keys.key(keys.META), key, value)

    def compare_and_set_meta(self, key: str, expected: str | None, value: str) -> bool:
        return self._drive(self.compare_and_set_meta_steps(key, expected, value))  # type: ignore[no-any-return]

    def compare_and_set_meta_steps(self, key: str, expected: str | None, value: str) -> Steps:
        check_text("key", key, required=True)
        check_text("value", value, MAX_META_VALUE_BYTES)
        has_expected = expected is not None
        return bool((yield ("script", "compare_and_set_meta", (key, int(has_expected), expected or "", value))))

    # -- principals and invites --------------------------------------------------------------------

    def create_principal(
        self,
        role: Role,
        owner: str,
        display_name: str,
        token_hash: str,
        hardware_class: str = "",
        hardware_json: str = "{}",
        invite_token_hash: str | None = None,
    ) -> Principal:
        role = check_enum(Role, "role", role)
        check_text("owner", owner, required=invite_token_hash is None)
        check_text("display_name", display_name)
        check_text("token_hash", token_hash, required=True)
        check_text("hardware_class", hardware_class)
        check_json("hardware_json", hardware_json, MAX_HARDWARE_JSON_BYTES)
        if invite_token_hash is not None:
            check_text("invite_token_hash", invite_token_hash, required=True)
        principal = Principal(
            principal_id=secrets.token_hex(12),
            role=role,
            owner=owner,
            display_name=display_name,
            token_hash=token_hash,
            hardware_class=hardware_class,
            hardware_json=hardware_json,
        )
        flat = self._run("create_principal", invite_token_hash or "", *_pairs(record_to_row(principal)))
        return record_from_row(Principal, _as_dict(flat))

    def get_principal(self, principal_id: str) -> Principal:
        return self._record(keys.PRINCIPAL, principal_id, Principal, "principal")

    def find_principal_by_token_hash(self, token_hash: str) -> Principal | None:
        return self._drive(self.find_principal_by_token_hash_steps(token_hash))  # type: ignore[no-any-return]

    def find_principal_by_token_hash_steps(self, token_hash: str) -> Steps:
        flat = yield ("script", "principal_by_token", (token_hash,))  # one round trip: on every uncached call
        return record_from_row(Principal, _as_dict(flat)) if flat else None

    def list_principals(self, role: Role | None = None, owner: str | None = None) -> list[Principal]:
        role = None if role is None else check_enum(Role, "role", role)
        if owner is None:
            index = self.keys.key(keys.PRINCIPALS)
        else:
            index = self.keys.key(keys.PRINCIPALS_BY_OWNER, owner)
        rows = self._page(keys.PRINCIPAL, [index])
        principals = [record_from_row(Principal, row) for row in rows]
        return [p for p in principals if role is None or p.role == role]

    def touch_principal(self, principal_id: str) -> None:
        self._run("touch_principal", principal_id)

    def revoke_principal(self, principal_id: str, reason: str) -> int:
        check_text("reason", reason, MAX_REASON_BYTES)
        return int(self._run("revoke", "principal", principal_id, reason)[0])

    def revoke_owner(self, owner: str, reason: str) -> tuple[list[str], int]:
        check_text("owner", owner, required=True)
        check_text("reason", reason, MAX_REASON_BYTES)
        discounted, *revoked = self._run("revoke", "owner", owner, reason)
        return list(revoked), int(discounted)

    def create_invite(self, token_hash: str, owner: str, max_uses: int = 1, expires_s: float = 0.0) -> Invite:
        check_text("token_hash", token_hash, required=True)
        check_text("owner", owner, required=True)
        check_count("max_uses", max_uses, minimum=1)
        validate_numbers({"expires_s": expires_s})
        if expires_s < 0:
            raise InvalidValueError("expires_s must be 0 (never) or a time")
        invite = Invite(token_hash, owner, max_uses, 0, float(expires_s))
        return record_from_row(Invite, _as_dict(self._run("create_invite", *_pairs(record_to_row(invite)))))

    # -- hypotheses -------------------------------------------------------------------------------

    def add_hypothesis(self, hypothesis: Hypothesis) -> Hypothesis:
        row = record_to_row(check_hypothesis(hypothesis))
        return record_from_row(Hypothesis, _as_dict(self._run("add_hypothesis", *_pairs(row))))

    def get_hypothesis(self, hypothesis_id: str) -> Hypothesis:
        return self._record(keys.HYPOTHESIS, hypothesis_id, Hypothesis, "hypothesis")

    def _state_indexes(self, states: Iterable[HypothesisState]) -> list[str]:
        values = sorted({check_enum(HypothesisState, "state", s).value for s in states})
        if not values:
            return [self.keys.key(keys.HYPOTHESES)]
        return [self.keys.key(keys.HYPOTHESES_BY_STATE, value) for value in values]

    def list_hypotheses(
        self, states: Iterable[HypothesisState] = (), limit: int = 100, after: str = ""
    ) -> list[Hypothesis]:
        check_limit(limit)
        indexes = self._state_indexes(states)
        rows = self._page(keys.HYPOTHESIS, indexes, self._after(keys.HYPOTHESIS, after), limit)
        return [record_from_row(Hypothesis, row) for row in rows]

    def update_hypothesis(
        self,
        hypothesis_id: str,
        *,
        state: HypothesisState | None = None,
        state_reason: str | None = None,
        priority: float | None = None,
        merged_commit: str | None = None,
        expected_state: HypothesisState | None = None,
    ) -> Hypothesis:
        changes: dict[str, RowValue] = {}
        if state is not None:
            changes["state"] = check_enum(HypothesisState, "state", state).value
        if state_reason is not None:
            changes["state_reason"] = check_text("state_reason", state_reason, MAX_REASON_BYTES)
        if priority is not None:
            validate_numbers({"priority": priority})
            changes["priority"] = float(priority)
        if merged_commit is not None:
            changes["merged_commit"] = check_text("merged_commit", merged_commit)
        expected = (
            "" if expected_state is None else check_enum(HypothesisState, "expected_state", expected_state)
        )
        flat = self._run("update_hypothesis", hypothesis_id, expected, *_pairs(changes))
        return record_from_row(Hypothesis, _as_dict(flat))

    def count_hypotheses(self, states: Iterable[HypothesisState] = ()) -> int:
        pipe = self._redis.pipeline(transaction=True)
        for index in self._state_indexes(states):
            pipe.zcard(index)
        return sum(pipe.execute())

    # -- work units and leases --------------------------------------------------------------------

    def enqueue_unit(self, unit: WorkUnit) -> WorkUnit:
        unit = check_unit(unit)
        row, blobs = unit_to_row(unit)
        row["kind_rank"] = UNIT_KIND_RANK[unit.kind]
        flat = self._run("enqueue_unit", len(blobs), *_pairs(blobs), *_pairs(row))
        return self._units([_as_dict(flat)], known=blobs)[0]

    def get_unit(self, unit_id: str, with_code: bool = True) -> WorkUnit:
        flat = self._redis.hgetall(self.keys.key(keys.UNIT, unit_id))
        if not flat:
            raise NotFoundError(f"unknown unit {unit_id!r}")
        if not with_code:
            return unit_from_row(flat, {}, with_code=False)
        return self._units([flat])[0]

    def code_storage(self) -> CodeStorage:
        pattern = self.keys.pattern()[:-1] + keys.BLOB.format("*")
        blob_keys = list(self._redis.scan_iter(match=pattern, count=1000))
        sizes: list[int] = []
        for start in range(0, len(blob_keys), BLOB_READ_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for key in blob_keys[start : start + BLOB_READ_BATCH]:
                pipe.strlen(key)  # bytes: Redis strings are byte strings
            sizes += pipe.execute()
        return CodeStorage(blobs=len(blob_keys), blob_bytes=sum(sizes))

    def list_units(
        self, hypothesis_id: str = "", state: UnitState | None = None, hardware_class: str = ""
    ) -> list[WorkUnit]:
        state = None if state is None else check_enum(UnitState, "state", state)
        if hypothesis_id:
            index = self.keys.key(keys.UNITS_BY_HYPOTHESIS, hypothesis_id)
        elif state is not None:
            index = self.keys.key(keys.UNITS_BY_STATE, state.value)
        else:
            index = self.keys.key(keys.UNITS)
        rows = [
            row
            for row in self._page(keys.UNIT, [index])
            if (state is None or row["state"] == state.value)
            and (not hardware_class or row["hardware_class"] == hardware_class)
        ]
        return self._units(rows)

    def count_queued(self, hardware_class: str) -> int:
        # A queued unit sits in exactly one queue zset, the one of its kind rank and class.
        pipe = self._redis.pipeline(transaction=False)
        for rank in sorted(set(UNIT_KIND_RANK.values())):
            pipe.zcard(self.keys.key(keys.QUEUE, str(rank), hardware_class))
        return sum(int(n) for n in pipe.execute())

    def count_pending_units(self, kind: UnitKind, hardware_class: str, base_commit: str) -> int:
        kind = check_enum(UnitKind, "kind", kind)
        return int(self._run("count_pending_units", kind.value, hardware_class, base_commit, PENDING_INDEX_FLAG))

    def cancel_units(self, hypothesis_id: str) -> int:
        return int(self._run("cancel_units", hypothesis_id))

    def cancel_unit(self, unit_id: str) -> bool:
        return bool(int(self._run("cancel_unit", unit_id)))

    def requeue_unit(self, unit_id: str) -> WorkUnit:
        return self._units([_as_dict(self._run("requeue_unit", unit_id))])[0]

    def lease_unit(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> tuple[WorkUnit, Lease] | None:
        return self._drive(  # type: ignore[no-any-return]
            self.lease_unit_steps(volunteer_id, owner, hardware_class, lease_duration_s, slot)
        )

    def lease_unit_steps(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> Steps:
        check_text("hardware_class", hardware_class, required=True)
        duration = check_positive("lease_duration_s", lease_duration_s)
        check_count("slot", slot)
        granted = yield (
            "script", "lease_unit", (volunteer_id, owner, hardware_class, duration, slot, secrets.token_hex(16))
        )
        if granted is None:
            return None
        unit_flat, lease_flat = granted
        units = yield from self._units_steps([_as_dict(unit_flat)])
        return units[0], record_from_row(Lease, _as_dict(lease_flat))

    def get_lease(self, lease_id: str) -> Lease:
        return self._record(keys.LEASE, lease_id, Lease, "lease")

    def list_leases(self, active_only: bool = True) -> list[Lease]:
        index = keys.LEASES_ACTIVE if active_only else keys.LEASES
        rows = sorted(
            self._page(keys.LEASE, [self.keys.key(index)], by_seq=index == keys.LEASES),
            key=lambda row: int(row["seq"]),
        )
        return [record_from_row(Lease, row) for row in rows]

    def extend_lease(
        self,
        lease_id: str,
        volunteer_id: str,
        lease_duration_s: float,
        step: int = 0,
        fraction: float = 0.0,
        loss: float = 0.0,
    ) -> Lease:
        duration = check_positive("lease_duration_s", lease_duration_s)
        check_count("step", step)
        validate_numbers({"fraction": fraction, "loss": loss})
        flat = self._run("extend_lease", lease_id, volunteer_id, duration, step, float(fraction), float(loss))
        return record_from_row(Lease, _as_dict(flat))

    def extend_leases(self, extensions: Sequence[LeaseExtension]) -> list[Lease | Exception]:
        return self._drive(self.extend_leases_steps(extensions))  # type: ignore[no-any-return]

    def extend_leases_steps(self, extensions: Sequence[LeaseExtension]) -> Steps:
        """One pipelined round trip for the group (Redis fsyncs it once); each script runs alone."""
        out: list[Lease | Exception | None] = []
        calls: list[tuple[str, tuple[RowValue, ...]]] = []
        for e in extensions:
            try:
                duration = check_positive("lease_duration_s", e.lease_duration_s)
                check_count("step", e.step)
                validate_numbers({"fraction": e.fraction, "loss": e.loss})
            except StoreError as exc:
                out.append(exc)
                continue
            out.append(None)
            calls.append(
                ("extend_lease", (e.lease_id, e.volunteer_id, duration, e.step, float(e.fraction), float(e.loss)))
            )
        replies = iter((yield ("scripts", calls)) if calls else [])
        results: list[Lease | Exception] = []
        for slot in out:
            if slot is not None:
                results.append(slot)
                continue
            reply = next(replies)
            results.append(reply if isinstance(reply, Exception) else record_from_row(Lease, _as_dict(reply)))
        return results

    def release_lease(self, lease_id: str, volunteer_id: str, reason: str = "") -> Lease:
        check_text("reason", reason, MAX_REASON_BYTES)
        return record_from_row(Lease, _as_dict(self._run("release_lease", lease_id, volunteer_id, reason)))

    def expire_leases(self) -> list[Lease]:
        return [record_from_row(Lease, _as_dict(flat)) for flat in self._run("expire_leases")]

    # -- results ------------------------------------------------------------------------------------

    def record_result(
        self, lease_id: str, volunteer_id: str, metrics: RunMetrics, score: NormalizedScore, result_id: str
    ) -> tuple[ResultRecord, bool]:
        return self._drive(  # type: ignore[no-any-return]
            self.record_result_steps(lease_id, volunteer_id, metrics, score, result_id)
        )

    def record_result_steps(
        self, lease_id: str, volunteer_id: str, metrics: RunMetrics, score: NormalizedScore, result_id: str
    ) -> Steps:
        metrics = check_metrics(metrics)
        score = check_score(score)
        check_text("result_id", result_id, required=True)
        duplicate, flat = yield (
            "script", "record_result",
            (lease_id, volunteer_id, result_id, to_json(metrics), to_json(score), metrics.status.value),
        )
        return record_from_row(ResultRecord, _as_dict(flat)), bool(duplicate)

    def report_context(self, lease_id: str) -> ReportContext:
        return self._drive(self.report_context_steps(lease_id))  # type: ignore[no-any-return]

    def report_context_steps(self, lease_id: str) -> Steps:
        lease_flat, unit_flat, existing_flat, stats_json = yield ("script", "report_context", (lease_id,))
        existing = record_from_row(ResultRecord, _as_dict(existing_flat)) if existing_flat else None
        unit = unit_from_row(_as_dict(unit_flat), {}, with_code=False)
        if stats_json is None:  # Lua's false: names the script could not spell as a field
            field = self._stats_field(unit.hardware_class, unit.base_commit)
            stats_json = yield ("hget", self.keys.key(keys.CLASS_STATS), field)
        stats = record_from_row(ClassStats, json.loads(stats_json)) if stats_json else None
        return ReportContext(record_from_row(Lease, _as_dict(lease_flat)), unit, existing, stats)

    def get_result(self, result_id: str) -> ResultRecord:
        return self._record(keys.RESULT, result_id, ResultRecord, "result")

    def result_for_lease(self, lease_id: str) -> ResultRecord | None:
        result_id = self._redis.hget(self.keys.key(keys.RESULT_BY_LEASE), lease_id)
        return None if result_id is None else self.get_result(result_id)

    def list_results(
        self, result_filter: ResultFilter | None = None, limit: int = 1000, after: str = ""
    ) -> list[ResultRecord]:
        return self._drive(self.list_results_steps(result_filter, limit, after))  # type: ignore[no-any-return]

    def list_results_steps(self, result_filter: ResultFilter | None = None, limit: int = 1000, after: str = "") -> Steps:
        f = check_result_filter(result_filter)
        check_limit(limit)
        # Walk the narrowest index; the rest of the filter is applied to what it yields.
        if f.hypothesis_id:
            index = self.keys.key(keys.RESULTS_BY_HYPOTHESIS, f.hypothesis_id)
        elif f.volunteer_id:
            index = self.keys.key(keys.RESULTS_BY_VOLUNTEER, f.volunteer_id)
        elif f.hardware_class:
            index = self.keys.key(keys.RESULTS_BY_CLASS, f.hardware_class)
        else:
            index = self.keys.key(keys.RESULTS)
        start = self._after(keys.RESULT, after)
        chunk = max(limit, RESULT_PAGE_CHUNK) if f != ResultFilter() else limit
        found: list[ResultRecord] = []
        while len(found) < limit:
            rows = yield from self._page_steps(keys.RESULT, [index], start, chunk)
            for row in rows:
                record = record_from_row(ResultRecord, row)
                if result_matches(record, f):
                    found.append(record)
                    if len(found) == limit:
                        break
            if len(rows) < chunk:
                break
            start = f"({rows[-1]['seq']}"
        return found

    # -- statistics and merges ------------------------------------------------------------------

    def _stats_field(self, hardware_class: str, commit: str) -> str:
        return json.dumps([hardware_class, commit])

    def put_class_stats(self, stats: ClassStats) -> None:
        stats = check_class_stats(stats)
        row = record_to_row(ClassStats(**{**vars(stats), "updated_s": self.now()}))
        self._redis.hset(
            self.keys.key(keys.CLASS_STATS),
            self._stats_field(stats.hardware_class, stats.commit),
            json.dumps(row),
        )

    def get_class_stats(self, hardware_class: str, commit: str) -> ClassStats | None:
        value = self._redis.hget(self.keys.key(keys.CLASS_STATS), self._stats_field(hardware_class, commit))
        return None if value is None else record_from_row(ClassStats, json.loads(value))

    def list_class_stats(self, commit: str = "") -> list[ClassStats]:
        stats = [
            record_from_row(ClassStats, json.loads(v))
            for v in self._redis.hvals(self.keys.key(keys.CLASS_STATS))
        ]
        return sorted(
            (s for s in stats if not commit or s.commit == commit), key=lambda s: (s.hardware_class, s.commit)
        )

    def add_merge(self, merge: MergeRecord) -> MergeRecord:
        row = record_to_row(check_merge(merge))
        return record_from_row(MergeRecord, _as_dict(self._run("add_merge", *_pairs(row))))

    def mark_reverted(self, commit: str, reverted_by: str, reason: str) -> MergeRecord:
        check_text("reverted_by", reverted_by, required=True)
        check_text("reason", reason, MAX_REASON_BYTES)
        return record_from_row(MergeRecord, _as_dict(self._run("mark_reverted", commit, reverted_by, reason)))

    def list_merges(self, limit: int = 100) -> list[MergeRecord]:
        check_limit(limit)
        rows = self._page(keys.MERGE, [self.keys.key(keys.MERGES)], "+inf", limit, reverse=True)
        return [record_from_row(MergeRecord, row) for row in rows]

    # -- whole-store snapshots ------------------------------------------------------------------

    def _invite_pattern(self) -> str:
        return self.keys.pattern()[:-1] + keys.INVITE.format("*")

    def export_snapshot(self) -> StoreSnapshot:
        heavy_names = sorted({name for names in _HEAVY_FIELDS.values() for name in names})
        (meta, principals, invites, hypotheses, units, leases, results, class_stats, merges) = self._run(
            "export_snapshot", self._invite_pattern(), *heavy_names
        )

        def records(template: str, record_type: type[Any], flats: Sequence[Sequence[str]]) -> tuple[Any, ...]:
            rows = [_as_dict(flat) for flat in flats]
            fields = _HEAVY_FIELDS.get(template, ())
            id_field = _ID_FIELDS[template]
            for start in range(0, len(rows) if fields else 0, SNAPSHOT_BATCH_RECORDS):
                batch = rows[start : start + SNAPSHOT_BATCH_RECORDS]
                pipe = self._redis.pipeline(transaction=False)
                for row in batch:
                    pipe.hmget(self.keys.key(template, row[id_field]), list(fields))
                for row, values in zip(batch, pipe.execute(), strict=True):
                    # A field the record lacks stays out (inline code, in a unit hash holding hashes).
                    present = zip(fields, values, strict=True)
                    row.update((name, value) for name, value in present if value is not None)
            if record_type is WorkUnit:
                return tuple(self._units(rows))
            return tuple(record_from_row(record_type, row) for row in rows)

        stats = sorted(
            (record_from_row(ClassStats, json.loads(value)) for value in class_stats),
            key=lambda s: (s.hardware_class, s.commit),
        )
        return StoreSnapshot(
            meta=dict(sorted(_as_dict(meta).items())),
            principals=records(keys.PRINCIPAL, Principal, principals),
            invites=tuple(
                sorted(records(keys.INVITE, Invite, invites), key=lambda i: (i.created_s, i.token_hash))
            ),
            hypotheses=records(keys.HYPOTHESIS, Hypothesis, hypotheses),
            units=records(keys.UNIT, WorkUnit, units),
            leases=records(keys.LEASE, Lease, leases),
            results=records(keys.RESULT, ResultRecord, results),
            class_stats=tuple(stats),
            merges=records(keys.MERGE, MergeRecord, merges),
        )

    def import_snapshot(self, snapshot: StoreSnapshot) -> None:
        snapshot = check_snapshot(snapshot)
        k = self.keys
        sequence = k.key(keys.SEQUENCE)
        where = f"redis store {k.prefix!r}"
        found = next(self._redis.scan_iter(match=k.pattern(), count=1000), None)
        refuse_unless_empty(where, [found] if found else [])
        # Claim the empty store: every record write of the scripts increments the sequence, so a
        # writer that got in first makes this fail, and one coming later finds the store taken.
        if not self._redis.set(sequence, 0, nx=True):
            raise ConflictError(f"{where} was written to during the import; nothing was imported")
        # Written in batches (one pipeline each, so memory and the server's pauses stay small);
        # on any failure everything is deleted again, leaving the store as empty as it was.
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                last_seq = self._queue_import(pipe, snapshot)
                pipe.set(sequence, last_seq)
                pipe.execute()
        except BaseException:
            self.delete_everything()
            raise

    def _queue_import(self, pipe: redis.client.Pipeline, snapshot: StoreSnapshot) -> int:
        """The same keys and indexes the scripts maintain, with fresh seqs in snapshot order;
        returns the last seq. Executes the pipeline every SNAPSHOT_BATCH_RECORDS records."""
        k = self.keys
        seq = 0

        def next_seq() -> int:
            nonlocal seq
            seq += 1
            if seq % SNAPSHOT_BATCH_RECORDS == 0:
                pipe.execute()
            return seq

        if snapshot.meta:
            pipe.hset(k.key(keys.META), mapping=dict(snapshot.meta))
        for p in snapshot.principals:
            n = next_seq()
            pipe.hset(k.key(keys.PRINCIPAL, p.principal_id), mapping={**record_to_row(p), "seq": n})
            pipe.zadd(k.key(keys.PRINCIPALS), {p.principal_id: n})
            pipe.zadd(k.key(keys.PRINCIPALS_BY_OWNER, p.owner), {p.principal_id: n})
            pipe.hset(k.key(keys.PRINCIPAL_BY_TOKEN), p.token_hash, p.principal_id)
        for invite in snapshot.invites:
            pipe.hset(k.key(keys.INVITE, invite.token_hash), mapping=record_to_row(invite))
        for h in snapshot.hypotheses:
            n = next_seq()
            pipe.hset(k.key(keys.HYPOTHESIS, h.hypothesis_id), mapping={**record_to_row(h), "seq": n})
            pipe.zadd(k.key(keys.HYPOTHESES), {h.hypothesis_id: n})
            pipe.zadd(k.key(keys.HYPOTHESES_BY_STATE, h.state.value), {h.hypothesis_id: n})
            pipe.hset(k.key(keys.HYPOTHESIS_BY_FINGERPRINT), h.fingerprint, h.hypothesis_id)
        for u in snapshot.units:
            n = next_seq()
            rank = UNIT_KIND_RANK[u.kind]
            row, blobs = unit_to_row(u)
            for digest, text in blobs.items():
                pipe.set(k.key(keys.BLOB, digest), text, nx=True)
            pipe.hset(k.key(keys.UNIT, u.unit_id), mapping={**row, "kind_rank": rank, "seq": n})
            pipe.zadd(k.key(keys.UNITS), {u.unit_id: n})
            if u.hypothesis_id:
                pipe.zadd(k.key(keys.UNITS_BY_HYPOTHESIS, u.hypothesis_id), {u.unit_id: n})
            pipe.zadd(k.key(keys.UNITS_BY_STATE, u.state.value), {u.unit_id: n})
            if u.state in (UnitState.QUEUED, UnitState.LEASED):
                pipe.zadd(k.key(keys.UNITS_PENDING, u.kind.value, u.hardware_class, u.base_commit), {u.unit_id: n})
            if u.state == UnitState.QUEUED:
                member = f"{n:016d}:{u.unit_id}"  # the scripts' queue_member()
                pipe.zadd(k.key(keys.QUEUE, str(rank), u.hardware_class), {member: -float(u.priority)})
        for lease in snapshot.leases:
            n = next_seq()
            pipe.hset(k.key(keys.LEASE, lease.lease_id), mapping={**record_to_row(lease), "seq": n})
            pipe.zadd(k.key(keys.LEASES), {lease.lease_id: n})
            if lease.state == LeaseState.ACTIVE:
                pipe.zadd(k.key(keys.LEASES_ACTIVE), {lease.lease_id: lease.deadline_s})
        for r in snapshot.results:
            n = next_seq()
            row = {**record_to_row(r), "status": r.metrics.status.value, "seq": n}
            pipe.hset(k.key(keys.RESULT, r.result_id), mapping=row)
            pipe.zadd(k.key(keys.RESULTS), {r.result_id: n})
            pipe.zadd(k.key(keys.RESULTS_BY_CLASS, r.hardware_class), {r.result_id: n})
            pipe.zadd(k.key(keys.RESULTS_BY_VOLUNTEER, r.volunteer_id), {r.result_id: n})
            if r.hypothesis_id:
                pipe.zadd(k.key(keys.RESULTS_BY_HYPOTHESIS, r.hypothesis_id), {r.result_id: n})
            pipe.hset(k.key(keys.RESULT_BY_LEASE), r.lease_id, r.result_id)
        for stats in snapshot.class_stats:
            pipe.hset(
                k.key(keys.CLASS_STATS),
                self._stats_field(stats.hardware_class, stats.commit),
                json.dumps(record_to_row(stats)),
            )
        for m in snapshot.merges:
            n = next_seq()
            pipe.hset(k.key(keys.MERGE, m.commit), mapping={**record_to_row(m), "seq": n})
            pipe.zadd(k.key(keys.MERGES), {m.commit: n})
        return seq

    # -- housekeeping -------------------------------------------------------------------------------

    def delete_everything(self) -> int:
        """Delete every key of this store's prefix (tests, and operators starting over)."""
        deleted = 0
        batch: list[str] = []
        for key in self._redis.scan_iter(match=self.keys.pattern(), count=1000):
            batch.append(key)
            if len(batch) == 500:
                deleted += self._redis.delete(*batch)
                batch.clear()
        if batch:
            deleted += self._redis.delete(*batch)
        return deleted
