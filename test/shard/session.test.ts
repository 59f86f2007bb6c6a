// Unit tests for a device's session on its shard (src/shard/session.ts): delivery now or into the
// queue, the overflow policy, the device's Receive Maximum [MQTT-3.3.4-9], packet identifiers
// [MQTT-2.2.1-3], the QoS 1 / QoS 2 acknowledgement flows [MQTT-4.3.2, MQTT-4.3.3], re-sending
// with DUP on reconnection [MQTT-4.4.0-1], message expiry [MQTT-3.3.2-5] and the hand-over of a
// session between shards.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Session, StoredMessage, type Outgoing, type SessionLimits, type SessionLink, type PendingState } from '../../src/shard/session';
import { mulberry32 } from '../helpers/prng';

// ---------------------------------------------------------------------------------------------
// Doubles

type Write = { kind: 'publish'; topic: string; payload: string; id: number; dup: boolean; qos: number; now: number }
  | { kind: 'pubrel'; id: number };

class Link implements SessionLink {
  writes: Write[] = [];
  /** Topics this device refuses as larger than its Maximum Packet Size. */
  readonly tooLarge = new Set<string>();

  constructor(readonly receiveMaximum = 65535, readonly version = 5) {}

  writePublish(out: Outgoing, id: number, dup: boolean, now: number): boolean {
    if (this.tooLarge.has(out.msg.topic)) return false;
    this.writes.push({ kind: 'publish', topic: out.msg.topic, payload: payloadOf(out.msg), id, dup, qos: out.qos, now });
    return true;
  }

  writePubrel(id: number): void {
    this.writes.push({ kind: 'pubrel', id });
  }

  take(): Write[] {
    const w = this.writes;
    this.writes = [];
    return w;
  }

  /** The PUBLISH writes taken out, as `topic#id` (dup marked with a trailing '*'). */
  published(): string[] {
    return this.take().map((w) => (w.kind === 'publish' ? `${w.topic}#${w.id}${w.dup ? '*' : ''}` : `PUBREL#${w.id}`));
  }
}

type DropReason = Parameters<SessionLimits['dropped']>[0];

class Limits implements SessionLimits {
  drops: DropReason[] = [];
  readonly block = false;
  constructor(readonly maxQueued = 1000, readonly dropOldest = true) {}
  dropped(reason: DropReason): void {
    this.drops.push(reason);
  }
}

function payloadOf(m: StoredMessage): string {
  return m.body.toString('utf8', m.payloadStart, m.payloadStart + m.payloadLen);
}

/** A message as a shard keeps it; `pad` bytes before it in its buffer, like a ring record. */
function message(topic: string, payload = `p:${topic}`, expiresAt = 0, props = Buffer.alloc(0), pad = 0): StoredMessage {
  const t = Buffer.from(topic);
  const p = Buffer.from(payload);
  const body = Buffer.concat([Buffer.alloc(pad, 0xee), t, props, p]);
  return new StoredMessage(body, pad, t.length, props.length, p.length, topic, expiresAt);
}

let nextOrigin = 1;
function out(topic: string, qos: number, extra: Partial<Outgoing> & { expiresAt?: number } = {}): Outgoing {
  return {
    msg: message(topic, undefined, extra.expiresAt ?? 0), qos, retain: extra.retain ?? false, subIds: extra.subIds ?? null,
    stage: 0, origin: extra.origin ?? nextOrigin++,
  };
}

const NOW = 1_700_000_000_000;

function online(receiveMaximum = 65535, limits = new Limits()): { s: Session; link: Link; limits: Limits } {
  const s = new Session('dev');
  const link = new Link(receiveMaximum);
  s.attach(link, 1, limits, NOW);
  return { s, link, limits };
}

// ---------------------------------------------------------------------------------------------
// deliver: QoS 0

test('QoS 0: written at once without packet id; dropped (and counted) while the device is away', () => {
  const { s, link, limits } = online();
  s.deliver(out('a', 0), limits, NOW);
  assert.deepEqual(link.take(), [{ kind: 'publish', topic: 'a', payload: 'p:a', id: 0, dup: false, qos: 0, now: NOW }]);
  assert.equal(s.inflight.size, 0, 'QoS 0 is never in flight');

  s.detach(NOW);
  s.deliver(out('b', 0), limits, NOW);
  assert.deepEqual(limits.drops, ['offline-qos0']);
  assert.equal(s.queued, 0, 'QoS 0 is not queued for an offline session');
  s.attach(link, 2, limits, NOW);
  assert.deepEqual(link.take(), [], 'nothing comes out later either');
});

