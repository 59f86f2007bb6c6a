// The Redis layout of a persistent session (src/session-store/codec.ts): what a shard writes
// field by field reads back as the session another instance resumes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeSession, encodeMessage, encodeMeta, encodeSub } from '../../src/session-store/codec';
import { outgoingOf, StoredMessage, type Outgoing } from '../../src/shard/session';

function outgoing(topic: string, props: Buffer, payload: string, opts: Partial<Outgoing> = {}, expiresAt = 0): Outgoing {
  // Framed inside a larger buffer, as a ring record would be.
  const body = Buffer.concat([Buffer.from('junk'), Buffer.from(topic), props, Buffer.from(payload), Buffer.from('tail')]);
  const msg = new StoredMessage(body, 4, Buffer.byteLength(topic), props.length, Buffer.byteLength(payload), topic, expiresAt);
  return { msg, qos: 1, retain: false, subIds: null, stage: 1, origin: 7, ...opts };
}

test('messages, their flight state, subscriptions and meta read back as the session, in order', () => {
  const props = Buffer.from([0x26, 0, 1, 0x6b, 0, 1, 0x76]);
  const fields: Record<string, Buffer> = {
    r: Buffer.from('rec1'),
    m: Buffer.from(encodeMeta(60_000, 5)),
    's:a/+': Buffer.from(encodeSub(1, true, false, 3)),
    's:b/#': Buffer.from(encodeSub(2, false, true, 0)),
    'q:10': encodeMessage(outgoing('a/x', Buffer.alloc(0), 'second')),
    'q:2': encodeMessage(outgoing('b/ü', props, 'first', { qos: 2, retain: true, subIds: [3, 70000] })),
    'f:2': Buffer.from('513:2'),
  };
  const s = decodeSession('dev', fields, Date.now());
  assert.ok(s !== null);
  assert.equal(s.clientId, 'dev');
  assert.equal(s.expiryMs, 60_000);
  assert.equal(s.version, 5);
  assert.equal(s.storeId, 'rec1');
  assert.deepEqual(s.subs.sort((x, y) => x.topic.localeCompare(y.topic)), [
    { topic: 'a/+', qos: 1, nl: true, rap: false, subId: 3 },
    { topic: 'b/#', qos: 2, nl: false, rap: true, subId: 0 },
  ]);
  assert.deepEqual(s.pending.map((p) => [p.key, p.id, p.stage]), [[2, 513, 2], [10, 0, 0]], 'by key; the in-flight one has its packet id and stage');
  const first = outgoingOf(s.pending[0]);
  assert.equal(first.msg.topic, 'b/ü');
  assert.equal(first.qos, 2);
  assert.equal(first.retain, true);
  assert.deepEqual(first.subIds, [3, 70000]);
  assert.deepEqual(first.msg.body.subarray(first.msg.propsStart, first.msg.payloadStart), props);
  assert.equal(first.msg.body.subarray(first.msg.payloadStart, first.msg.payloadStart + first.msg.payloadLen).toString(), 'first');
  assert.equal(first.key, 2);
  assert.equal(first.stored, true, 'a message read from the store is known to be there (a drop deletes it)');
});

test('expired messages are left out; a hash without meta is no session; damaged parts are skipped', () => {
  const now = Date.now();
  const fields: Record<string, Buffer> = {
    m: Buffer.from(encodeMeta(1000, 4)),
    'q:1': encodeMessage(outgoing('t', Buffer.alloc(0), 'old', {}, now - 1)),
    'q:2': encodeMessage(outgoing('t', Buffer.alloc(0), 'fresh', {}, now + 60_000)),
    'q:3': Buffer.from([1, 2, 3]),
    's:x': Buffer.from('{not json'),
  };
  const s = decodeSession('dev', fields, now);
  assert.ok(s !== null);
  assert.deepEqual(s.pending.map((p) => p.key), [2]);
  assert.deepEqual(s.subs, []);
  assert.equal(s.version, 4);
  assert.equal(decodeSession('dev', { 'q:1': fields['q:2'] }, now), null);
  assert.equal(decodeSession('dev', { m: Buffer.from('{') }, now), null);
});
