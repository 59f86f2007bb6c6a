// Unit tests for the shard's table of publishes waiting for broker acknowledgements
// (src/shard/inflight.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InflightTable, type AckTarget } from '../../src/shard/inflight';

type Event = ['acked', number, number, number] | ['settled', number, number];

class Device implements AckTarget {
  events: Event[] = [];
  uplinkAcked(messageId: number, qos: number, reason: number): void {
    this.events.push(['acked', messageId, qos, reason]);
  }
  uplinkSettled(messageId: number, qos: number): void {
    this.events.push(['settled', messageId, qos]);
  }
  take(): Event[] {
    const e = this.events;
    this.events = [];
    return e;
  }
}

test('ack=all: the device is acknowledged once, after the last broker, then the slot settles', () => {
  const t = new InflightTable(3, 'all');
  const d = new Device();
  const slot = t.allocate(d, 42, 1);
  assert.equal(t.active, 1);
  t.ack(slot, 0, 0);
  t.ack(slot, 0, 1);
  assert.deepEqual(d.take(), [], 'nothing before the third broker answered');
  t.ack(slot, 0, 2);
  assert.deepEqual(d.take(), [['acked', 42, 1, 0], ['settled', 42, 1]]);
  assert.equal(t.active, 0);
  t.ack(slot, 0, 0);
  assert.deepEqual(d.take(), [], 'a further answer for a settled slot is ignored');
});

test('ack=any: the device is acknowledged after the first broker, settled after the last', () => {
  const t = new InflightTable(3, 'any');
  const d = new Device();
  const slot = t.allocate(d, 7, 2);
  t.ack(slot, 0, 0);
  assert.deepEqual(d.take(), [['acked', 7, 2, 0]]);
  t.ack(slot, 0, 1);
  assert.deepEqual(d.take(), [], 'acknowledged only once');
  assert.equal(t.active, 1, 'still waiting for the third broker');
  t.ack(slot, 0, 2);
  assert.deepEqual(d.take(), [['settled', 7, 2]]);
  assert.equal(t.active, 0);
});

test('ack=k: the device is acknowledged at the k-th broker that accepted, settled after the last', () => {
  const t = new InflightTable(3, 2);
  const d = new Device();
  const slot = t.allocate(d, 9, 1);
  t.ack(slot, 0, 2);
  assert.deepEqual(d.take(), [], 'one of two');
  t.ack(slot, 0, 2);
  assert.deepEqual(d.take(), [], 'a second answer from the same broker does not count twice');
  t.ack(slot, 0, 0);
  assert.deepEqual(d.take(), [['acked', 9, 1, 0]]);
  assert.equal(t.active, 1, 'still waiting for the stalled broker');
  t.ack(slot, 0, 1);
  assert.deepEqual(d.take(), [['settled', 9, 1]]);
});

test('ack=k: refusals do not count; fewer than k acceptances answer with the first refusal once all answered', () => {
  const t = new InflightTable(3, 2);
  const d = new Device();
  const a = t.allocate(d, 1, 1);
  t.ack(a, 0x87, 0);
  t.ack(a, 0, 1);
  assert.deepEqual(d.take(), [], 'one refused, one accepted: not yet two');
  t.ack(a, 0, 2);
  assert.deepEqual(d.take(), [['acked', 1, 1, 0], ['settled', 1, 1]], 'two accepted: success despite the refusal');
  const b = t.allocate(d, 2, 1);
  t.ack(b, 0x87, 0);
  t.ack(b, 0, 1);
  t.ack(b, 0x97, 2);
  assert.deepEqual(d.take(), [['acked', 2, 1, 0x87], ['settled', 2, 1]]);
});

test('ack=k: a publish going to fewer than k brokers waits for all of those (min(k, n))', () => {
  const t = new InflightTable(3, 3);
  const d = new Device();
  const slot = t.allocate(d, 5, 1, 0b101);
  t.ack(slot, 0, 0);
  assert.deepEqual(d.take(), []);
  t.ack(slot, 0, 2);
  assert.deepEqual(d.take(), [['acked', 5, 1, 0], ['settled', 5, 1]]);
});