test('QoS 0 larger than the device accepts: dropped and counted as too-large', () => {
  const { s, link, limits } = online();
  link.tooLarge.add('big');
  s.deliver(out('big', 0), limits, NOW);
  assert.deepEqual(limits.drops, ['too-large']);
  assert.deepEqual(link.take(), []);
});

// ---------------------------------------------------------------------------------------------
// deliver: QoS 1/2, the Receive Maximum window and the queue

test('QoS 1/2 online: sent at once, with distinct non-zero packet ids, and held in flight', () => {
  const { s, link, limits } = online();
  s.deliver(out('a', 1), limits, NOW);
  s.deliver(out('b', 2), limits, NOW);
  const w = link.take();
  assert.deepEqual(w.map((x) => x.kind === 'publish' && [x.topic, x.qos, x.dup]), [['a', 1, false], ['b', 2, false]]);
  const ids = w.map((x) => x.id);
  assert.ok(ids.every((id) => id >= 1 && id <= 65535), `ids ${ids}`);
  assert.notEqual(ids[0], ids[1]);
  assert.deepEqual([...s.inflight.keys()], ids);
  assert.deepEqual([...s.inflight.values()].map((o) => o.stage), [1, 1], 'stage 1: waiting for PUBACK / PUBREC');
  assert.equal(s.queued, 0);
});

test('Receive Maximum: no more unacknowledged QoS 1/2 deliveries than the device accepts; the rest waits in order', () => {
  const { s, link, limits } = online(2);
  for (const t of ['m1', 'm2', 'm3', 'm4', 'm5']) s.deliver(out(t, 1), limits, NOW);
  assert.deepEqual(link.published(), ['m1#1', 'm2#2']);
  assert.equal(s.inflight.size, 2);
  assert.equal(s.queued, 3);

  assert.equal(s.acked('puback', 1, 0), true);
  // The window has room again, but m3 is still queued: a new message must not overtake it.
  s.deliver(out('m6', 1), limits, NOW);
  assert.deepEqual(link.published(), [], 'nothing is sent past the queue');
  assert.equal(s.queued, 4);

  s.pump(limits, NOW);
  assert.deepEqual(link.published(), ['m3#3']);
  assert.equal(s.inflight.size, 2);
  s.acked('puback', 2, 0);
  s.acked('puback', 3, 0);
  s.pump(limits, NOW);
  assert.deepEqual(link.published(), ['m4#4', 'm5#5']);
  s.acked('puback', 4, 0);
  s.pump(limits, NOW);
  assert.deepEqual(link.published(), ['m6#6']);
  assert.equal(s.queued, 0);
  assert.deepEqual(limits.drops, []);
});

test('Receive Maximum: a QoS 2 delivery counts until PUBCOMP, not until PUBREC', () => {
  const { s, link, limits } = online(1);
  s.deliver(out('a', 2), limits, NOW);
  s.deliver(out('b', 2), limits, NOW);
  assert.deepEqual(link.published(), ['a#1']);
  assert.equal(s.acked('pubrec', 1, 0), true);
  s.pump(limits, NOW);
  assert.deepEqual(link.published(), ['PUBREL#1'], 'the window stays closed while the PUBREL is unanswered');
  assert.equal(s.acked('pubcomp', 1, 0), true);
  s.pump(limits, NOW);
  assert.deepEqual(link.published(), ['b#2']);
});

test('offline: QoS 1/2 queue up and go out in order when a connection takes the session', () => {
  const s = new Session('dev');
  const limits = new Limits();
  s.deliver(out('a', 1), limits, NOW);
  s.deliver(out('b', 0), limits, NOW);
  s.deliver(out('c', 2), limits, NOW);
  assert.equal(s.queued, 2);
  const link = new Link(10);
  s.attach(link, 7, limits, NOW + 5);
  assert.equal(s.lastConn, 7);
  assert.equal(s.link, link);
  const w = link.take();
  assert.deepEqual(w.map((x) => x.kind === 'publish' && [x.topic, x.id, x.dup, x.now]), [['a', 1, false, NOW + 5], ['c', 2, false, NOW + 5]]);
  assert.deepEqual(limits.drops, ['offline-qos0']);
});

