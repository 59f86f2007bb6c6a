// Unit tests for a shard's subscriptions (src/shard/subscriptions.ts): the aggregation of its
// devices' filters into upstream filters per broker, the SUBACK codes, shared groups, repeated
// SUBSCRIBEs [MQTT-3.8.4-3] and No Local counting. The writers are played by the test on the
// other end of real MessageChannels.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageChannel } from 'node:worker_threads';
import { ShardSubscriptions, type Sub, type SubscriptionRequest } from '../../src/shard/subscriptions';
import { Session } from '../../src/shard/session';
import type { DownlinkRouting } from '../../src/shard/routing';
import type { ShardToWriter, SubAck, SubOp } from '../../src/broker/downlink';
import { fingerprint } from '../../src/shard/no-local';
import { End, sync } from '../helpers/channel';

// ---------------------------------------------------------------------------------------------
// Harness


const SHARD = 3;

type Route = (filter: string) => { upstream: string; qos: number }[];

/** Broker 0 serves every filter unchanged at QoS 2 (the transparent proxy); others nothing. */
const transparent: Route[] = [(f) => [{ upstream: f, qos: 2 }]];

function routing(routes: Route[]): DownlinkRouting {
  return {
    inFilters: (b, f) => (routes[b] ?? (() => []))(f),
    localTopics: () => {
      throw new Error('not used by the shard subscriptions');
    },
  };
}

class Rig {
  readonly subs: ShardSubscriptions;
  scheduled = 0;
  private readonly channels: MessageChannel[];
  private readonly shardSide: End[];
  private readonly writerSide: End[];

  constructor(routes: Route[] = transparent, brokers = routes.length) {
    this.channels = Array.from({ length: brokers }, () => new MessageChannel());
    this.subs = new ShardSubscriptions(SHARD, this.channels.map((c) => c.port1), routing(routes), () => this.scheduled++);
    // Added after the shard's own listeners, so a mark arrives after the shard handled what precedes it.
    this.shardSide = this.channels.map((c) => new End(c.port1));
    this.writerSide = this.channels.map((c) => new End(c.port2));
  }

  /** The ops of the last flush as they were sent (flush() strips the hold ids). */
  raw: SubOp[][] = [];
  /** Hold ids of the upstream filters held, by broker, group and filter. */
  private readonly live = new Map<string, number>();

  /**
   * Flushes and returns, per writer, the ops that reached it, without their hold ids; checks
   * on the way that a hold keeps one id from its first op to its release, never shared with
   * another, and that holdOf() knows exactly the live ones.
   */
  async flush(): Promise<SubOp[][]> {
    this.subs.flush();
    await Promise.all(this.shardSide.map((s, b) => sync(s, this.writerSide[b])));
    this.raw = this.writerSide.map((w) => {
      const msgs = w.take() as ShardToWriter[];
      assert.ok(msgs.length <= 1, 'at most one message per writer per flush');
      for (const m of msgs) {
        assert.equal(m.t, 'subs');
        assert.equal(m.shard, SHARD);
        assert.ok(m.ops.length > 0, 'no empty messages');
      }
      return msgs.flatMap((m) => m.ops);
    });
    this.raw.forEach((ops, b) => {
      for (const op of ops) {
        assert.ok(Number.isInteger(op.hold) && op.hold > 0 && op.hold <= 0x3fffffff, `hold id ${op.hold}`);
        const key = `${b}\u0000${op.group ?? ''}\u0000${op.filter}`;
        const known = this.live.get(key);
        if (op.qos >= 0) {
          if (known !== undefined) {
            assert.equal(op.hold, known, `${op.filter}: one id while held`);
          } else {
            assert.ok(![...this.live.values()].includes(op.hold), `${op.filter}: hold id ${op.hold} already in use`);
            this.live.set(key, op.hold);
          }
        } else {
          assert.equal(op.hold, known, `${op.filter}: released under its id`);
          this.live.delete(key);
        }
      }
    });
    for (const [key, id] of this.live) assert.equal(this.subs.holdOf(id)?.upstream, key.split('\u0000')[2], `holdOf(${id})`);
    return this.raw.map((ops) => ops.map(({ hold: _hold, ...rest }) => rest as SubOp));
  }

  /** Hold id of a live upstream filter (for broker `b`, and `group` if shared). */
  holdId(filter: string, group: string | null = null, b = 0): number {
    const id = this.live.get(`${b}\u0000${group ?? ''}\u0000${filter}`);
    assert.ok(id !== undefined, `no hold for ${filter}`);
    return id;
  }