test('a single broker: all and any behave the same', () => {
  for (const mode of ['all', 'any'] as const) {
    const t = new InflightTable(1, mode);
    const d = new Device();
    t.ack(t.allocate(d, 1, 1), 0, 0);
    assert.deepEqual(d.take(), [['acked', 1, 1, 0], ['settled', 1, 1]], mode);
  }
});

test('a slot is reused only after every broker answered', () => {
  const t = new InflightTable(2, 'any');
  const d = new Device();
  const a = t.allocate(d, 1, 1);
  t.ack(a, 0, 0); // device acknowledged (any), one broker still owes an answer
  const b = t.allocate(d, 2, 1);
  assert.notEqual(b, a, 'a half-answered slot is not handed out again');
  t.ack(a, 0, 1);
  const c = t.allocate(d, 3, 1);
  assert.equal(c, a, 'the settled slot is reused');
  // The late answers now belong to the right messages.
  d.take();
  t.ack(b, 0, 0);
  t.ack(b, 0, 1);
  t.ack(c, 0, 0);
  assert.deepEqual(d.take(), [['acked', 2, 1, 0], ['settled', 2, 1], ['acked', 3, 1, 0]]);
});

test('slots stay distinct while in use, across many allocations and random answer orders', () => {
  const brokers = 3;
  const t = new InflightTable(brokers, 'all', 8);
  const d = new Device();
  let seed = 99;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const live = new Map<number, { id: number; left: number }>();
  let nextId = 1;
  for (let step = 0; step < 20000; step++) {
    if (live.size === 0 || (rnd(3) === 0 && live.size < 500)) {
      const id = nextId++ & 0xffff || 1;
      const slot = t.allocate(d, id, 1);
      assert.ok(!live.has(slot), `slot ${slot} handed out twice`);
      live.set(slot, { id, left: brokers });
    } else {
      const slots = [...live.keys()];
      const slot = slots[rnd(slots.length)];
      const m = live.get(slot)!;
      t.ack(slot, 0, brokers - m.left);
      m.left--;
      const ev = d.take();
      if (m.left === 0) {
        assert.deepEqual(ev, [['acked', m.id, 1, 0], ['settled', m.id, 1]]);
        live.delete(slot);
      } else {
        assert.deepEqual(ev, []);
      }
    }
    assert.equal(t.active, live.size);
  }
});

test('the table grows past its initial size and keeps every pending message intact', () => {
  const t = new InflightTable(2, 'all', 4);
  const devices = [new Device(), new Device()];
  const slots: number[] = [];
  for (let i = 0; i < 50; i++) slots.push(t.allocate(devices[i % 2], 1000 + i, (i % 2) + 1));
  assert.equal(new Set(slots).size, 50);
  assert.equal(t.active, 50);
  // First answers for all, then second answers in reverse order.
  for (const s of slots) t.ack(s, 0, 0);
  assert.deepEqual(devices[0].take(), []);
  for (let i = slots.length - 1; i >= 0; i--) {
    t.ack(slots[i], i === 17 ? 0x87 : 0, 1);
    assert.deepEqual(devices[i % 2].take(), [['acked', 1000 + i, (i % 2) + 1, i === 17 ? 0x87 : 0], ['settled', 1000 + i, (i % 2) + 1]]);
  }
  assert.equal(t.active, 0);
});

test('reason code: with ack=all the first failure reaches the device', () => {
  const t = new InflightTable(3, 'all');
  const d = new Device();
  const s = t.allocate(d, 5, 1);
  t.ack(s, 0, 0);
  t.ack(s, 0x87, 1);
  t.ack(s, 0x97, 2);
  assert.deepEqual(d.take(), [['acked', 5, 1, 0x87], ['settled', 5, 1]]);
  const s2 = t.allocate(d, 6, 2);
  assert.equal(s2, s);
  t.ack(s2, 0, 0);
  t.ack(s2, 0, 1);
  t.ack(s2, 0, 2);
  assert.deepEqual(d.take(), [['acked', 6, 2, 0], ['settled', 6, 2]], 'a reused slot starts without the old reason');
});

test('reason code: with ack=any the first answer is passed on', () => {
  const t = new InflightTable(2, 'any');
  const d = new Device();
  const s = t.allocate(d, 9, 1);
  t.ack(s, 0, 0);
  t.ack(s, 0x80, 1);
  assert.deepEqual(d.take(), [['acked', 9, 1, 0], ['settled', 9, 1]]);
});

