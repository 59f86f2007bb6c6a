// Unit tests for a writer's downlink (src/broker/downlink.ts): one upstream subscription per
// distinct filter across shards, the answers to the shards, retained messages per generation
// [MQTT-3.8.4-3, MQTT-3.3.1-9], shared groups, backpressure on the shard rings, local topics
// from the routing and the MQTT 5 properties passed on. The shards are played by the test on the
// other end of real MessageChannels; the rings are real SPSC rings.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageChannel } from 'node:worker_threads';
import * as mqttPacket from 'mqtt-packet';
import { HOLD_REQ, SHARED_REQ, WriterDownlink, type SubAck, type SubOp, type SubscriptionLink, type WriterToShard } from '../../src/broker/downlink';
import { createRing, RingConsumer, RingProducer } from '../../src/ring/spsc';
import { DOWNLINK_HEADER, NO_EXPIRY, REC_DELIVER } from '../../src/ring/records';
import type { DownlinkRouting } from '../../src/shard/routing';
import { End, sync } from '../helpers/channel';
import { varint } from '../helpers/bytes';

// ---------------------------------------------------------------------------------------------
// Harness


/** Decodes exactly one packet. */
function decode(buf: Buffer, v5: boolean): mqttPacket.Packet {
  const parser = mqttPacket.parser({ protocolVersion: v5 ? 5 : 4 });
  const got: mqttPacket.Packet[] = [];
  parser.on('packet', (p: mqttPacket.Packet) => got.push(p));
  parser.on('error', (e: Error) => assert.fail(`unparsable packet: ${e.message}`));
  const left = parser.parse(buf);
  assert.equal(left, 0, 'one whole packet');
  assert.equal(got.length, 1);
  return got[0];
}

class Link implements SubscriptionLink {
  subscribable = true;
  private nextId = 100;
  readonly packets: { id: number; packet: mqttPacket.Packet }[] = [];

  constructor(readonly v5: boolean) {}

  sendControl(build: (id: number) => Buffer): number {
    const id = this.nextId++;
    const packet = decode(build(id), this.v5);
    assert.equal(packet.messageId, id, 'built around the id given');
    this.packets.push({ id, packet });
    return id;
  }
}

/** The local topics of a remote one: itself, unless `map` says otherwise. */
function routing(map: (remote: string) => string[] = (t) => [t]): DownlinkRouting {
  return {
    inFilters: () => {
      throw new Error('not used by the writer');
    },
    localTopics: (_broker, remote, out) => {
      out.length = 0;
      out.push(...map(remote));
      return out.length;
    },
  };
}

interface Rec {
  qos: number;
  retain: boolean;
  topic: string;
  props: Buffer;
  payload: string;
  req: number;
  expiry: number;
  seq: number;
}

interface SubscribeSeen {
  id: number;
  subs: { topic: string; qos: number; nl?: boolean; rap?: boolean; rh?: number }[];
  subId?: number;
}

const BROKER = 2;

class Rig {
  readonly link: Link;
  readonly dl: WriterDownlink;
  changes = 0;
  readonly wakes: number[] = [];
  private readonly channels: MessageChannel[];
  private readonly writerSide: End[];
  private readonly shardSide: End[];
  readonly producers: RingProducer[];
  readonly consumers: RingConsumer[];

  constructor(opts: { shards?: number; v5?: boolean; capacity?: number; map?: (remote: string) => string[]; cover?: boolean } = {}) {
    const shards = opts.shards ?? 2;
    this.link = new Link(opts.v5 ?? false);
    this.channels = Array.from({ length: shards }, () => new MessageChannel());
    const rings = Array.from({ length: shards }, () => createRing(opts.capacity ?? 8192));
    this.producers = rings.map((r) => new RingProducer(r));
    this.consumers = rings.map((r) => new RingConsumer(r));
    this.dl = new WriterDownlink(BROKER, this.channels.map((c) => c.port1), this.producers, routing(opts.map), () => this.link,
      () => this.changes++, null, opts.cover ?? true);
    // Added after the writer's listeners, so a mark arrives after the writer handled what precedes it.
    this.writerSide = this.channels.map((c) => new End(c.port1));
    this.shardSide = this.channels.map((c) => new End(c.port2));
  }

  private readonly holdIds = new Map<string, number>();
  private nextHold = 1;

  /** The id shard `s` gives its hold of `filter` (in `group`), as a shard would: one per hold. */
  holdId(s: number, filter: string, group = ''): number {
    const key = `${s}\u0000${group}\u0000${filter}`;
    let id = this.holdIds.get(key);
    if (id === undefined) this.holdIds.set(key, id = this.nextHold++);
    return id;
  }

  /** Shard `s` sends its ops (hold ids filled in unless given); resolves once the writer handled them. */
  async ops(s: number, ops: (Omit<SubOp, 'hold'> & { hold?: number })[]): Promise<void> {
    const full: SubOp[] = ops.map((o) => ({ ...o, hold: o.hold ?? this.holdId(s, o.filter, o.group) }));
    this.shardSide[s].port.postMessage({ t: 'subs', shard: s, ops: full });
    await sync(this.shardSide[s], this.writerSide[s]);
  }

  /** Everything the writer answered shard `s` so far, as one list of acks (undefined fields dropped). */
  async acks(s: number): Promise<SubAck[]> {
    await sync(this.writerSide[s], this.shardSide[s]);
    const msgs = this.shardSide[s].take() as WriterToShard[];
    for (const m of msgs) {
      assert.equal(m.t, 'subacks');
      assert.equal(m.broker, BROKER);
      assert.ok(m.acks.length > 0);
    }
    return JSON.parse(JSON.stringify(msgs.flatMap((m) => m.acks))) as SubAck[];
  }

  /** Runs flushControl and returns the packets it sent. */
  control(): { id: number; packet: mqttPacket.Packet }[] {
    this.dl.flushControl();
    return this.link.packets.splice(0);
  }

  /** flushControl, expecting SUBSCRIBE packets only. */
  subscribes(): SubscribeSeen[] {
    return this.control().map(({ id, packet }) => {
      assert.equal(packet.cmd, 'subscribe');
      const p = packet as mqttPacket.ISubscribePacket;
      const subId = p.properties?.subscriptionIdentifier;
      return { id, subs: p.subscriptions.map((s) => ({ ...s })), ...(subId === undefined ? {} : { subId }) };
    });
  }

  /** A broker PUBLISH handed over as the connection does (fixed header apart), at an offset in its buffer. */
  publish(topic: string, payload: string | Buffer, o: { qos?: 0 | 1 | 2; retain?: boolean; properties?: mqttPacket.IPublishPacket['properties'] } = {}): boolean {
    const v5 = this.link.v5;
    const qos = o.qos ?? 0;
    const frame = mqttPacket.generate({
      cmd: 'publish', topic, payload, qos, retain: o.retain ?? false, dup: false, messageId: qos > 0 ? 4242 : undefined,
      properties: v5 ? o.properties : undefined,
    }, { protocolVersion: v5 ? 5 : 4 });
    let pos = 1;
    while (frame[pos] & 0x80) pos++;
    pos++;
    const pad = 7;
    const buf = Buffer.concat([Buffer.alloc(pad, 0xaa), frame, Buffer.alloc(3, 0xbb)]);
    return this.dl.onPublish(frame[0], buf, pad + pos, pad + frame.length, v5);
  }