  /** Writer `b` answers; resolves once the shard handled it. */
  async answer(b: number, acks: SubAck[]): Promise<void> {
    this.writerSide[b].port.postMessage({ t: 'subacks', broker: b, acks });
    await sync(this.writerSide[b], this.shardSide[b]);
  }

  close(): void {
    for (const c of this.channels) {
      c.port1.close();
      c.port2.close();
    }
  }
}

/** Runs `body` with a fresh rig, closing its ports however it ends. */
function withRig(body: (rig: Rig) => Promise<void>, routes?: Route[], brokers?: number): () => Promise<void> {
  return async () => {
    const rig = new Rig(routes, brokers);
    try {
      await body(rig);
    } finally {
      rig.close();
    }
  };
}

interface Answer {
  codes: number[] | null;
}

function subscribe(rig: Rig, session: Session, requests: (SubscriptionRequest | string)[], v5 = true, subId = 0): Answer {
  const a: Answer = { codes: null };
  const reqs = requests.map((r) => (typeof r === 'string' ? { topic: r, qos: 1 } : r));
  rig.subs.subscribe(session, v5, subId, reqs, (codes) => {
    assert.equal(a.codes, null, 'a SUBSCRIBE is answered once');
    a.codes = [...codes];
  });
  return a;
}

/** The subscriptions of this shard matching `topic`, as `clientId:key`. */
function matching(rig: Rig, topic: string): string[] {
  const out: string[] = [];
  rig.subs.trie.match(topic, (s: Sub) => out.push(`${s.session.clientId}:${s.key}`));
  return out.sort();
}

/** One op without its request id (checked separately), for comparisons. */
function plain(op: SubOp): SubOp {
  return { ...op, req: op.req === 0 ? 0 : -1 };
}

// ---------------------------------------------------------------------------------------------
// Aggregation and answers

test('first holder: one op (with a retained request) to the writer, and the SUBACK waits for its answer', withRig(async (rig) => {
  const d = new Session('d');
  const a = subscribe(rig, d, [{ topic: 'a/+', qos: 1 }]);
  assert.equal(a.codes, null, 'not answered before the writer');
  assert.ok(rig.scheduled > 0, 'a flush was scheduled');
  const [ops] = await rig.flush();
  assert.equal(ops.length, 1);
  assert.deepEqual(plain(ops[0]), { filter: 'a/+', qos: 1, req: -1 });
  assert.ok(ops[0].req > 0);
  assert.equal(a.codes, null, 'still waiting');
  const sub = rig.subs.requestOf(ops[0].req);
  assert.equal(sub?.session, d, 'the request names the subscription');
  assert.deepEqual(matching(rig, 'a/x'), ['d:a/+'], 'matching starts at once (messages may come before the SUBACK)');
  assert.equal(rig.subs.size, 1);

  await rig.answer(0, [{ filter: 'a/+', qos: 1, granted: 1 }]);
  assert.deepEqual(a.codes, [1]);
}));

test('a second holder at the same or lower QoS without retained request: answered at once, nothing asked', withRig(async (rig) => {
  const a = subscribe(rig, new Session('a'), [{ topic: 'x', qos: 2 }]);
  await rig.flush();
  await rig.answer(0, [{ filter: 'x', qos: 2, granted: 1 }]); // the broker downgrades
  assert.deepEqual(a.codes, [1]);

  const b = subscribe(rig, new Session('b'), [{ topic: 'x', qos: 2, rh: 2 }]);
  assert.deepEqual(b.codes, [1], 'what the broker granted, at once');
  const c = subscribe(rig, new Session('c'), [{ topic: 'x', qos: 0, rh: 2 }]);
  assert.deepEqual(c.codes, [0], 'never more than requested');
  assert.deepEqual(await rig.flush(), [[]], 'the broker is not asked again');
  assert.deepEqual(matching(rig, 'x'), ['a:x', 'b:x', 'c:x']);
}));