test('detach: the session forgets its link and expires expiryMs later', () => {
  const { s, limits } = online();
  s.expiryMs = 30_000;
  s.detach(NOW + 1);
  assert.equal(s.link, null);
  assert.equal(s.expiresAt, NOW + 30_001);
  s.deliver(out('a', 1), limits, NOW);
  assert.equal(s.queued, 1, 'QoS 1 waits for the device');
});

// ---------------------------------------------------------------------------------------------
// Overflow

function overflow(dropOldest: boolean): { sent: string[]; drops: DropReason[] } {
  const s = new Session('dev');
  const limits = new Limits(3, dropOldest);
  for (const t of ['m1', 'm2', 'm3', 'm4', 'm5']) s.deliver(out(t, 1), limits, NOW);
  assert.equal(s.queued, 3, 'never more than maxQueued');
  const link = new Link();
  s.attach(link, 1, limits, NOW);
  return { sent: link.take().map((w) => (w.kind === 'publish' ? w.topic : '?')), drops: limits.drops };
}

test('overflow drop-oldest: a full queue loses its oldest message for the new one', () => {
  assert.deepEqual(overflow(true), { sent: ['m3', 'm4', 'm5'], drops: ['queue-full', 'queue-full'] });
});

test('overflow drop-new: a full queue refuses the new message', () => {
  assert.deepEqual(overflow(false), { sent: ['m1', 'm2', 'm3'], drops: ['queue-full', 'queue-full'] });
});

test('overflow while online: the limit applies to the queue behind a full window, not to what is in flight', () => {
  for (const dropOldest of [true, false]) {
    const { s, link, limits } = online(2, new Limits(2, dropOldest));
    for (const t of ['m1', 'm2', 'm3', 'm4', 'm5']) s.deliver(out(t, 2), limits, NOW);
    assert.deepEqual(link.published(), ['m1#1', 'm2#2']);
    assert.equal(s.queued, 2);
    assert.deepEqual(limits.drops, ['queue-full']);
    for (const id of [1, 2]) {
      s.acked('pubrec', id, 0);
      s.acked('pubcomp', id, 0);
    }
    link.take();
    s.pump(limits, NOW);
    assert.deepEqual(link.published(), dropOldest ? ['m4#3', 'm5#4'] : ['m3#3', 'm4#4'], dropOldest ? 'drop-oldest' : 'drop-new');
  }
});

test('a long queue drains in order (the queue compacts itself on the way)', () => {
  const s = new Session('dev');
  const limits = new Limits(10_000);
  const n = 5000;
  for (let i = 0; i < n; i++) s.deliver(out(`t/${i}`, 1), limits, NOW);
  const link = new Link(3);
  s.attach(link, 1, limits, NOW);
  const seen: string[] = [];
  let added = false;
  for (let guard = 0; guard < 2 * n && (s.queued > 0 || s.inflight.size > 0); guard++) {
    for (const w of link.take()) {
      assert.equal(w.kind, 'publish');
      if (w.kind !== 'publish') continue;
      seen.push(w.topic);
      assert.equal(s.acked('puback', w.id, 0), true);
    }
    // Interleave new arrivals while draining, as a live session sees them.
    if (!added && seen.length >= 2000) {
      s.deliver(out(`t/${n}`, 1), limits, NOW);
      added = true;
    }
    s.pump(limits, NOW);
  }
  for (const w of link.take()) if (w.kind === 'publish') seen.push(w.topic);
  assert.deepEqual(seen, Array.from({ length: n + 1 }, (_, i) => `t/${i}`));
  assert.deepEqual(limits.drops, []);
});

// ---------------------------------------------------------------------------------------------
// Packet identifiers

test('packet ids: an id still in flight is never handed out again', () => {
  const s = new Session('dev');
  const limits = new Limits();
  // Deliveries in flight from another shard hold ids 1, 2 and 4.
  const a = new Session('dev');
  const l0 = new Link();
  a.attach(l0, 1, limits, NOW);
  for (const t of ['x', 'y', 'z', 'w']) a.deliver(out(t, 1), limits, NOW);
  a.acked('puback', 3, 0);
  s.restore(a.takePending());
  const link = new Link();
  s.attach(link, 2, limits, NOW);
  assert.deepEqual(link.published(), ['x#1*', 'y#2*', 'w#4*']);
  for (const t of ['n1', 'n2', 'n3']) s.deliver(out(t, 1), limits, NOW);
  assert.deepEqual(link.published(), ['n1#3', 'n2#5', 'n3#6']);
});