  /** Commits and reads every record of shard `s`. */
  records(s: number): Rec[] {
    this.dl.commit((shard) => this.wakes.push(shard));
    const c = this.consumers[s];
    const out: Rec[] = [];
    for (let at = c.next(); at >= 0; at = c.next()) {
      const b = c.buffer;
      const v = c.dataView;
      assert.equal(b[at], REC_DELIVER);
      const flags = b[at + 1];
      const topicLen = v.getUint16(at + 2, true);
      const propsLen = v.getUint32(at + 4, true);
      const start = at + DOWNLINK_HEADER;
      out.push({
        qos: flags & 3, retain: (flags & 4) !== 0,
        topic: b.toString('utf8', start, start + topicLen),
        props: Buffer.from(b.subarray(start + topicLen, start + topicLen + propsLen)),
        payload: b.toString('utf8', start + topicLen + propsLen, at + c.lastLength),
        req: v.getUint32(at + 8, true), expiry: v.getUint32(at + 12, true), seq: v.getUint32(at + 16, true),
      });
    }
    c.release();
    return out;
  }

  close(): void {
    for (const c of this.channels) {
      c.port1.close();
      c.port2.close();
    }
  }
}

function withRig(opts: ConstructorParameters<typeof Rig>[0], body: (rig: Rig) => Promise<void>): () => Promise<void> {
  return async () => {
    const rig = new Rig(opts);
    try {
      await body(rig);
    } finally {
      rig.close();
    }
  };
}

/** Record essentials for comparisons. */
function brief(r: Rec): string {
  return `${r.topic} q${r.qos}${r.retain ? ' R' : ''} req=${r.req} ${r.payload}`;
}


/** The properties of a record, decoded by mqtt-packet from a QoS 0 MQTT 5 PUBLISH built around them. */
function propsOf(r: Rec): Record<string, unknown> {
  const t = Buffer.from(r.topic);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(t.length);
  const body = Buffer.concat([len, t, Buffer.from(varint(r.props.length)), r.props, Buffer.from(r.payload)]);
  const p = decode(Buffer.concat([Buffer.from([0x30, ...varint(body.length)]), body]), true) as mqttPacket.IPublishPacket;
  assert.equal(p.payload.toString(), r.payload);
  const props: Record<string, unknown> = { ...(p.properties ?? {}) };
  // mqtt-packet hands user properties over in a null-prototype object.
  if (props.userProperties !== undefined) props.userProperties = { ...(props.userProperties as object) };
  return props;
}

// ---------------------------------------------------------------------------------------------
// Upstream subscriptions

test('one upstream SUBSCRIBE per distinct filter across shards (MQTT 3.1.1: one packet for the batch)', withRig({ shards: 3 }, async (rig) => {
  await rig.ops(0, [{ filter: 'a/+', qos: 1, req: 0 }]);
  await rig.ops(1, [{ filter: 'a/+', qos: 1, req: 0 }, { filter: 'b', qos: 0, req: 0 }]);
  assert.ok(rig.changes >= 2, 'the writer is told to run its turn');
  assert.equal(rig.dl.filterCount, 2);
  const [sub, ...more] = rig.subscribes();
  assert.deepEqual(more, []);
  assert.deepEqual(sub.subs, [{ topic: 'a/+', qos: 1 }, { topic: 'b', qos: 0 }]);
  assert.deepEqual(rig.control(), [], 'sent once');

  assert.deepEqual(await rig.acks(0), [], 'no answer before the broker\'s');
  rig.dl.onSuback(sub.id, [1, 0]);
  assert.deepEqual(await rig.acks(0), [{ filter: 'a/+', qos: 1, granted: 1 }]);
  assert.deepEqual(await rig.acks(1), [{ filter: 'a/+', qos: 1, granted: 1 }, { filter: 'b', qos: 0, granted: 0 }]);

  // A third shard joins at a QoS already held: answered from the SUBACK, the broker is not asked.
  await rig.ops(2, [{ filter: 'a/+', qos: 0, req: 0 }, { filter: 'b', qos: 0, req: 0 }]);
  assert.deepEqual(await rig.acks(2), [{ filter: 'a/+', qos: 0, granted: 0 }, { filter: 'b', qos: 0, granted: 0 }]);
  assert.deepEqual(rig.control(), []);
  assert.equal(rig.dl.filterCount, 2);
}));

test('MQTT 5: one SUBSCRIBE per filter, each with a subscription identifier of its own; Retain Handling 0, no No Local, no RAP', withRig({ v5: true }, async (rig) => {
  await rig.ops(0, [{ filter: 'a/#', qos: 2, req: 0 }, { filter: 'b', qos: 1, req: 0 }]);
  const subs = rig.subscribes();
  assert.equal(subs.length, 2);
  assert.deepEqual(subs.map((s) => s.subs), [
    [{ topic: 'a/#', qos: 2, nl: false, rap: false, rh: 0 }],
    [{ topic: 'b', qos: 1, nl: false, rap: false, rh: 0 }],
  ]);
  const ids = subs.map((s) => s.subId);
  assert.ok(ids.every((i) => typeof i === 'number' && i >= 1 && i <= 268435455), `identifiers ${ids}`);
  assert.notEqual(ids[0], ids[1]);
  rig.dl.onSuback(subs[1].id, [1]);
  rig.dl.onSuback(subs[0].id, [2]);
  assert.deepEqual(await rig.acks(0), [{ filter: 'b', qos: 1, granted: 1 }, { filter: 'a/#', qos: 2, granted: 2 }]);
}));

test('a higher QoS from a shard subscribes again at that QoS; each shard\'s grant is capped by what it asked', withRig({ shards: 2 }, async (rig) => {
  await rig.ops(0, [{ filter: 'f', qos: 0, req: 0 }]);
  const [s1] = rig.subscribes();
  rig.dl.onSuback(s1.id, [0]);
  await rig.ops(1, [{ filter: 'f', qos: 2, req: 0 }]);
  const [s2] = rig.subscribes();
  assert.deepEqual(s2.subs, [{ topic: 'f', qos: 2 }]);
  rig.dl.onSuback(s2.id, [1]);
  assert.deepEqual(await rig.acks(0), [{ filter: 'f', qos: 0, granted: 0 }, { filter: 'f', qos: 2, granted: 0 }]);
  assert.deepEqual(await rig.acks(1), [{ filter: 'f', qos: 2, granted: 1 }]);
}));

test('a SUBSCRIBE in flight is not repeated: what changes meanwhile goes in the next one, after the SUBACK', withRig({ shards: 2 }, async (rig) => {
  await rig.ops(0, [{ filter: 'f', qos: 0, req: 0 }]);
  const [s1] = rig.subscribes();
  await rig.ops(1, [{ filter: 'f', qos: 1, req: 0 }]);
  assert.deepEqual(rig.control(), [], 'waits for the SUBACK of the first');
  rig.dl.onSuback(s1.id, [0]);
  assert.deepEqual(await rig.acks(1), [{ filter: 'f', qos: 0, granted: 0 }], 'the answer says which QoS it was for');
  const [s2] = rig.subscribes();
  assert.deepEqual(s2.subs, [{ topic: 'f', qos: 1 }]);
  rig.dl.onSuback(s2.id, [1]);
  assert.deepEqual(await rig.acks(1), [{ filter: 'f', qos: 1, granted: 1 }]);
}));