test('retained messages: a new subscription asks for them again (rh 0, rh 1); rh 2 and a repeated rh 1 do not', withRig(async (rig) => {
  const d = new Session('d');
  subscribe(rig, d, [{ topic: 'x', qos: 1 }]);
  await rig.flush();
  await rig.answer(0, [{ filter: 'x', qos: 1, granted: 1 }]);

  const e = subscribe(rig, new Session('e'), [{ topic: 'x', qos: 1 }]); // rh 0 by default
  const f = subscribe(rig, new Session('f'), [{ topic: 'x', qos: 1, rh: 1 }]);
  const [ops] = await rig.flush();
  assert.deepEqual(ops.map(plain), [{ filter: 'x', qos: 1, req: -1 }, { filter: 'x', qos: 1, req: -1 }]);
  assert.notEqual(ops[0].req, ops[1].req, 'one request per subscription');
  assert.equal(rig.subs.requestOf(ops[0].req)?.session.clientId, 'e');
  assert.equal(rig.subs.requestOf(ops[1].req)?.session.clientId, 'f');
  assert.equal(e.codes, null, 'waits for the writer, which re-subscribes upstream');
  await rig.answer(0, [{ filter: 'x', qos: 1, granted: 1 }]);
  assert.deepEqual([e.codes, f.codes], [[1], [1]]);

  const again = subscribe(rig, d, [{ topic: 'x', qos: 1, rh: 1 }]);
  const g = subscribe(rig, new Session('g'), [{ topic: 'x', qos: 1, rh: 2 }]);
  assert.deepEqual([again.codes, g.codes], [[1], [1]]);
  assert.deepEqual(await rig.flush(), [[]]);
}));

test('higher QoS: the filter is asked again at that QoS; each waiter is answered by the answer for its QoS', withRig(async (rig) => {
  const a = subscribe(rig, new Session('a'), [{ topic: 't/#', qos: 0 }]);
  const [first] = await rig.flush();
  assert.deepEqual(first.map(plain), [{ filter: 't/#', qos: 0, req: -1 }]);
  const b = subscribe(rig, new Session('b'), [{ topic: 't/#', qos: 2, rh: 2 }]);
  const [second] = await rig.flush();
  assert.deepEqual(second, [{ filter: 't/#', qos: 2, req: 0 }], 'asked at QoS 2 even without retained request');

  await rig.answer(0, [{ filter: 't/#', qos: 0, granted: 0 }]);
  assert.deepEqual(a.codes, [0]);
  assert.equal(b.codes, null, 'an answer for QoS 0 does not answer a QoS 2 request');
  await rig.answer(0, [{ filter: 't/#', qos: 2, granted: 2 }]);
  assert.deepEqual(b.codes, [2]);

  const c = subscribe(rig, new Session('c'), [{ topic: 't/#', qos: 1, rh: 2 }]);
  assert.deepEqual(c.codes, [1], 'lower than what is held: answered at once');
  assert.deepEqual(await rig.flush(), [[]]);
}));

test('the last holder gone: one release op, and none before', withRig(async (rig) => {
  const a = new Session('a');
  const b = new Session('b');
  subscribe(rig, a, ['x']);
  await rig.flush();
  await rig.answer(0, [{ filter: 'x', qos: 1, granted: 1 }]);
  subscribe(rig, b, [{ topic: 'x', qos: 1, rh: 2 }]);

  const before = rig.scheduled;
  assert.equal(rig.subs.unsubscribe(a, 'x'), true);
  assert.ok(rig.scheduled > before);
  assert.deepEqual(await rig.flush(), [[]], 'b still holds x');
  assert.deepEqual(matching(rig, 'x'), ['b:x']);
  assert.equal(rig.subs.unsubscribe(a, 'x'), false, 'a no longer has it');
  assert.equal(rig.subs.unsubscribe(b, 'nope'), false);

  assert.equal(rig.subs.unsubscribe(b, 'x'), true);
  assert.deepEqual(await rig.flush(), [[{ filter: 'x', qos: -1, req: 0 }]]);
  assert.deepEqual(matching(rig, 'x'), []);
  assert.equal(rig.subs.size, 0);
  assert.equal(b.subs.size, 0);
}));

test('flush: this turn\'s ops in one message per writer, in order; nothing at all when nothing changed', withRig(async (rig) => {
  assert.deepEqual(await rig.flush(), [[]]);
  const d = new Session('d');
  subscribe(rig, d, [{ topic: 'a', qos: 0 }, { topic: 'b', qos: 2 }]);
  rig.subs.unsubscribe(d, 'a');
  const [ops] = await rig.flush();
  assert.deepEqual(ops.map(plain), [{ filter: 'a', qos: 0, req: -1 }, { filter: 'b', qos: 2, req: -1 }, { filter: 'a', qos: -1, req: 0 }]);
  assert.deepEqual(await rig.flush(), [[]], 'sent once');
}));