test('packet ids: after 65535 they wrap to 1, skipping ids still in flight, and 0 is never used', () => {
  const { s, link, limits } = online(65535);
  for (let i = 0; i < 65535; i++) s.deliver(out('t', 1, { origin: i + 1 }), limits, NOW);
  const ids = link.take().map((w) => w.id);
  assert.equal(ids.length, 65535);
  assert.equal(new Set(ids).size, 65535, 'every id distinct');
  assert.equal(ids.reduce((a, b) => Math.min(a, b)), 1);
  assert.equal(ids.reduce((a, b) => Math.max(a, b)), 65535);

  s.deliver(out('next', 1), limits, NOW);
  assert.deepEqual(link.take(), [], 'the window (65535) is full');
  assert.equal(s.acked('puback', 3, 0), true);
  assert.equal(s.acked('puback', 65535, 0), true);
  s.pump(limits, NOW);
  s.deliver(out('after', 1), limits, NOW);
  assert.deepEqual(link.published(), ['next#3', 'after#65535'], 'ids 1 and 2 are in flight: 3 is the first free one');
});

// ---------------------------------------------------------------------------------------------
// Acknowledgements

test('QoS 1: PUBACK ends the delivery; a second PUBACK, or an unknown id, is refused', () => {
  const { s, link, limits } = online();
  s.deliver(out('a', 1), limits, NOW);
  const [{ id }] = link.take();
  assert.equal(s.acked('puback', id + 1, 0), false, 'unknown id');
  assert.equal(s.acked('puback', id, 0), true);
  assert.equal(s.inflight.size, 0);
  assert.equal(s.acked('puback', id, 0), false, 'already acknowledged');
});

test('QoS 1: PUBREC or PUBCOMP for it is the wrong acknowledgement and changes nothing', () => {
  const { s, link, limits } = online();
  s.deliver(out('a', 1), limits, NOW);
  const [{ id }] = link.take();
  assert.equal(s.acked('pubrec', id, 0), false);
  assert.equal(s.acked('pubcomp', id, 0), false);
  assert.deepEqual(link.take(), [], 'no PUBREL for a QoS 1 delivery');
  assert.equal(s.inflight.get(id)?.stage, 1);
  assert.equal(s.acked('puback', id, 0), true, 'the right one still works');
});

test('QoS 1: a PUBACK with a failure reason still ends the delivery', () => {
  const { s, link, limits } = online(1);
  s.deliver(out('a', 1), limits, NOW);
  s.deliver(out('b', 1), limits, NOW);
  link.take();
  assert.equal(s.acked('puback', 1, 0x87), true);
  s.pump(limits, NOW);
  assert.deepEqual(link.published(), ['b#2']);
});

test('QoS 2: PUBREC -> PUBREL (stage 2) -> PUBCOMP ends it; out-of-stage acknowledgements change nothing', () => {
  const { s, link, limits } = online();
  s.deliver(out('a', 2), limits, NOW);
  const [{ id }] = link.take();
  assert.equal(s.acked('pubcomp', id, 0), false, 'PUBCOMP before PUBREC');
  assert.equal(s.acked('puback', id, 0), false, 'PUBACK for QoS 2');
  assert.equal(s.inflight.get(id)?.stage, 1);

  assert.equal(s.acked('pubrec', id, 0), true);
  assert.deepEqual(link.take(), [{ kind: 'pubrel', id }]);
  assert.equal(s.inflight.get(id)?.stage, 2);

  assert.equal(s.acked('pubrec', id, 0), false, 'a second PUBREC does not restart the flow');
  assert.equal(s.acked('puback', id, 0), false);
  assert.deepEqual(link.take(), [], 'no second PUBREL');
  assert.equal(s.inflight.get(id)?.stage, 2);

  assert.equal(s.acked('pubcomp', id, 0), true);
  assert.equal(s.inflight.size, 0);
  assert.equal(s.acked('pubcomp', id, 0), false);
});

test('QoS 2: PUBREC with a failure reason (>= 0x80) ends the delivery without PUBREL and frees the window', () => {
  const { s, link, limits } = online(1);
  s.deliver(out('a', 2), limits, NOW);
  s.deliver(out('b', 2), limits, NOW);
  link.take();
  assert.equal(s.acked('pubrec', 1, 0x80), true);
  assert.equal(s.inflight.size, 0);
  assert.deepEqual(link.take(), [], 'no PUBREL after a failed PUBREC [MQTT-4.3.3]');
  assert.equal(s.acked('pubcomp', 1, 0), false);
  s.pump(limits, NOW);
  assert.deepEqual(link.published(), ['b#2']);
});