test('a refusal passes through to the shards, and the next holder makes the writer try again', withRig({ shards: 2 }, async (rig) => {
  await rig.ops(0, [{ filter: 'secret', qos: 1, req: 0 }]);
  const [s1] = rig.subscribes();
  rig.dl.onSuback(s1.id, [0x87]);
  assert.deepEqual(await rig.acks(0), [{ filter: 'secret', qos: 1, granted: 0x87 }]);
  await rig.ops(1, [{ filter: 'secret', qos: 1, req: 0 }]);
  assert.deepEqual(await rig.acks(1), [], 'not answered from a refusal');
  const [s2] = rig.subscribes();
  assert.deepEqual(s2.subs, [{ topic: 'secret', qos: 1 }]);
  rig.dl.onSuback(s2.id, [1]);
  assert.deepEqual(await rig.acks(1), [{ filter: 'secret', qos: 1, granted: 1 }]);
  rig.dl.onSuback(9999, [0]); // unknown packet id: ignored
  assert.deepEqual(await rig.acks(0), [{ filter: 'secret', qos: 1, granted: 1 }]);
}));

test('UNSUBSCRIBE when the last shard releases a filter, and not before', withRig({ shards: 2 }, async (rig) => {
  await rig.ops(0, [{ filter: 'x', qos: 1, req: 0 }]);
  await rig.ops(1, [{ filter: 'x', qos: 1, req: 0 }, { filter: 'y', qos: 0, req: 0 }]);
  const [s] = rig.subscribes();
  rig.dl.onSuback(s.id, [1, 0]);
  await rig.ops(0, [{ filter: 'x', qos: -1, req: 0 }]);
  assert.deepEqual(rig.control(), [], 'shard 1 still holds x');
  await rig.ops(0, [{ filter: 'x', qos: -1, req: 0 }, { filter: 'y', qos: -1, req: 0 }]);
  assert.deepEqual(rig.control(), [], 'a release by a shard that holds nothing changes nothing');
  assert.equal(rig.dl.filterCount, 2);
  await rig.ops(1, [{ filter: 'x', qos: -1, req: 0 }, { filter: 'y', qos: -1, req: 0 }]);
  const sent = rig.control();
  assert.equal(sent.length, 1);
  assert.equal(sent[0].packet.cmd, 'unsubscribe');
  assert.deepEqual((sent[0].packet as mqttPacket.IUnsubscribePacket).unsubscriptions.sort(), ['x', 'y']);
  assert.equal(rig.dl.filterCount, 0);
  assert.equal(rig.publish('x', 'gone'), true);
  assert.deepEqual([rig.records(0), rig.records(1)], [[], []], 'nothing for released filters');
  assert.equal(rig.dl.dropped, 1);
}));

test('released before it was ever subscribed: neither SUBSCRIBE nor UNSUBSCRIBE', withRig({}, async (rig) => {
  await rig.ops(0, [{ filter: 'brief', qos: 1, req: 3 }, { filter: 'brief', qos: -1, req: 0 }]);
  assert.deepEqual(rig.control(), []);
  assert.equal(rig.dl.filterCount, 0);
}));

test('released and held again in the same turn: no UNSUBSCRIBE, the filter is subscribed again', withRig({ shards: 2 }, async (rig) => {
  await rig.ops(0, [{ filter: 'z', qos: 1, req: 0 }]);
  const [s] = rig.subscribes();
  rig.dl.onSuback(s.id, [1]);
  await rig.ops(0, [{ filter: 'z', qos: -1, req: 0 }]);
  await rig.ops(1, [{ filter: 'z', qos: 1, req: 9 }]);
  const sent = rig.control();
  assert.deepEqual(sent.map((p) => p.packet.cmd), ['subscribe']);
  rig.dl.onSuback(sent[0].id, [1]);
  assert.deepEqual(await rig.acks(1), [{ filter: 'z', qos: 1, granted: 1 }]);
}));

test('released while its SUBSCRIBE is in flight: UNSUBSCRIBE, and the late SUBACK answers nobody', withRig({}, async (rig) => {
  await rig.ops(0, [{ filter: 'w', qos: 1, req: 0 }]);
  const [s] = rig.subscribes();
  await rig.ops(0, [{ filter: 'w', qos: -1, req: 0 }]);
  const sent = rig.control();
  assert.deepEqual(sent.map((p) => p.packet.cmd), ['unsubscribe']);
  rig.dl.onSuback(s.id, [1]);
  assert.deepEqual(await rig.acks(0), []);
}));

test('not subscribable (connection down): nothing is sent until it is', withRig({}, async (rig) => {
  rig.link.subscribable = false;
  await rig.ops(0, [{ filter: 'q', qos: 1, req: 0 }]);
  assert.deepEqual(rig.control(), []);
  rig.link.subscribable = true;
  assert.deepEqual(rig.subscribes().map((s) => s.subs), [[{ topic: 'q', qos: 1 }]]);
}));