test('invalid filters: 0x80 for MQTT 3.1.1 and 0x8F for MQTT 5, per filter, and nothing is asked for them', withRig(async (rig) => {
  const bad = ['a/#/b', 'a+', '', 'x#', '$share/g', '$share//x', '$share/g+/x', 'a\u0000b'];
  for (const v5 of [false, true]) {
    const d = new Session(v5 ? 'v5' : 'v4');
    const ans = subscribe(rig, d, bad.map((topic) => ({ topic, qos: 1 })), v5);
    assert.deepEqual(ans.codes, bad.map(() => (v5 ? 0x8f : 0x80)), v5 ? 'MQTT 5' : 'MQTT 3.1.1');
    assert.equal(d.subs.size, 0);
  }
  assert.deepEqual(await rig.flush(), [[]]);
  assert.equal(rig.subs.size, 0);

  // Mixed with valid ones: the codes keep the order of the filters.
  const d = new Session('mixed');
  const ans = subscribe(rig, d, [{ topic: 'ok/1', qos: 2 }, { topic: 'a/#/b', qos: 1 }, { topic: 'ok/+', qos: 0 }], false);
  assert.equal(ans.codes, null);
  const [ops] = await rig.flush();
  assert.deepEqual(ops.map((o) => o.filter), ['ok/1', 'ok/+']);
  await rig.answer(0, [{ filter: 'ok/1', qos: 2, granted: 2 }, { filter: 'ok/+', qos: 0, granted: 0 }]);
  assert.deepEqual(ans.codes, [2, 0x80, 0]);
}));

test('granted QoS: the lowest of the requested, the route\'s and the broker\'s', withRig(async (rig) => {
  const a = subscribe(rig, new Session('a'), [{ topic: 'r/x', qos: 2 }]);
  const [ops] = await rig.flush();
  assert.deepEqual(ops.map(plain), [{ filter: 'up/r/x', qos: 1, req: -1 }], 'the route caps the upstream QoS at 1');
  await rig.answer(0, [{ filter: 'up/r/x', qos: 1, granted: 1 }]);
  assert.deepEqual(a.codes, [1]);
  const b = subscribe(rig, new Session('b'), [{ topic: 'r/y', qos: 2 }]);
  await rig.flush();
  await rig.answer(0, [{ filter: 'up/r/y', qos: 1, granted: 0 }]);
  assert.deepEqual(b.codes, [0], 'the broker granted less');
}, [(f) => [{ upstream: `up/${f}`, qos: 1 }]]));

test('several brokers: one op per writer; answered when every writer answered, with the best grant', withRig(async (rig) => {
  const d = new Session('d');
  const a = subscribe(rig, d, [{ topic: 'a/#', qos: 2 }]);
  const ops = await rig.flush();
  assert.deepEqual(ops.map((o) => o.map(plain)), [
    [{ filter: 'a/#', qos: 2, req: -1 }],
    [{ filter: 'b1/a/#', qos: 1, req: -1 }, { filter: 'b1/mirror/a/#', qos: 1, req: -1 }],
  ]);
  assert.equal(new Set([...ops[0], ...ops[1]].map((o) => o.req)).size, 1, 'one retained request for the subscription');
  await rig.answer(1, [{ filter: 'b1/a/#', qos: 1, granted: 1 }]);
  await rig.answer(0, [{ filter: 'a/#', qos: 2, granted: 0 }]);
  assert.equal(a.codes, null, 'b1/mirror/a/# is not answered yet');
  await rig.answer(1, [{ filter: 'b1/mirror/a/#', qos: 1, granted: 0x87 }]);
  assert.deepEqual(a.codes, [1], 'the best of 0, 1 and a refusal');
  assert.deepEqual(d.subs.get('a/#')?.refs, [
    { broker: 0, upstream: 'a/#', qos: 2 }, { broker: 1, upstream: 'b1/a/#', qos: 1 }, { broker: 1, upstream: 'b1/mirror/a/#', qos: 1 },
  ]);

  rig.subs.unsubscribe(d, 'a/#');
  assert.deepEqual(await rig.flush(), [
    [{ filter: 'a/#', qos: -1, req: 0 }],
    [{ filter: 'b1/a/#', qos: -1, req: 0 }, { filter: 'b1/mirror/a/#', qos: -1, req: 0 }],
  ]);
}, [(f) => [{ upstream: f, qos: 2 }], (f) => [{ upstream: `b1/${f}`, qos: 1 }, { upstream: `b1/mirror/${f}`, qos: 1 }]]));