test('QoS 2: PUBREC with a success reason below 0x80 (0x10 No matching subscribers) goes on with PUBREL', () => {
  const { s, link, limits } = online();
  s.deliver(out('a', 2), limits, NOW);
  const [{ id }] = link.take();
  assert.equal(s.acked('pubrec', id, 0x10), true);
  assert.deepEqual(link.take(), [{ kind: 'pubrel', id }]);
});

// ---------------------------------------------------------------------------------------------
// attach: reconnection

test('attach: unacknowledged PUBLISHes go again with DUP and their ids, PUBRELs again for stage 2, in order, then the queue', () => {
  const { s, link, limits } = online(3);
  s.deliver(out('q1', 1), limits, NOW); // id 1, stays unacknowledged
  s.deliver(out('q2', 2), limits, NOW); // id 2, PUBREC'd -> stage 2
  s.deliver(out('q3', 2), limits, NOW); // id 3, unacknowledged
  s.deliver(out('later', 1), limits, NOW); // queued behind the window
  s.acked('pubrec', 2, 0);
  link.take();
  s.detach(NOW);
  s.deliver(out('offline', 2), limits, NOW);

  const next = new Link(4);
  s.attach(next, 9, limits, NOW + 1000);
  const w = next.take();
  assert.deepEqual(w.map((x) => (x.kind === 'publish' ? `${x.topic}#${x.id}${x.dup ? '*' : ''}` : `PUBREL#${x.id}`)),
    ['q1#1*', 'PUBREL#2', 'q3#3*', 'later#4'], 'the re-sent ones count against the window of 4');
  const resent = w.find((x) => x.kind === 'publish' && x.topic === 'q1');
  assert.ok(resent?.kind === 'publish' && resent.now === NOW + 1000 && resent.qos === 1);
  assert.equal(s.queued, 1, '"offline" waits for room');
  // The flows continue where they were.
  assert.equal(s.acked('pubcomp', 2, 0), true);
  assert.equal(s.acked('puback', 1, 0), true);
  assert.equal(s.acked('pubrec', 3, 0), true);
  s.pump(limits, NOW);
  assert.deepEqual(next.published(), ['PUBREL#3', 'offline#5']);
});

test('attach: a delivery in flight that is too large for the new connection is dropped from the session', () => {
  const { s, link, limits } = online();
  s.deliver(out('big', 1), limits, NOW);
  s.deliver(out('small', 1), limits, NOW);
  link.take();
  s.detach(NOW);
  const next = new Link();
  next.tooLarge.add('big');
  s.attach(next, 2, limits, NOW);
  assert.deepEqual(next.published(), ['small#2*']);
  assert.deepEqual([...s.inflight.keys()], [2]);
  assert.equal(s.acked('puback', 1, 0), false, 'id 1 is free again');
});

test('attach: a delivery dropped as too large on re-send is counted like any other too-large drop', () => {
  const { s, link, limits } = online();
  s.deliver(out('big', 1), limits, NOW);
  link.take();
  s.detach(NOW);
  const next = new Link();
  next.tooLarge.add('big');
  s.attach(next, 2, limits, NOW);
  assert.deepEqual(limits.drops, ['too-large']);
});

// ---------------------------------------------------------------------------------------------
// Message expiry and size at send time

test('expiry: checked when a message is sent, not when it is queued; expiresAt 0 never expires', () => {
  const s = new Session('dev');
  const limits = new Limits();
  s.deliver(out('gone', 1, { expiresAt: NOW + 1000 }), limits, NOW);
  s.deliver(out('edge', 1, { expiresAt: NOW + 1001 }), limits, NOW);
  s.deliver(out('forever', 2, { expiresAt: 0 }), limits, NOW);
  assert.equal(s.queued, 3);
  assert.deepEqual(limits.drops, [], 'queued while unexpired');
  const link = new Link(1);
  s.attach(link, 1, limits, NOW + 1000);
  assert.deepEqual(limits.drops, ['expired'], 'expiresAt <= now: expired');
  assert.deepEqual(link.published(), ['edge#1'], 'the expired one takes no room in the window');
  s.acked('puback', 1, 0);
  s.pump(limits, NOW + 10 ** 9);
  assert.deepEqual(link.published(), ['forever#2']);
});