test('onConnected: a new session subscribes every filter again; a resumed one only those in flight or refused', async () => {
  for (const sessionPresent of [false, true]) {
    const rig = new Rig({});
    try {
      await rig.ops(0, [{ filter: 'acked', qos: 1, req: 0 }, { filter: 'refused', qos: 1, req: 0 }]);
      const [s1] = rig.subscribes();
      rig.dl.onSuback(s1.id, [1, 0x80]);
      // 'upgrade' was granted at QoS 0; its SUBSCRIBE for QoS 2 is in flight, like 'flight'.
      await rig.ops(0, [{ filter: 'upgrade', qos: 0, req: 0 }]);
      const [s2] = rig.subscribes();
      rig.dl.onSuback(s2.id, [0]);
      await rig.ops(0, [{ filter: 'flight', qos: 2, req: 0 }, { filter: 'upgrade', qos: 2, req: 0 }]);
      const [s3] = rig.subscribes();
      assert.deepEqual(s3.subs.map((x) => x.topic), ['flight', 'upgrade']);
      await rig.acks(0);
      rig.dl.onConnected(sessionPresent);
      const [again, ...more] = rig.subscribes();
      assert.deepEqual(more, []);
      const want = sessionPresent ? ['flight', 'refused', 'upgrade'] : ['acked', 'flight', 'refused', 'upgrade'];
      assert.deepEqual(again.subs.map((x) => x.topic).sort(), want, `session present: ${sessionPresent}`);
      rig.dl.onSuback(s3.id, [2, 2]); // a SUBACK from the old connection
      assert.deepEqual(await rig.acks(0), [], 'the old connection\'s SUBACK is forgotten');
      rig.dl.onSuback(again.id, again.subs.map((x) => x.qos));
      assert.equal((await rig.acks(0)).length, want.length);
    } finally {
      rig.close();
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Retained messages

test('MQTT 5: a retained message goes only to the requests of its generation; a live one to every holding shard', withRig({ v5: true, shards: 3 }, async (rig) => {
  await rig.ops(0, [{ filter: 'x/#', qos: 1, req: 11 }]);
  const [g1] = rig.subscribes();
  rig.dl.onSuback(g1.id, [1]);
  await rig.ops(1, [{ filter: 'x/#', qos: 1, req: 22 }]);
  await rig.ops(2, [{ filter: 'x/#', qos: 1, req: 0 }]); // holds, wants no retained messages
  const [g2] = rig.subscribes();
  assert.notEqual(g2.subId, g1.subId, 'each SUBSCRIBE of the filter is a generation of its own');
  rig.dl.onSuback(g2.id, [1]);

  assert.equal(rig.publish('x/1', 'r1', { qos: 1, retain: true, properties: { subscriptionIdentifier: g1.subId } }), true);
  assert.equal(rig.publish('x/2', 'r2', { qos: 0, retain: true, properties: { subscriptionIdentifier: g2.subId } }), true);
  assert.deepEqual(rig.records(0).map(brief), ['x/1 q1 R req=11 r1']);
  assert.deepEqual(rig.records(1).map(brief), ['x/2 q0 R req=22 r2']);
  assert.deepEqual(rig.records(2).map(brief), []);

  // A late retained message of the first generation still finds its request.
  rig.publish('x/3', 'late', { qos: 1, retain: true, properties: { subscriptionIdentifier: g1.subId } });
  assert.deepEqual(rig.records(0).map(brief), ['x/3 q1 R req=11 late']);
  assert.deepEqual(rig.records(1), []);

  // A live copy for the subscription (its identifier is the latest generation's): every
  // shard's hold of it, each record tagged with the shard's hold id.
  rig.publish('x/4', 'live', { qos: 2, properties: { subscriptionIdentifier: g2.subId } });
  assert.deepEqual([0, 1, 2].map((s) => rig.records(s).map(brief)),
    [0, 1, 2].map((s) => [`x/4 q2 req=${HOLD_REQ | rig.holdId(s, 'x/#')} live`]));

  const before = rig.dl.dropped;
  assert.equal(rig.publish('x/5', 'stray', { retain: true, properties: { subscriptionIdentifier: 777_777 } }), true);
  assert.deepEqual([0, 1, 2].map((s) => rig.records(s)), [[], [], []], 'a generation nobody asked for');
  assert.equal(rig.dl.dropped, before + 1);
}));

test('MQTT 3.1.1: a retained message goes to the requests of the latest acknowledged generation', withRig({ shards: 3 }, async (rig) => {
  await rig.ops(0, [{ filter: 'x/#', qos: 1, req: 11 }]);
  const [g1] = rig.subscribes();
  rig.dl.onSuback(g1.id, [1]);
  rig.publish('x/1', 'first', { retain: true });
  assert.deepEqual(rig.records(0).map(brief), ['x/1 q0 R req=11 first']);

  await rig.ops(1, [{ filter: 'x/#', qos: 1, req: 22 }]);
  const [g2] = rig.subscribes();
  rig.dl.onSuback(g2.id, [1]);
  rig.publish('x/1', 'second', { qos: 1, retain: true });
  assert.deepEqual(rig.records(0), [], 'shard 0 had its retained messages already');
  assert.deepEqual(rig.records(1).map(brief), ['x/1 q1 R req=22 second']);

  // A SUBSCRIBE for a higher QoS, with nobody asking for retained messages: the broker's
  // retained messages for it go nowhere.
  await rig.ops(2, [{ filter: 'x/#', qos: 2, req: 0 }]);
  const [g3] = rig.subscribes();
  rig.dl.onSuback(g3.id, [2]);
  rig.publish('x/1', 'third', { retain: true });
  assert.deepEqual([0, 1, 2].map((s) => rig.records(s)), [[], [], []]);
  rig.publish('x/1', 'live');
  assert.deepEqual([0, 1, 2].map((s) => rig.records(s).map(brief)), [['x/1 q0 req=0 live'], ['x/1 q0 req=0 live'], ['x/1 q0 req=0 live']]);
}));

test('a retained request whose SUBSCRIBE was lost to a reconnection is served by the SUBSCRIBE sent again', withRig({ v5: true }, async (rig) => {
  await rig.ops(0, [{ filter: 'cfg/#', qos: 1, req: 7 }]);
  const [lost] = rig.subscribes();
  rig.dl.onConnected(false); // the connection dropped before the SUBACK
  const [again] = rig.subscribes();
  assert.deepEqual(again.subs.map((s) => s.topic), ['cfg/#']);
  rig.dl.onSuback(again.id, [1]);
  assert.deepEqual(await rig.acks(0), [{ filter: 'cfg/#', qos: 1, granted: 1 }]);
  void lost;
  rig.publish('cfg/a', 'retained', { qos: 1, retain: true, properties: { subscriptionIdentifier: again.subId } });
  assert.deepEqual(rig.records(0).map(brief), ['cfg/a q1 R req=7 retained']);
}));

// ---------------------------------------------------------------------------------------------
// Shared groups

test('shared groups: each live message goes to one shard of the group, in turn; plain holders get every one', withRig({ shards: 3 }, async (rig) => {
  for (const s of [0, 1, 2]) await rig.ops(s, [{ filter: 's/+', qos: 1, req: 0, group: 'g', hold: 10 + s }]);
  await rig.ops(1, [{ filter: 's/+', qos: 0, req: 0 }]);
  await rig.ops(0, [{ filter: 's/+', qos: 1, req: 0, group: 'h', hold: 99 }]);
  const [sub] = rig.subscribes();
  assert.deepEqual(sub.subs, [{ topic: 's/+', qos: 1 }], 'one upstream subscription for the groups and the plain holder');
  rig.dl.onSuback(sub.id, [1]);
  assert.deepEqual(await rig.acks(0), [{ filter: 's/+', group: 'g', qos: 1, granted: 1 }, { filter: 's/+', group: 'h', qos: 1, granted: 1 }]);
  assert.deepEqual(await rig.acks(1), [{ filter: 's/+', group: 'g', qos: 1, granted: 1 }, { filter: 's/+', qos: 1, granted: 0 }]);

  const turns = (count: number): { g: number[]; h: number; plain: number } => {
    for (let i = 0; i < count; i++) assert.equal(rig.publish('s/1', `m${i}`, { qos: 1 }), true);
    const byShard = [0, 1, 2].map((s) => rig.records(s));
    const g: { seq: number; shard: number }[] = [];
    let h = 0;
    let plainCount = 0;
    byShard.forEach((recs, s) => {
      for (const r of recs) {
        if (r.req === 0) {
          assert.equal(s, 1, 'plain records only where plainly held');
          plainCount++;
        } else if (r.req === (SHARED_REQ | 99) >>> 0) {
          assert.equal(s, 0);
          h++;
        } else {
          assert.equal(r.req, (SHARED_REQ | (10 + s)) >>> 0, 'tagged with the shard\'s own hold id');
          g.push({ seq: r.seq, shard: s });
        }
      }
    });
    return { g: g.sort((a, b) => a.seq - b.seq).map((x) => x.shard), h, plain: plainCount };
  };

  const first = turns(6);
  assert.equal(first.g.length, 6, 'each message once to group g');
  assert.deepEqual([...first.g.slice(0, 3)].sort(), [0, 1, 2], 'every member shard in turn');
  assert.deepEqual(first.g.slice(3), first.g.slice(0, 3), 'the same order again');
  assert.equal(first.h, 6, 'a group held by one shard gets every message');
  assert.equal(first.plain, 6);

  // Shard 2 leaves the group: the others take turns.
  await rig.ops(2, [{ filter: 's/+', qos: -1, req: 0, group: 'g', hold: 12 }]);
  assert.deepEqual(rig.control(), [], 'others still hold the filter');
  const second = turns(4);
  assert.deepEqual([...second.g].sort(), [0, 0, 1, 1]);
  assert.notEqual(second.g[0], second.g[1]);
}));

test('shared groups: no retained messages for them', withRig({ shards: 2, v5: true }, async (rig) => {
  await rig.ops(0, [{ filter: 'k', qos: 1, req: 0, group: 'g', hold: 1 }]);
  await rig.ops(1, [{ filter: 'k', qos: 1, req: 0, group: 'g', hold: 1 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);
  assert.equal(rig.publish('k', 'old', { retain: true, properties: { subscriptionIdentifier: sub.subId } }), true);
  assert.deepEqual([rig.records(0), rig.records(1)], [[], []]);
}));

// ---------------------------------------------------------------------------------------------
// MQTT 5 copies per subscription

test('MQTT 5: a live copy naming subscription identifiers goes to the holds of those subscriptions only', withRig({ v5: true, shards: 2 }, async (rig) => {
  await rig.ops(0, [{ filter: 'a/+', qos: 1, req: 0 }]);
  await rig.ops(1, [{ filter: 'a/#', qos: 1, req: 0 }, { filter: 'a/+', qos: 1, req: 0 }]);
  const subs = rig.subscribes();
  assert.deepEqual(subs.map((x) => x.subs[0].topic), ['a/+', 'a/#']);
  const [plus, hash] = subs;
  for (const x of subs) rig.dl.onSuback(x.id, [1]);
  const tag = (s: number, f: string): string => `req=${HOLD_REQ | rig.holdId(s, f)}`;
  const reqs = (s: number): string[] => rig.records(s).map((r) => `req=${r.req}`);

  rig.publish('a/1', 'p', { qos: 1, properties: { subscriptionIdentifier: plus.subId } });
  assert.deepEqual([reqs(0), reqs(1)], [[tag(0, 'a/+')], [tag(1, 'a/+')]]);
  rig.publish('a/1', 'h', { qos: 1, properties: { subscriptionIdentifier: hash.subId } });
  assert.deepEqual([reqs(0), reqs(1)], [[], [tag(1, 'a/#')]], 'the a/# copy is not for shard 0');
  rig.publish('a/1', 'both', { qos: 1, properties: { subscriptionIdentifier: [plus.subId!, hash.subId!] } });
  assert.deepEqual([reqs(0), reqs(1).sort()], [[tag(0, 'a/+')], [tag(1, 'a/#'), tag(1, 'a/+')].sort()]);

  // A broker that names no subscription: every holding shard, once, to match on its own.
  rig.publish('a/1', 'none', { qos: 1 });
  assert.deepEqual([reqs(0), reqs(1)], [['req=0'], ['req=0']]);

  // A copy for a subscription released meanwhile: nobody.
  await rig.ops(1, [{ filter: 'a/#', qos: -1, req: 0 }]);
  const dropped = rig.dl.dropped;
  assert.equal(rig.publish('a/1', 'stale', { qos: 1, properties: { subscriptionIdentifier: hash.subId } }), true);
  assert.deepEqual([reqs(0), reqs(1)], [[], []]);
  assert.equal(rig.dl.dropped, dropped + 1);
}));

test('MQTT 5: a copy naming two generations of one filter makes one record per hold', withRig({ v5: true, shards: 2 }, async (rig) => {
  await rig.ops(0, [{ filter: 'x', qos: 1, req: 5 }]);
  const [g1] = rig.subscribes();
  rig.dl.onSuback(g1.id, [1]);
  await rig.ops(1, [{ filter: 'x', qos: 1, req: 6 }]);
  const [g2] = rig.subscribes();
  rig.dl.onSuback(g2.id, [1]);
  rig.publish('x', 'm', { qos: 1, properties: { subscriptionIdentifier: [g1.subId!, g2.subId!] } });
  assert.deepEqual([0, 1].map((s) => rig.records(s).map((r) => r.req)), [[HOLD_REQ | rig.holdId(0, 'x')], [HOLD_REQ | rig.holdId(1, 'x')]]);
  // A late copy naming the older generation only still reaches the subscription's holds.
  rig.publish('x', 'late', { qos: 1, properties: { subscriptionIdentifier: g1.subId } });
  assert.deepEqual([0, 1].map((s) => rig.records(s).length), [1, 1]);
}));

test('MQTT 5: a copy for a shared group goes to one of its shards, in turn', withRig({ v5: true, shards: 2 }, async (rig) => {
  for (const s of [0, 1]) await rig.ops(s, [{ filter: 'job/+', qos: 1, req: 0, group: 'w', hold: 40 + s }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);
  const order: number[] = [];
  for (let i = 0; i < 4; i++) {
    rig.publish('job/1', `j${i}`, { qos: 1, properties: { subscriptionIdentifier: sub.subId } });
    const got = [0, 1].map((s) => rig.records(s));
    assert.equal(got[0].length + got[1].length, 1, 'one shard of the group per copy');
    const s = got[0].length === 1 ? 0 : 1;
    assert.equal(got[s][0].req, (SHARED_REQ | (40 + s)) >>> 0);
    order.push(s);
  }
  assert.deepEqual(order, [order[0], 1 - order[0], order[0], 1 - order[0]]);
}));

test('generations of a filter nobody holds any more are forgotten', withRig({ v5: true }, async (rig) => {
  for (let i = 0; i < 50; i++) {
    await rig.ops(0, [{ filter: `churn/${i}`, qos: 1, req: 0, group: 'g' }]);
    const [sub] = rig.subscribes();
    rig.dl.onSuback(sub.id, [1]);
    rig.dl.onConnected(false);
    const [again] = rig.subscribes();
    rig.dl.onSuback(again.id, [1]);
    await rig.ops(0, [{ filter: `churn/${i}`, qos: -1, req: 0, group: 'g' }]);
    rig.control();
  }
  assert.equal(rig.dl.filterCount, 0);
  // Peeks at the generation index: nothing should be left in it.
  const byGen = (rig.dl as unknown as { byGen: Map<number, unknown> }).byGen;
  assert.equal(byGen.size, 0, `${byGen.size} generations kept for no filter`);
}));

// ---------------------------------------------------------------------------------------------
// Records

test('records carry the local topics from the routing: one record per local topic, the same sequence number', withRig({
  shards: 2, map: (t) => (t.startsWith('up/') ? [`dev/${t.slice(3)}`, `mirror/${t.slice(3)}`] : t.startsWith('drop/') ? [] : [t]),
}, async (rig) => {
  await rig.ops(0, [{ filter: '#', qos: 2, req: 0 }]);
  await rig.ops(1, [{ filter: 'up/a', qos: 1, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [2, 1]);

  assert.equal(rig.publish('up/a', 'hello', { qos: 1 }), true);
  const r0 = rig.records(0);
  const r1 = rig.records(1);
  assert.deepEqual(r0.map(brief), ['dev/a q1 req=0 hello', 'mirror/a q1 req=0 hello']);
  assert.deepEqual(r1.map(brief), ['dev/a q1 req=0 hello', 'mirror/a q1 req=0 hello'], 'one copy per shard however many filters match');
  assert.deepEqual([...r0, ...r1].map((r) => r.expiry), [NO_EXPIRY, NO_EXPIRY, NO_EXPIRY, NO_EXPIRY]);
  const seq = r0[0].seq;
  assert.ok([...r0, ...r1].every((r) => r.seq === seq), 'one message, one sequence number');

  assert.equal(rig.publish('drop/x', 'nowhere'), true, 'no local topic: taken and forgotten');
  assert.deepEqual(rig.records(0), []);
  assert.equal(rig.publish('plain', 'p'), true);
  const [next] = rig.records(0);
  assert.equal(next.seq, seq + 1, 'sequence numbers count messages');
  assert.equal(rig.dl.delivered, 2);
}));

test('MQTT 5 properties: Subscription Identifier, Topic Alias and Message Expiry stay behind; the expiry goes in the header', withRig({ v5: true }, async (rig) => {
  await rig.ops(0, [{ filter: 'p/#', qos: 1, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);
  const correlationData = Buffer.from([1, 2, 3]);
  assert.equal(rig.publish('p/1', 'body', {
    qos: 1,
    properties: {
      payloadFormatIndicator: true, messageExpiryInterval: 30, topicAlias: 4, contentType: 'text/plain', responseTopic: 'reply/1',
      correlationData, userProperties: { k: 'v', z: ['1', '2'] }, subscriptionIdentifier: sub.subId,
    },
  }), true);
  const [r] = rig.records(0);
  assert.equal(r.expiry, 30);
  assert.deepEqual(propsOf(r), {
    payloadFormatIndicator: true, contentType: 'text/plain', responseTopic: 'reply/1', correlationData, userProperties: { k: 'v', z: ['1', '2'] },
  });

  rig.publish('p/2', 'bare', { qos: 1, properties: { subscriptionIdentifier: sub.subId, topicAlias: 1 } });
  const [bare] = rig.records(0);
  assert.deepEqual([bare.props.length, bare.expiry, bare.payload], [0, NO_EXPIRY, 'bare']);

  rig.publish('p/3', 'now', { properties: { messageExpiryInterval: 0 } });
  const [zero] = rig.records(0);
  assert.equal(zero.expiry, 0, 'an expiry of 0 is not "no expiry"');
}));

test('MQTT 3.1.1 broker: no properties, no expiry; QoS and payload as received', withRig({}, async (rig) => {
  await rig.ops(0, [{ filter: 'v4/+', qos: 2, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [2]);
  const payload = Buffer.alloc(300, 0x61);
  for (const qos of [0, 1, 2] as const) assert.equal(rig.publish('v4/t', payload, { qos }), true);
  assert.deepEqual(rig.records(0).map((r) => [r.qos, r.props.length, r.expiry, r.payload.length]),
    [[0, 0, NO_EXPIRY, 300], [1, 0, NO_EXPIRY, 300], [2, 0, NO_EXPIRY, 300]]);
  assert.equal(rig.publish('v4/t', ''), true);
  assert.equal(rig.records(0)[0].payload, '', 'an empty payload');
}));

test('no shard holds a matching filter: counted as dropped, nothing written', withRig({}, async (rig) => {
  assert.equal(rig.publish('nobody', 'x'), true);
  assert.equal(rig.dl.dropped, 1);
  assert.equal(rig.dl.delivered, 0);
  assert.deepEqual(rig.records(0), []);
}));

test('commit: records become visible at commit, and only the shards that got some are woken', withRig({ shards: 3 }, async (rig) => {
  await rig.ops(1, [{ filter: 'c', qos: 0, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [0]);
  rig.publish('c', 'x');
  assert.equal(rig.consumers[1].hasData(), false, 'not before commit');
  const wakes: number[] = [];
  rig.dl.commit((s) => wakes.push(s));
  assert.deepEqual(wakes, [1]);
  assert.equal(rig.consumers[1].hasData(), true);
  rig.dl.commit((s) => wakes.push(s));
  assert.deepEqual(wakes, [1], 'nothing new, nobody woken');
}));

// ---------------------------------------------------------------------------------------------
// Backpressure and size

test('a ring too full: onPublish returns false and writes nothing anywhere; the retry after room is made writes it whole', withRig({ shards: 2, capacity: 1024 }, async (rig) => {
  await rig.ops(0, [{ filter: 't/#', qos: 1, req: 0 }]);
  await rig.ops(1, [{ filter: 't/#', qos: 1, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);

  // Shard 0 reads everything at once, shard 1 nothing: its ring fills up.
  const got0: string[] = [];
  let accepted = 0;
  for (; accepted < 100; accepted++) {
    if (!rig.publish('t/x', `m${accepted}-${'.'.repeat(80)}`, { qos: 1 })) break;
    got0.push(...rig.records(0).map((r) => r.payload.split('-')[0]));
  }
  assert.ok(accepted > 1 && accepted < 100, `accepted ${accepted}`);
  const refused = `m${accepted}-${'.'.repeat(80)}`;
  assert.equal(rig.publish('t/x', refused, { qos: 1 }), false, 'still no room');
  assert.deepEqual(rig.records(0), [], 'shard 0 had room but got nothing: all or nothing');
  assert.equal(rig.dl.delivered, accepted);

  const got1 = rig.records(1).map((r) => r.payload.split('-')[0]);
  const want = Array.from({ length: accepted }, (_, i) => `m${i}`);
  assert.deepEqual(got0, want);
  assert.deepEqual(got1, want, 'the full ring holds every accepted message, whole');

  assert.equal(rig.publish('t/x', refused, { qos: 1 }), true, 'room again after the shard read its ring');
  assert.deepEqual([rig.records(0), rig.records(1)].map((rs) => rs.map((r) => r.payload)), [[refused], [refused]]);
}));

test('a message making several records per shard is written whole or not at all, however full the ring', withRig({
  capacity: 1024, map: (t) => [`l1/${t}`, `l2/${t}`, `l3/${t}`],
}, async (rig) => {
  await rig.ops(0, [{ filter: 'm/#', qos: 1, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);
  const got: string[] = [];
  let refused = 0;
  for (let i = 0; i < 60; i++) {
    const payload = `${i}:${'.'.repeat(40 + (i % 7) * 9)}`;
    if (rig.publish('m/x', payload, { qos: 1 })) {
      got.push(...['l1', 'l2', 'l3'].map((l) => `${l}/m/x ${payload}`));
      refused = 0;
    } else {
      // Refused again right after the shard emptied its ring would be a defect: fail rather
      // than spin.
      assert.equal(refused, 0, `message ${i} refused by an empty ring`);
      refused++;
      i--; // the caller keeps the message and retries after the shard read its ring
    }
    // The shard reads its ring only every fourth turn: the ring is often nearly full.
    if (i % 4 === 3 || refused > 0) {
      const recs = rig.records(0).map((r) => `${r.topic} ${r.payload}`);
      assert.deepEqual(recs, got.splice(0, recs.length), 'whole messages, in order');
      assert.equal(recs.length % 3, 0, 'never part of a message');
    }
  }
  assert.deepEqual(rig.records(0).map((r) => `${r.topic} ${r.payload}`), got);
}));

test('larger than half a shard ring: counted as too large and skipped (never retried)', withRig({ capacity: 1024 }, async (rig) => {
  await rig.ops(0, [{ filter: 'big', qos: 1, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);
  assert.equal(rig.publish('big', 'x'.repeat(600)), true);
  assert.equal(rig.dl.tooLarge, 1);
  assert.deepEqual(rig.records(0), []);
  assert.equal(rig.publish('big', 'x'.repeat(300)), true);
  assert.deepEqual(rig.records(0).map((r) => r.payload.length), [300]);
}));

test('a message that fits an empty ring is taken wherever the ring\'s position is', withRig({ capacity: 1024 }, async (rig) => {
  await rig.ops(0, [{ filter: 't', qos: 1, req: 0 }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);
  assert.equal(rig.publish('t', 'x'.repeat(100)), true);
  assert.equal(rig.records(0).length, 1);
  assert.equal(rig.consumers[0].hasData(), false, 'the ring is empty again');
  // 20 + 1 + 470 = 491 bytes of record (496 in the ring): well within the 1024 free bytes, and
  // under the 512-byte limit for a single message.
  assert.equal(rig.publish('t', 'x'.repeat(470)), true, 'an empty ring refused the message; no retry can ever succeed');
}));

test('several records of one message for one shard that an empty ring cannot take together are not refused forever', withRig({ capacity: 1024 }, async (rig) => {
  await rig.ops(0, [{ filter: 't', qos: 1, req: 0 }, { filter: 't', qos: 1, req: 0, group: 'g' }, { filter: 't', qos: 1, req: 0, group: 'h' }]);
  const [sub] = rig.subscribes();
  rig.dl.onSuback(sub.id, [1]);
  assert.equal(rig.consumers[0].hasData(), false, 'the ring is empty');
  // One record: 20 + 1 + 300 = 321 bytes, under the 512-byte limit for a single message.
  const first = rig.publish('t', 'x'.repeat(300));
  const second = rig.publish('t', 'x'.repeat(300));
  assert.ok(first || second, 'an empty ring refuses the message, and will again on every retry');
}));

// ---------------------------------------------------------------------------------------------
// Covered filters: a held filter that another held filter covers has no subscription of its own

/** Control packets as short strings: `sub a/b q1`, `unsub a/b`. */
function controls(rig: Rig): { id: number; text: string; subId?: number }[] {
  return rig.control().map(({ id, packet }) => {
    if (packet.cmd === 'subscribe') {
      const p = packet as mqttPacket.ISubscribePacket;
      return { id, text: p.subscriptions.map((s) => `sub ${s.topic} q${s.qos}`).join(', '), subId: p.properties?.subscriptionIdentifier as number | undefined };
    }
    assert.equal(packet.cmd, 'unsubscribe');
    return { id, text: `unsub ${(packet as mqttPacket.IUnsubscribePacket).unsubscriptions.join(', ')}` };
  });
}

/** Holds `filter` on shard `s` and answers its SUBSCRIBE (which must be the only packet). */
async function held(rig: Rig, s: number, filter: string, qos: number, granted = qos): Promise<number | undefined> {
  await rig.ops(s, [{ filter, qos, req: 0 }]);
  const [sub, ...more] = controls(rig);
  assert.deepEqual(more, []);
  assert.equal(sub.text, `sub ${filter} q${qos}`);
  rig.dl.onSuback(sub.id, [granted]);
  await rig.acks(s);
  return sub.subId;
}

const tagOf = (rig: Rig, s: number, f: string): number => (HOLD_REQ | rig.holdId(s, f)) >>> 0;

test('covered: a filter under one held at the broker (granted as high) is not subscribed; the cover\'s copies reach its holds', withRig({ v5: true, shards: 2 }, async (rig) => {
  const hash = await held(rig, 0, 'a/#', 1);
  await rig.ops(1, [{ filter: 'a/b', qos: 1, req: 0 }, { filter: 'a/+/c', qos: 0, req: 0 }, { filter: 'b', qos: 1, req: 0 }]);
  assert.deepEqual(controls(rig).map((c) => c.text), ['sub b q1'], 'only the filter nothing covers');
  assert.deepEqual(await rig.acks(1), [{ filter: 'a/b', qos: 1, granted: 1 }, { filter: 'a/+/c', qos: 0, granted: 0 }], 'answered at once');
  assert.equal(rig.dl.filterCount, 4);
  assert.equal(rig.dl.coveredCount, 2);
  assert.equal(rig.dl.subscribedCount, 2);

  rig.publish('a/b', 'm1', { qos: 1, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(0).map((r) => r.req), [tagOf(rig, 0, 'a/#')]);
  assert.deepEqual(rig.records(1).map((r) => r.req), [tagOf(rig, 1, 'a/b')], 'the covered filter\'s hold, once');
  rig.publish('a/x/c', 'm2', { qos: 1, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(1).map((r) => r.req), [tagOf(rig, 1, 'a/+/c')]);
  rig.publish('a/z', 'm3', { qos: 1, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(1), [], 'no covered filter matches a/z');
  assert.equal(rig.records(0).length, 2, 'the cover\'s own holder got a/x/c and a/z');
}));

test('covered: not when the cover was granted a lower QoS, nor for topics starting with $ under #, nor with FANOUT_COVER_FILTERS=false', async () => {
  await withRig({ v5: true }, async (rig) => {
    await held(rig, 0, '#', 1, 0);
    await rig.ops(0, [{ filter: 'a/b', qos: 1, req: 0 }, { filter: '$SYS/x', qos: 0, req: 0 }, { filter: 'c', qos: 0, req: 0 }]);
    assert.deepEqual(controls(rig).map((c) => c.text), ['sub a/b q1', 'sub $SYS/x q0']);
    assert.equal(rig.dl.coveredCount, 1);
  })();
  await withRig({ v5: true, cover: false }, async (rig) => {
    await held(rig, 0, '#', 1);
    await rig.ops(0, [{ filter: 'a/b', qos: 1, req: 0 }]);
    assert.deepEqual(controls(rig).map((c) => c.text), ['sub a/b q1']);
    assert.equal(rig.dl.coveredCount, 0);
  })();
});

test('covered: a holder asking more than the cover was granted gets a subscription of its own; the cover serves until its SUBACK', withRig({ v5: true, shards: 2 }, async (rig) => {
  const hash = await held(rig, 0, '#', 0);
  await rig.ops(1, [{ filter: 'a', qos: 0, req: 0 }]);
  assert.deepEqual(controls(rig), []);
  await rig.ops(0, [{ filter: 'a', qos: 1, req: 0 }]);
  const [own] = controls(rig);
  assert.equal(own.text, 'sub a q1');
  rig.publish('a', 'before', { qos: 0, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(1).map((r) => r.payload), ['before'], 'served by the cover until the SUBACK');
  rig.dl.onSuback(own.id, [1]);
  rig.publish('a', 'after', { qos: 0, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(1), [], 'the cover\'s copy is not for it any more');
  rig.publish('a', 'own', { qos: 1, properties: { subscriptionIdentifier: own.subId } });
  assert.deepEqual(rig.records(1).map((r) => r.payload), ['own']);
  assert.equal(rig.dl.coveredCount, 0);
}));

test('covered: when the cover is released, what it covers is subscribed first; the cover\'s UNSUBSCRIBE follows the SUBACKs', withRig({ v5: true, shards: 2 }, async (rig) => {
  const hash = await held(rig, 0, 'a/#', 1);
  await rig.ops(1, [{ filter: 'a/b', qos: 1, req: 0 }, { filter: 'a/c', qos: 0, req: 0 }]);
  await rig.acks(1);
  await rig.ops(0, [{ filter: 'a/#', qos: -1, req: 0 }]);
  const subs = controls(rig);
  assert.deepEqual(subs.map((c) => c.text), ['sub a/b q1', 'sub a/c q0'], 'no UNSUBSCRIBE a/# yet');
  assert.equal(rig.dl.subscribedCount, 1, 'a/# is still subscribed for them');
  rig.publish('a/b', 'gap', { qos: 1, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(1).map((r) => r.payload), ['gap'], 'the released cover still serves');
  assert.deepEqual(rig.records(0), [], 'not its former holder');
  rig.dl.onSuback(subs[0].id, [1]);
  assert.deepEqual(controls(rig), [], 'a/c still relies on it');
  rig.dl.onSuback(subs[1].id, [0]);
  assert.deepEqual(controls(rig).map((c) => c.text), ['unsub a/#']);
  assert.equal(rig.dl.subscribedCount, 2);
  assert.equal(rig.dl.coveredCount, 0);
  rig.publish('a/b', 'own', { qos: 1, properties: { subscriptionIdentifier: subs[0].subId } });
  assert.deepEqual(rig.records(1).map((r) => r.payload), ['own']);
  await rig.acks(1);
}));

test('covered: a released cover held again before its covered filters had their SUBACKs never leaves the broker', withRig({ v5: true, shards: 2 }, async (rig) => {
  await held(rig, 0, '#', 1);
  await rig.ops(1, [{ filter: 'x/y', qos: 1, req: 0 }]);
  await rig.ops(0, [{ filter: '#', qos: -1, req: 0 }]);
  const [sub] = controls(rig);
  assert.equal(sub.text, 'sub x/y q1');
  await rig.ops(0, [{ filter: '#', qos: 1, req: 0 }]);
  assert.deepEqual(await rig.acks(0), [{ filter: '#', qos: 1, granted: 1 }], 'answered from its standing SUBACK');
  rig.dl.onSuback(sub.id, [1]);
  assert.deepEqual(controls(rig), [], 'no UNSUBSCRIBE of #');
  assert.equal(rig.dl.subscribedCount, 2);
}));

test('covered: when the cover is released, another cover takes over without any SUBSCRIBE', withRig({ v5: true, shards: 1 }, async (rig) => {
  const plus = await held(rig, 0, 'a/+', 1);
  const hash = await held(rig, 0, '#', 1);
  await rig.ops(0, [{ filter: 'a/b', qos: 1, req: 0 }]);
  assert.deepEqual(controls(rig), []);
  await rig.acks(0);
  // Whichever of the two covers it, releasing that one moves it to the other.
  rig.publish('a/b', 'p', { qos: 1, properties: { subscriptionIdentifier: plus } });
  const viaPlus = rig.records(0).some((r) => r.req === tagOf(rig, 0, 'a/b'));
  const [gone, stays] = viaPlus ? ['a/+', hash] : ['#', plus];
  await rig.ops(0, [{ filter: gone, qos: -1, req: 0 }]);
  assert.deepEqual(controls(rig).map((c) => c.text), [`unsub ${gone}`]);
  rig.publish('a/b', 'q', { qos: 1, properties: { subscriptionIdentifier: stays } });
  assert.ok(rig.records(0).some((r) => r.req === tagOf(rig, 0, 'a/b')), 'served by the other cover');
  assert.equal(rig.dl.coveredCount, 1);
}));

test('covered: a filter subscribed for its retained messages hands over to its cover once they came (UNSUBSCRIBE, then the cover\'s copies)', withRig({ v5: true, shards: 2 }, async (rig) => {
  const hash = await held(rig, 0, '#', 1);
  await rig.ops(1, [{ filter: 'r/1', qos: 1, req: 7 }]);
  const [own] = controls(rig);
  assert.equal(own.text, 'sub r/1 q1', 'subscribed: the broker sends retained messages on SUBSCRIBE');
  rig.dl.onSuback(own.id, [1]);
  assert.deepEqual(await rig.acks(1), [{ filter: 'r/1', qos: 1, granted: 1 }]);
  rig.publish('r/1', 'kept', { qos: 1, retain: true, properties: { subscriptionIdentifier: own.subId } });
  assert.deepEqual(rig.records(1).map((r) => `${r.payload} req=${r.req}`), ['kept req=7']);
  assert.deepEqual(controls(rig), []);
  await new Promise((r) => setTimeout(r, 800));
  const [unsub] = controls(rig);
  assert.equal(unsub.text, 'unsub r/1');
  // Until the UNSUBACK its own copies serve it and the cover's do not.
  rig.publish('r/1', 'mine', { qos: 1, properties: { subscriptionIdentifier: own.subId } });
  rig.publish('r/1', 'cover1', { qos: 1, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(1).map((r) => r.payload), ['mine']);
  rig.dl.onUnsuback(unsub.id);
  rig.publish('r/1', 'cover2', { qos: 1, properties: { subscriptionIdentifier: hash } });
  assert.deepEqual(rig.records(1).map((r) => r.payload), ['cover2']);
  assert.equal(rig.dl.coveredCount, 1);
  assert.equal(rig.records(0).length, 2, 'the cover\'s holder got both');
}));

test('covered, MQTT 3.1.1: messages go by topic to the covered filter\'s shard; a new session subscribes only the cover', withRig({ shards: 2 }, async (rig) => {
  await held(rig, 0, 'dev/#', 1);
  await rig.ops(1, [{ filter: 'dev/7/cmd', qos: 1, req: 0 }]);
  assert.deepEqual(controls(rig), []);
  rig.publish('dev/7/cmd', 'go', { qos: 1 });
  assert.deepEqual([0, 1].map((s) => rig.records(s).map((r) => r.req)), [[0], [0]]);
  rig.dl.onConnected(false);
  assert.deepEqual(controls(rig).map((c) => c.text), ['sub dev/# q1']);
  assert.equal(rig.dl.coveredCount, 1);
}));
