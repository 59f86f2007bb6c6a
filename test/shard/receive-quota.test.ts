// Unit tests for MQTT 5 receive flow control on device publishes (src/shard/receive-quota.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReceiveQuota } from '../../src/shard/receive-quota';
import { PUBACK, PUBCOMP, PUBREC, PUBREL } from '../../src/protocol/constants';

test('the Receive Maximum is the number of packet ids not answered yet; one more is refused', () => {
  const q = new ReceiveQuota(3);
  assert.ok(q.take(1) && q.take(2) && q.take(3));
  assert.equal(q.take(4), false, 'a fourth unanswered PUBLISH');
  assert.equal(q.used, 3);
});

test('a re-sent PUBLISH (same packet id, not answered yet) takes no new slot', () => {
  const q = new ReceiveQuota(2);
  assert.ok(q.take(7) && q.take(8));
  assert.ok(q.take(8), 'the DUP of packet 8');
  assert.equal(q.used, 2);
});

test('PUBACK and PUBCOMP free a slot; a successful PUBREC and a PUBREL do not; a failed PUBREC does', () => {
  const q = new ReceiveQuota(4);
  for (const id of [1, 2, 3, 4]) assert.ok(q.take(id));
  q.answered(PUBREC, 2, 0);
  q.answered(PUBREL, 3, 0);
  assert.equal(q.used, 4, 'PUBREC 0x00 leaves the QoS 2 flow open until PUBCOMP');
  q.answered(PUBACK, 1, 0);
  q.answered(PUBCOMP, 2, 0);
  q.answered(PUBREC, 4, 0x87);
  assert.equal(q.used, 1);
  assert.ok(q.take(5) && q.take(6) && q.take(7));
  assert.equal(q.take(8), false);
});

test('an answer for a packet id that was never taken changes nothing', () => {
  const q = new ReceiveQuota(1);
  q.answered(PUBACK, 9, 0);
  assert.ok(q.take(1));
  assert.equal(q.take(2), false);
});