test('expiry: an expired QoS 1/2 message is not sent even when the window is open', () => {
  const { s, link, limits } = online();
  s.deliver(out('old', 2, { expiresAt: NOW - 1 }), limits, NOW);
  assert.deepEqual(limits.drops, ['expired']);
  assert.deepEqual(link.take(), []);
  assert.equal(s.inflight.size, 0);
});

test('expiry: a delivery in flight is sent again on reconnection even after its expiry (onward delivery had started)', () => {
  const { s, link, limits } = online();
  s.deliver(out('a', 1, { expiresAt: NOW + 10 }), limits, NOW);
  link.take();
  s.detach(NOW);
  const next = new Link();
  s.attach(next, 2, limits, NOW + 60_000);
  assert.deepEqual(next.published(), ['a#1*']);
  assert.deepEqual(limits.drops, []);
});

test('too large at send: counted, not kept in flight, and the next queued message goes', () => {
  const s = new Session('dev');
  const limits = new Limits();
  for (const t of ['a', 'big', 'b']) s.deliver(out(t, 1), limits, NOW);
  const link = new Link(1);
  link.tooLarge.add('big');
  s.attach(link, 1, limits, NOW);
  assert.deepEqual(link.published(), ['a#1']);
  s.acked('puback', 1, 0);
  s.pump(limits, NOW);
  assert.deepEqual(link.take().map((w) => w.kind === 'publish' && w.topic), ['b'], 'big was refused without holding the window');
  assert.deepEqual(limits.drops, ['too-large']);
  assert.equal(s.inflight.size, 1, 'only b is in flight');
  assert.equal(s.queued, 0);
});

// ---------------------------------------------------------------------------------------------
// Moving a session between shards

test('StoredMessage.keep: a private copy of topic | properties | payload that outlives the source buffer', () => {
  const props = Buffer.from([0x03, 0, 1, 0x78]);
  const m = message('t/1', 'hello', NOW + 5, props, 7);
  const k = m.keep();
  m.body.fill(0);
  assert.equal(k.start, 0);
  assert.equal(k.body.length, 3 + 4 + 5);
  assert.equal(k.body.toString('utf8', 0, 3), 't/1');
  assert.deepEqual(k.body.subarray(k.propsStart, k.payloadStart), props);
  assert.equal(payloadOf(k), 'hello');
  assert.deepEqual([k.topic, k.expiresAt, k.topicLen, k.propsLen, k.payloadLen], ['t/1', NOW + 5, 3, 4, 5]);
});

test('takePending: in-flight deliveries with their ids and stages, then the queue with id 0; the session is left empty', () => {
  const { s, link, limits } = online(2);
  const props = Buffer.from([0x08, 0, 2, 0x72, 0x2f]);
  const m = message('r/1', 'one', NOW + 9000, props, 11);
  s.deliver({ msg: m, qos: 2, retain: true, subIds: [4, 9], stage: 0, origin: 2 ** 32 + 77 }, limits, NOW);
  s.deliver(out('r/2', 1, { origin: 5 }), limits, NOW);
  s.deliver(out('r/3', 1, { origin: 6 }), limits, NOW);
  s.acked('pubrec', 1, 0);
  link.take();

  const pending = s.takePending();
  assert.equal(s.inflight.size, 0);
  assert.equal(s.queued, 0);
  assert.deepEqual(pending.map((p) => [p.topic, p.id, p.stage, p.qos, p.origin]), [
    ['r/1', 1, 2, 2, 2 ** 32 + 77], ['r/2', 2, 1, 1, 5], ['r/3', 0, 0, 1, 6],
  ]);
  const [p] = pending;
  assert.deepEqual([p.retain, p.subIds, p.topicLen, p.propsLen, p.expiresAt], [true, [4, 9], 3, props.length, NOW + 9000]);
  assert.deepEqual(Buffer.from(p.body), Buffer.concat([Buffer.from('r/1'), props, Buffer.from('one')]));
  m.body.fill(0);
  assert.equal(Buffer.from(p.body).toString('utf8', 0, 3), 'r/1', 'the body is a copy');
  assert.equal(p.body.byteLength, p.body.buffer.byteLength, 'a buffer of its own: nothing else is cloned along');
  assert.deepEqual(s.takePending(), [], 'nothing twice');
});