test('several brokers: refused by every one of them is a failure (0x80 for MQTT 3.1.1)', withRig(async (rig) => {
  const a = subscribe(rig, new Session('d'), [{ topic: 'z', qos: 1 }], false);
  await rig.flush();
  await rig.answer(0, [{ filter: 'z', qos: 1, granted: 0x80 }]);
  assert.equal(a.codes, null);
  await rig.answer(1, [{ filter: 'z', qos: 1, granted: 0x87 }]);
  assert.deepEqual(a.codes, [0x80], 'MQTT 3.1.1 knows only 0x80 as failure');
}, [(f) => [{ upstream: f, qos: 2 }], (f) => [{ upstream: f, qos: 2 }]]));

test('no broker serves the filter: granted as requested at once, nothing asked, and it still matches', withRig(async (rig) => {
  const d = new Session('d');
  const a = subscribe(rig, d, [{ topic: 'local/only', qos: 2 }, { topic: 'served', qos: 1 }]);
  assert.equal(a.codes, null, 'the served filter still waits');
  const ops = await rig.flush();
  assert.deepEqual(ops.map((o) => o.map((x) => x.filter)), [['served'], []]);
  await rig.answer(0, [{ filter: 'served', qos: 1, granted: 1 }]);
  assert.deepEqual(a.codes, [2, 1]);
  assert.deepEqual(matching(rig, 'local/only'), ['d:local/only']);
  assert.deepEqual(d.subs.get('local/only')?.refs, []);
  rig.subs.unsubscribe(d, 'local/only');
  assert.deepEqual(await rig.flush(), [[], []], 'nothing to release');
}, [(f) => (f === 'served' ? [{ upstream: f, qos: 2 }] : []), () => []]));

test('a refusal reaches the waiting device; the filter stays held until released', withRig(async (rig) => {
  const d = new Session('d');
  const a = subscribe(rig, d, [{ topic: 'secret', qos: 1 }], false);
  await rig.flush();
  await rig.answer(0, [{ filter: 'secret', qos: 1, granted: 0x87 }]);
  assert.deepEqual(a.codes, [0x80]);
  // A later device with a retained request makes the writer try again.
  const b = subscribe(rig, new Session('e'), [{ topic: 'secret', qos: 1 }], false);
  const [ops] = await rig.flush();
  assert.deepEqual(ops.map(plain), [{ filter: 'secret', qos: 1, req: -1 }]);
  await rig.answer(0, [{ filter: 'secret', qos: 1, granted: 1 }]);
  assert.deepEqual(b.codes, [1]);
}));

for (const [what, topic, rh] of [['a shared subscription', '$share/g/secret', 0], ['Retain Handling 2', 'secret', 2]] as const) {
  test(`a refusal, then ${what} to the same filter: the new SUBSCRIBE is still answered`, withRig(async (rig) => {
    subscribe(rig, new Session('d'), [{ topic, qos: 1 }]);
    await rig.flush();
    const group = topic.startsWith('$share/') ? 'g' : undefined;
    await rig.answer(0, [{ filter: 'secret', group, qos: 1, granted: 0x87 }]);
    const b = subscribe(rig, new Session('e'), [{ topic, qos: 1, rh }]);
    // Either answered at once, or the writer is asked (and then answers).
    const [ops] = await rig.flush();
    if (ops.length > 0) await rig.answer(0, ops.map((o) => ({ filter: o.filter, group: o.group, qos: o.qos, granted: 1 })));
    assert.notEqual(b.codes, null, 'the device never gets its SUBACK');
  }));
}

test('released while waiting: the SUBSCRIBE is answered with a failure, and a late answer is ignored', withRig(async (rig) => {
  const d = new Session('d');
  const a = subscribe(rig, d, [{ topic: 'x', qos: 1 }]);
  await rig.flush();
  rig.subs.unsubscribe(d, 'x');
  assert.deepEqual(a.codes, [0x80]);
  assert.deepEqual(await rig.flush(), [[{ filter: 'x', qos: -1, req: 0 }]]);
  await rig.answer(0, [{ filter: 'x', qos: 1, granted: 1 }]); // late: must not throw or answer twice
  const b = subscribe(rig, new Session('e'), [{ topic: 'x', qos: 1, rh: 2 }]);
  const [ops] = await rig.flush();
  assert.deepEqual(ops, [{ filter: 'x', qos: 1, req: 0 }], 'held anew: asked again');
  assert.equal(b.codes, null);
}));