test('ack=any: a refusal by one broker does not answer the device while another may still take it', () => {
  // FANOUT_ACK=any: "acknowledged once any one broker took it". A broker that answers 0x87
  // (or the writer's 0x95 for a message too large for it) did not take it.
  const t = new InflightTable(2, 'any');
  const d = new Device();
  const s = t.allocate(d, 11, 1);
  t.ack(s, 0x87, 0);
  assert.deepEqual(d.take(), [], 'acknowledged with the failure of the first broker to answer');
  t.ack(s, 0, 1);
  assert.deepEqual(d.take(), [['acked', 11, 1, 0], ['settled', 11, 1]]);
  // When every broker refuses, the device learns it with the first reason.
  const s2 = t.allocate(d, 12, 1);
  t.ack(s2, 0x97, 0);
  t.ack(s2, 0x87, 1);
  assert.deepEqual(d.take(), [['acked', 12, 1, 0x97], ['settled', 12, 1]]);
});

test('answers for unknown slots are ignored', () => {
  const t = new InflightTable(2, 'all', 4);
  const d = new Device();
  t.ack(0, 0, 0);
  t.ack(3, 0, 0);
  t.ack(1 << 20, 0, 0);
  t.ack(0xffffffff, 0, 0);
  const s = t.allocate(d, 1, 1);
  t.ack(s + 1, 0, 0);
  assert.deepEqual(d.take(), []);
  assert.equal(t.active, 1);
});

test('a second answer from the same broker changes nothing; pendingOn lists what a broker still owes', () => {
  const t = new InflightTable(3, 'all');
  const d = new Device();
  const a = t.allocate(d, 1, 1);
  const b = t.allocate(d, 2, 1, 0b101); // routed to brokers 0 and 2 only
  t.ack(a, 0, 1);
  t.ack(a, 0, 1);
  t.ack(a, 0, 1);
  assert.deepEqual(d.take(), [], 'broker 1 answering three times is one answer');
  assert.deepEqual(t.pendingOn(0), [a, b]);
  assert.deepEqual(t.pendingOn(1), [], 'b does not wait for broker 1, a has its answer');
  assert.deepEqual(t.pendingOn(2), [a, b]);
  assert.equal(t.ownerWaitingOn(b, 1), null);
  assert.equal(t.ownerWaitingOn(b, 2), d);
  t.ack(b, 0, 1);
  assert.deepEqual(d.take(), [], 'an answer from a broker the message was not routed to is ignored');
  t.ack(b, 0, 0);
  t.ack(b, 0, 2);
  assert.deepEqual(d.take(), [['acked', 2, 1, 0], ['settled', 2, 1]]);
});

test('several devices share the table; each is called with its own messages', () => {
  const t = new InflightTable(2, 'all');
  const a = new Device();
  const b = new Device();
  const sa = t.allocate(a, 1, 1);
  const sb = t.allocate(b, 1, 2);
  t.ack(sb, 0, 0);
  t.ack(sa, 0, 0);
  t.ack(sb, 0, 1);
  assert.deepEqual(a.take(), []);
  assert.deepEqual(b.take(), [['acked', 1, 2, 0], ['settled', 1, 2]]);
  t.ack(sa, 0, 1);
  assert.deepEqual(a.take(), [['acked', 1, 1, 0], ['settled', 1, 1]]);
});

test('setBrokers: new slots wait on the brokers in service; a slot waiting on a retired one is answered by it alone', () => {
  const acked: number[] = [];
  const owner = { uplinkAcked: (id: number) => acked.push(id), uplinkSettled: () => {} };
  const t = new InflightTable(2, 'all');
  const before = t.allocate(owner, 1, 1);
  t.setBrokers(0b101);
  const after = t.allocate(owner, 2, 1);
  assert.deepEqual(t.pendingOn(1), [before]);
  assert.deepEqual(t.pendingOn(2), [after]);
  t.ack(before, 0, 0);
  t.ack(after, 0, 0);
  assert.deepEqual(acked, []);
  t.ack(before, 0, 1);
  t.ack(after, 0, 2);
  assert.deepEqual(acked, [1, 2]);
});