test('takePending -> structured clone -> restore: the device gets the same deliveries, same ids, DUP and PUBREL', () => {
  const { s, link, limits } = online(2);
  const props = Buffer.from([0x03, 0, 3, 0x61, 0x2f, 0x62]);
  s.deliver({ msg: message('x', 'payload-x', 0, props, 3), qos: 2, retain: false, subIds: [3], stage: 0, origin: 1 }, limits, NOW);
  s.deliver(out('y', 2), limits, NOW);
  s.deliver(out('z', 1), limits, NOW);
  s.acked('pubrec', 1, 0);
  link.take();
  s.detach(NOW);
  const state: PendingState[] = structuredClone(s.takePending());

  const moved = new Session('dev');
  moved.restore(state);
  assert.equal(moved.inflight.size, 2);
  assert.equal(moved.queued, 1);
  const x = moved.inflight.get(1);
  assert.ok(x);
  assert.deepEqual([x.msg.topic, payloadOf(x.msg), x.qos, x.stage, x.subIds], ['x', 'payload-x', 2, 2, [3]]);
  assert.deepEqual(x.msg.body.subarray(x.msg.propsStart, x.msg.payloadStart), props);

  const next = new Link(3);
  moved.attach(next, 4, limits, NOW);
  assert.deepEqual(next.published(), ['PUBREL#1', 'y#2*', 'z#3']);
  assert.equal(moved.acked('pubcomp', 1, 0), true);
  assert.equal(moved.acked('pubrec', 2, 0), true);
});

test('restore: queued messages go behind the ones already queued here', () => {
  const old = new Session('dev');
  const limits = new Limits();
  old.deliver(out('old1', 1), limits, NOW);
  old.deliver(out('old2', 1), limits, NOW);
  const s = new Session('dev');
  s.deliver(out('here', 1), limits, NOW);
  s.restore(old.takePending());
  const link = new Link();
  s.attach(link, 1, limits, NOW);
  assert.deepEqual(link.published(), ['here#1', 'old1#2', 'old2#3']);
});

test('importing: QoS 1/2 deliveries wait, even for a connected device; finishImport sends the old shard\'s tail first', () => {
  const { s, link, limits } = online();
  s.importing = [];
  s.deliver(out('new1', 1, { origin: 101 }), limits, NOW);
  s.deliver(out('new2', 2, { origin: 102 }), limits, NOW);
  assert.deepEqual(link.take(), [], 'nothing overtakes the old shard\'s messages');
  assert.equal(s.queued, 0);

  const old = new Session('dev');
  old.deliver(out('old1', 1, { origin: 1 }), limits, NOW);
  old.deliver(out('old2', 1, { origin: 2 }), limits, NOW);
  s.finishImport(old.takePending(), limits, NOW);
  assert.equal(s.importing, null);
  assert.deepEqual(link.take().map((w) => w.kind === 'publish' && w.topic), ['old1', 'old2', 'new1', 'new2']);
  s.deliver(out('after', 1), limits, NOW);
  assert.deepEqual(link.take().map((w) => w.kind === 'publish' && w.topic), ['after'], 'normal delivery once imported');
});