test('dropSession: every filter of the session is released', withRig(async (rig) => {
  const d = new Session('d');
  const other = new Session('o');
  subscribe(rig, d, ['a', 'b', 'c']);
  subscribe(rig, other, [{ topic: 'b', qos: 1 }]);
  await rig.flush();
  await rig.answer(0, ['a', 'b', 'c'].map((filter) => ({ filter, qos: 1, granted: 1 })));
  rig.subs.dropSession(d);
  assert.equal(d.subs.size, 0);
  const [ops] = await rig.flush();
  assert.deepEqual(ops.sort((x, y) => x.filter.localeCompare(y.filter)), [{ filter: 'a', qos: -1, req: 0 }, { filter: 'c', qos: -1, req: 0 }]);
  assert.deepEqual(matching(rig, 'b'), ['o:b']);
  assert.equal(rig.subs.size, 1);
}));

// ---------------------------------------------------------------------------------------------
// Shared groups

test('shared groups: one op per group and filter, tagged with the group; no retained messages', withRig(async (rig) => {
  const [a, b, c, p] = ['a', 'b', 'c', 'p'].map((id) => new Session(id));
  const ansA = subscribe(rig, a, [{ topic: '$share/g/s/+', qos: 1 }]);
  const ansB = subscribe(rig, b, [{ topic: '$share/g/s/+', qos: 1 }]);
  const ansC = subscribe(rig, c, [{ topic: '$share/h/s/+', qos: 2 }]);
  const ansP = subscribe(rig, p, [{ topic: 's/+', qos: 0 }]);
  const [ops] = await rig.flush();
  assert.equal(ops.length, 3, 'one for g, one for h, one plain');
  assert.deepEqual(ops.map(plain), [
    { filter: 's/+', qos: 1, req: 0, group: 'g' }, { filter: 's/+', qos: 2, req: 0, group: 'h' }, { filter: 's/+', qos: 0, req: -1 },
  ], 'the plain one asks for retained messages, the groups do not');
  const g = rig.holdId('s/+', 'g');
  const h = rig.holdId('s/+', 'h');
  const plainHold = rig.holdId('s/+');
  assert.equal(new Set([g, h, plainHold]).size, 3, 'a hold id each');
  assert.equal(rig.subs.holdOf(g)?.group, 'g');
  assert.equal(rig.subs.holdOf(h)?.group, 'h');
  assert.equal(rig.subs.holdOf(plainHold)?.group, null);
  const members = (id: number): string[] => [...(rig.subs.holdOf(id)?.subs ?? [])].map((x) => x.session.clientId).sort();
  assert.deepEqual([members(g), members(h), members(plainHold)], [['a', 'b'], ['c'], ['p']]);

  await rig.answer(0, [{ filter: 's/+', group: 'g', qos: 1, granted: 1 }, { filter: 's/+', group: 'h', qos: 2, granted: 2 }]);
  assert.deepEqual([ansA.codes, ansB.codes, ansC.codes, ansP.codes], [[1], [1], [2], null], 'the plain one has its own answer');
  await rig.answer(0, [{ filter: 's/+', qos: 0, granted: 0 }]);
  assert.deepEqual(ansP.codes, [0]);

  const subA = a.subs.get('$share/g/s/+');
  assert.deepEqual([subA?.filter, subA?.group, subA?.key], ['s/+', 'g', '$share/g/s/+']);
  assert.deepEqual(matching(rig, 's/1'), ['a:$share/g/s/+', 'b:$share/g/s/+', 'c:$share/h/s/+', 'p:s/+']);

  // A group is released when its last member leaves, independently of the plain holders.
  rig.subs.unsubscribe(a, '$share/g/s/+');
  assert.deepEqual(await rig.flush(), [[]]);
  assert.deepEqual(members(g), ['b']);
  rig.subs.unsubscribe(b, '$share/g/s/+');
  assert.deepEqual(await rig.flush(), [[{ filter: 's/+', qos: -1, req: 0, group: 'g' }]]);
  assert.equal(rig.subs.holdOf(g), undefined);
  assert.equal(rig.subs.holdOf(h)?.group, 'h');

  // The group formed again is a new hold.
  subscribe(rig, a, [{ topic: '$share/g/s/+', qos: 1 }]);
  await rig.flush();
  const again = rig.holdId('s/+', 'g');
  assert.ok(![g, h, plainHold].includes(again));
  assert.deepEqual(members(again), ['a']);
}));