test('finishImport: a message both shards received (same origin) is delivered once, in the order of the new shard', () => {
  const s = new Session('dev');
  const limits = new Limits();
  s.importing = [];
  // The old shard saw origins 1..4 of broker 0, the new one 3..6 (the overlap is 3 and 4).
  for (const o of [3, 4, 5, 6]) s.deliver(out(`m${o}`, 1, { origin: o }), limits, NOW);
  const old = new Session('dev');
  for (const o of [1, 2, 3, 4]) old.deliver(out(`m${o}`, 1, { origin: o }), limits, NOW);
  s.finishImport(old.takePending(), limits, NOW);
  const link = new Link();
  s.attach(link, 1, limits, NOW);
  assert.deepEqual(link.take().map((w) => w.kind === 'publish' && w.topic), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6']);
});

test('finishImport: origin 0 (unknown) is never taken for a duplicate; origins differ per broker', () => {
  const s = new Session('dev');
  const limits = new Limits();
  s.importing = [];
  s.deliver(out('new-unknown', 1, { origin: 0 }), limits, NOW);
  s.deliver(out('new-b1', 1, { origin: 2 ** 32 + 7 }), limits, NOW);
  const old = new Session('dev');
  old.deliver(out('old-unknown', 1, { origin: 0 }), limits, NOW);
  old.deliver(out('old-b0', 1, { origin: 7 }), limits, NOW);
  old.deliver(out('old-b1', 1, { origin: 2 ** 32 + 7 }), limits, NOW);
  s.finishImport(old.takePending(), limits, NOW);
  const link = new Link();
  s.attach(link, 1, limits, NOW);
  assert.deepEqual(link.take().map((w) => w.kind === 'publish' && w.topic), ['old-unknown', 'old-b0', 'new-unknown', 'new-b1']);
});

test('finishImport: the queue limit applies to what arrives', () => {
  const s = new Session('dev');
  const limits = new Limits(2, false);
  s.importing = [];
  s.deliver(out('n1', 1), limits, NOW);
  const old = new Session('dev');
  old.deliver(out('o1', 1), new Limits(), NOW);
  old.deliver(out('o2', 1), new Limits(), NOW);
  s.finishImport(old.takePending(), limits, NOW);
  assert.equal(s.queued, 2);
  assert.deepEqual(limits.drops, ['queue-full']);
  const link = new Link();
  s.attach(link, 1, limits, NOW);
  assert.deepEqual(link.take().map((w) => w.kind === 'publish' && w.topic), ['o1', 'o2']);
});

// ---------------------------------------------------------------------------------------------
// Randomised: the protocol invariants over long random runs

test('random runs: first sends in delivery order, window respected, ids unique, every message sent or dropped', () => {
  for (let seed = 1; seed <= 20; seed++) {
    const r = mulberry32(seed);
    const rm = 1 + Math.floor(r() * 5);
    const limits = new Limits(1 + Math.floor(r() * 8), r() < 0.5);
    const s = new Session('dev');
    let link: Link | null = null;
    let n = 0;
    const firstSent: number[] = [];
    const done = new Set<number>();
    let accepted = 0; // QoS 1/2 messages handed to deliver()
    const ctx = (): string => `seed ${seed}`;
    const drain = (): void => {
      if (link === null) return;
      for (const w of link.take()) {
        if (w.kind !== 'publish' || w.qos === 0) continue;
        const k = Number(w.topic);
        if (!w.dup) {
          assert.ok(!firstSent.includes(k), `${ctx()}: ${k} sent twice without DUP`);
          firstSent.push(k);
        } else {
          assert.ok(firstSent.includes(k), `${ctx()}: DUP for ${k} never sent`);
        }
      }
      const ids = [...s.inflight.keys()];
      assert.ok(ids.every((id) => id >= 1 && id <= 65535), ctx());
      assert.ok(s.inflight.size <= rm, `${ctx()}: ${s.inflight.size} in flight, receive maximum ${rm}`);
      assert.ok(s.queued <= limits.maxQueued, ctx());
    };
    for (let step = 0; step < 400; step++) {
      const x = r();
      if (x < 0.45) {
        const qos = Math.floor(r() * 3);
        if (qos > 0) accepted++;
        s.deliver({ msg: message(String(n++)), qos, retain: false, subIds: null, stage: 0, origin: n }, limits, NOW);
      } else if (x < 0.8) {
        // Acknowledgements come from a connection: only while there is one.
        const ids = [...s.inflight.keys()];
        if (link === null || ids.length === 0) continue;
        const id = ids[Math.floor(r() * ids.length)];
        const o = s.inflight.get(id)!;
        if (o.qos === 1) assert.equal(s.acked('puback', id, 0), true, ctx());
        else if (o.stage === 1) assert.equal(s.acked('pubrec', id, 0), true, ctx());
        else assert.equal(s.acked('pubcomp', id, 0), true, ctx());
        if (!s.inflight.has(id)) done.add(Number(o.msg.topic));
        s.pump(limits, NOW);
      } else if (x < 0.9) {
        if (link === null) {
          link = new Link(rm);
          s.attach(link, step, limits, NOW);
        } else {
          drain();
          s.detach(NOW);
          link = null;
        }
      } else {
        s.pump(limits, NOW);
      }
      drain();
    }
    // First sends follow delivery order.
    assert.deepEqual(firstSent, [...firstSent].sort((a, b) => a - b), `${ctx()}: out of order`);
    // Every QoS 1/2 message is accounted for: sent, still waiting, or dropped for a queue limit.
    const queueDrops = limits.drops.filter((d) => d === 'queue-full').length;
    assert.equal(firstSent.length + s.queued + queueDrops, accepted, ctx());
    for (const k of done) assert.ok(firstSent.includes(k), ctx());
  }
});