test('holds: the device subscriptions an upstream filter serves, kept up to date', withRig(async (rig) => {
  const [d, e] = [new Session('d'), new Session('e')];
  subscribe(rig, d, [{ topic: 'm/#', qos: 1 }, { topic: 'n', qos: 0 }]);
  subscribe(rig, e, [{ topic: 'm/#', qos: 2 }]);
  await rig.flush();
  const m = rig.holdId('m/#');
  const n = rig.holdId('n');
  assert.notEqual(m, n);
  const subsOf = (id: number): string[] => [...(rig.subs.holdOf(id)?.subs ?? [])].map((x) => `${x.session.clientId}:${x.qos}`).sort();
  assert.deepEqual(subsOf(m), ['d:1', 'e:2']);
  assert.deepEqual(subsOf(n), ['d:0']);
  assert.equal(rig.subs.holdOf(m)?.upstream, 'm/#');

  subscribe(rig, d, [{ topic: 'm/#', qos: 0, rh: 2 }]); // replaces d's subscription
  assert.deepEqual(subsOf(m), ['d:0', 'e:2'], 'the replaced subscription is no longer served');
  rig.subs.unsubscribe(e, 'm/#');
  assert.deepEqual(subsOf(m), ['d:0']);
  rig.subs.dropSession(d);
  await rig.flush();
  assert.equal(rig.subs.holdOf(m), undefined);
  assert.equal(rig.subs.holdOf(n), undefined);
}));

// ---------------------------------------------------------------------------------------------
// Repeated SUBSCRIBE

test('a repeated SUBSCRIBE replaces the subscription without releasing its upstream filter', withRig(async (rig) => {
  const d = new Session('d');
  const first = subscribe(rig, d, [{ topic: 'x/#', qos: 1 }], true, 5);
  const [[op1]] = await rig.flush();
  await rig.answer(0, [{ filter: 'x/#', qos: 1, granted: 1 }]);
  assert.deepEqual(first.codes, [1]);

  const second = subscribe(rig, d, [{ topic: 'x/#', qos: 0, rap: true }], true, 9);
  const [ops] = await rig.flush();
  assert.deepEqual(ops.map(plain), [{ filter: 'x/#', qos: 1, req: -1 }], 'retained messages asked for again; no release');
  assert.equal(d.subs.size, 1);
  const sub = d.subs.get('x/#');
  assert.deepEqual([sub?.qos, sub?.subId, sub?.retainAsPublished], [0, 9, true]);
  assert.deepEqual(matching(rig, 'x/1'), ['d:x/#'], 'one subscription, not two');
  assert.equal(rig.subs.size, 1);
  assert.equal(rig.subs.requestOf(op1.req), null, 'the replaced subscription\'s request is void');
  assert.equal(rig.subs.requestOf(ops[0].req), sub);
  await rig.answer(0, [{ filter: 'x/#', qos: 1, granted: 1 }]);
  assert.deepEqual(second.codes, [0]);

  // One release is enough: the replaced subscription left no count behind.
  rig.subs.unsubscribe(d, 'x/#');
  assert.deepEqual(await rig.flush(), [[{ filter: 'x/#', qos: -1, req: 0 }]]);
}));

test('a repeated SUBSCRIBE at a higher QoS asks for it without releasing, and one SUBSCRIBE may repeat a filter', withRig(async (rig) => {
  const d = new Session('d');
  subscribe(rig, d, [{ topic: 'y', qos: 0, rh: 2 }]);
  const [first] = await rig.flush();
  assert.deepEqual(first, [{ filter: 'y', qos: 0, req: 0 }]);
  await rig.answer(0, [{ filter: 'y', qos: 0, granted: 0 }]);
  const up = subscribe(rig, d, [{ topic: 'y', qos: 2, rh: 2 }]);
  assert.deepEqual(await rig.flush(), [[{ filter: 'y', qos: 2, req: 0 }]]);
  await rig.answer(0, [{ filter: 'y', qos: 2, granted: 2 }]);
  assert.deepEqual(up.codes, [2]);

  const twice = subscribe(rig, d, [{ topic: 'z', qos: 1, rh: 2 }, { topic: 'z', qos: 2, rh: 2 }]);
  const [ops] = await rig.flush();
  assert.ok(ops.every((o) => o.filter === 'z' && o.qos >= 0), 'no release of z in between');
  await rig.answer(0, [{ filter: 'z', qos: 2, granted: 2 }]);
  assert.deepEqual(twice.codes, [1, 2]);
  assert.equal(d.subs.get('z')?.qos, 2, 'the later one wins');
  rig.subs.unsubscribe(d, 'z');
  rig.subs.unsubscribe(d, 'y');
  assert.deepEqual(await rig.flush(), [[{ filter: 'z', qos: -1, req: 0 }, { filter: 'y', qos: -1, req: 0 }]]);
}));

// ---------------------------------------------------------------------------------------------
// No Local and retained requests

test('No Local: counted per subscription; the publish memory exists while one is held', withRig(async (rig) => {
  const d = new Session('d');
  subscribe(rig, d, [{ topic: 'a', qos: 0, nl: true }]);
  const own = d.own;
  assert.ok(own !== null);
  assert.equal(d.noLocalSubs, 1);
  subscribe(rig, d, [{ topic: 'b', qos: 0, nl: true }, { topic: 'c', qos: 0 }]);
  assert.equal(d.noLocalSubs, 2);
  assert.equal(d.own, own, 'one memory per session');
  assert.equal(d.subs.get('b')?.noLocal, true);
  assert.equal(d.subs.get('c')?.noLocal, false);
  rig.subs.unsubscribe(d, 'a');
  assert.equal(d.own, own);
  rig.subs.unsubscribe(d, 'c');
  assert.equal(d.noLocalSubs, 1);
  rig.subs.unsubscribe(d, 'b');
  assert.equal(d.noLocalSubs, 0);
  assert.equal(d.own, null, 'no memory without No Local subscriptions');

  // Replacing a subscription changes the count by its No Local flag.
  subscribe(rig, d, [{ topic: 'e', qos: 0 }]);
  assert.equal(d.own, null);
  subscribe(rig, d, [{ topic: 'e', qos: 0, nl: true }]);
  assert.equal(d.noLocalSubs, 1);
  assert.ok(d.own !== null);
  subscribe(rig, d, [{ topic: 'e', qos: 0 }]);
  assert.equal(d.noLocalSubs, 0);
  assert.equal(d.own, null);

  subscribe(rig, d, [{ topic: 'f', qos: 0, nl: true }, { topic: 'g', qos: 0, nl: true }]);
  rig.subs.dropSession(d);
  assert.equal(d.noLocalSubs, 0);
  assert.equal(d.own, null);
}));

test('No Local: a repeated SUBSCRIBE with No Local keeps the memory of the device\'s recent publishes', withRig(async (rig) => {
  const d = new Session('d');
  subscribe(rig, d, [{ topic: 'a/#', qos: 1, nl: true }]);
  const t = Buffer.from('a/1');
  const p = Buffer.from('mine');
  const fp = fingerprint(t, 0, t.length, p, 0, p.length);
  d.own!.remember(fp); // the device published a/1 "mine"; it is on its way back from the broker
  subscribe(rig, d, [{ topic: 'a/#', qos: 1, nl: true }]);
  assert.equal(d.noLocalSubs, 1);
  assert.equal(d.own?.take(fp), true, 'the copy coming back is still recognised as the device\'s own');
}));

test('requestOf: only while the subscription is current; sweep forgets old requests', withRig(async (rig) => {
  const d = new Session('d');
  subscribe(rig, d, ['r/1', 'r/2']);
  const [ops] = await rig.flush();
  const [r1, r2] = ops.map((o) => o.req);
  assert.equal(rig.subs.requestOf(r1)?.key, 'r/1');
  assert.equal(rig.subs.requestOf(r2)?.key, 'r/2');
  assert.equal(rig.subs.requestOf(r2 + 1000), null, 'never issued');
  rig.subs.unsubscribe(d, 'r/1');
  assert.equal(rig.subs.requestOf(r1), null, 'unsubscribed');
  rig.subs.sweep(Date.now() - 1000);
  assert.equal(rig.subs.requestOf(r2)?.key, 'r/2', 'a fresh request survives a sweep');
  rig.subs.sweep(Date.now() + 61_000);
  assert.equal(rig.subs.requestOf(r2), null, 'a request older than a minute is forgotten');
  assert.equal(d.subs.get('r/2')?.key, 'r/2', 'the subscription itself stays');
}));
