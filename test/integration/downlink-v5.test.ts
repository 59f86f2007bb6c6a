// Downlink conformance, MQTT 5 features: PUBLISH properties passed through unaltered, message
// expiry, the device's Receive Maximum and Maximum Packet Size, No Local, subscription
// identifiers, Retain Handling / Retain As Published, shared subscriptions and a stray AUTH.
// Where the order or the exact bytes of properties matter, the upstream PUBLISH is built by
// hand and the device's copy is decoded here, since mqtt-packet folds user properties into an
// object and loses their order.
// Same targets as downlink.test.ts: the proxy (default) or mosquitto (DOWNLINK_TARGET=mosquitto).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type * as mqttPacket from 'mqtt-packet';
import { RawClient, splitPackets, type RawPacket } from '../helpers/clients';
import {
  type Device, DELIVERY_MS, publishesOf, rawSubscribe, rawSubscribeOk, settle, startTarget, targetKind, type Target, textOf, unique, waitPublishes,
} from '../helpers/target';
import { Scope, sleep, waitFor } from '../helpers/wait';
import { varint } from '../helpers/bytes';

const kind = targetKind();
let target: Target;
let scope: Scope;

const base = (tag: string): string => `dl5/${unique(tag)}`;

async function device(label?: string, opts: Parameters<Target['connectDevice']>[0] = {}): Promise<Device> {
  return scope.use(await target.connectDevice({ protocolVersion: 5, ...opts }, label));
}

async function upstream(): Promise<Device> {
  return scope.use(await target.connectUpstream({ protocolVersion: 5 }, 'upstream publisher'));
}

// --- PUBLISH bytes with properties in a chosen order, and their decoding ---------------------


function str(s: string | Buffer): Buffer {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8');
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
}

type Prop =
  | { id: 0x01; value: number } // Payload Format Indicator
  | { id: 0x02; value: number } // Message Expiry Interval
  | { id: 0x03; value: string } // Content Type
  | { id: 0x08; value: string } // Response Topic
  | { id: 0x09; value: Buffer } // Correlation Data
  | { id: 0x0b; value: number } // Subscription Identifier
  | { id: 0x23; value: number } // Topic Alias
  | { id: 0x26; value: [string, string] }; // User Property

function encodeProps(props: Prop[]): Buffer {
  const parts: Buffer[] = [];
  for (const p of props) {
    switch (p.id) {
      case 0x01: parts.push(Buffer.from([p.id, p.value])); break;
      case 0x02: { const b = Buffer.alloc(5); b[0] = p.id; b.writeUInt32BE(p.value, 1); parts.push(b); break; }
      case 0x03: case 0x08: parts.push(Buffer.from([p.id]), str(p.value)); break;
      case 0x09: parts.push(Buffer.from([p.id]), str(p.value)); break;
      case 0x0b: parts.push(Buffer.from([p.id, ...varint(p.value)])); break;
      case 0x23: parts.push(Buffer.from([p.id, p.value >> 8, p.value & 0xff])); break;
      case 0x26: parts.push(Buffer.from([p.id]), str(p.value[0]), str(p.value[1])); break;
    }
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from(varint(body.length)), body]);
}

/** An MQTT 5 PUBLISH at QoS 1 with packet id 1. */
function publishV5(topic: string, payload: Buffer, props: Prop[], retain = false): Buffer {
  const body = Buffer.concat([str(topic), Buffer.from([0, 1]), encodeProps(props), payload]);
  return Buffer.concat([Buffer.from([0x30 | (1 << 1) | (retain ? 1 : 0), ...varint(body.length)]), body]);
}

interface Decoded {
  topic: string;
  qos: number;
  retain: boolean;
  messageId: number | undefined;
  props: Prop[];
  payload: Buffer;
}

/** Decodes an MQTT 5 PUBLISH, keeping its properties in wire order. */
function decodePublishV5(p: RawPacket): Decoded {
  const b = p.body;
  const qos = (p.header >> 1) & 3;
  let pos = 0;
  const readStr = (): Buffer => {
    const n = b.readUInt16BE(pos);
    const s = b.subarray(pos + 2, pos + 2 + n);
    pos += 2 + n;
    return s;
  };
  const readVarint = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const x = b[pos++];
      v += (x & 0x7f) * mul;
      if ((x & 0x80) === 0) return v;
      mul *= 128;
    }
  };
  const topic = readStr().toString('utf8');
  let messageId: number | undefined;
  if (qos > 0) {
    messageId = b.readUInt16BE(pos);
    pos += 2;
  }
  const end = readVarint() + pos;
  const props: Prop[] = [];
  while (pos < end) {
    const id = b[pos++];
    switch (id) {
      case 0x01: props.push({ id, value: b[pos++] }); break;
      case 0x02: props.push({ id, value: b.readUInt32BE(pos) }); pos += 4; break;
      case 0x03: case 0x08: props.push({ id, value: readStr().toString('utf8') }); break;
      case 0x09: props.push({ id, value: Buffer.from(readStr()) }); break;
      case 0x0b: props.push({ id, value: readVarint() }); break;
      case 0x23: props.push({ id, value: b.readUInt16BE(pos) }); pos += 2; break;
      case 0x26: { const k = readStr().toString('utf8'); const v = readStr().toString('utf8'); props.push({ id, value: [k, v] }); break; }
      default: throw new Error(`unexpected PUBLISH property 0x${id.toString(16)} at ${pos - 1}`);
    }
  }
  return { topic, qos, retain: (p.header & 1) === 1, messageId, props, payload: b.subarray(end) };
}

function receivedPublishes(raw: RawClient): Decoded[] {
  return splitPackets(Buffer.concat(raw.bytes)).filter((p) => p.type === 3).map(decodePublishV5);
}

const show = (props: Prop[]): string => JSON.stringify(props.map((p) => [`0x${p.id.toString(16)}`, Buffer.isBuffer(p.value) ? p.value.toString('hex') : p.value]));

/** The properties a publisher set, in an order a naive object-based codec would not keep. */
function appProperties(tag: string): Prop[] {
  return [
    { id: 0x26, value: ['k1', 'first'] },
    { id: 0x01, value: 1 },
    { id: 0x26, value: ['k2', 'second'] },
    { id: 0x03, value: 'application/json; charset=utf-8' },
    { id: 0x08, value: `reply/${tag}/ü` },
    { id: 0x26, value: ['k1', 'third'] },
    { id: 0x09, value: Buffer.from([0x00, 0xff, 0x10, 0x80, 0x7f, 0x00]) },
    { id: 0x26, value: ['ü€', '😀'] },
    { id: 0x26, value: ['k2', 'second'] },
  ];
}

/** Checks what a subscriber got against what was published: user properties in the same order,
 *  every other application property unaltered, nothing a subscriber must not see. */
function assertPropertiesPassed(got: Decoded, sent: Prop[], what: string): void {
  const users = (ps: Prop[]): string[] => ps.filter((p) => p.id === 0x26).map((p) => JSON.stringify(p.value));
  assert.deepEqual(users(got.props), users(sent), `${what}: user properties (order included) [MQTT-3.3.2-17] [MQTT-3.3.2-18]; got ${show(got.props)}`);
  const others = (ps: Prop[]): string[] => ps.filter((p) => ![0x26, 0x0b, 0x23, 0x02].includes(p.id)).map((p) => show([p])).sort();
  assert.deepEqual(others(got.props), others(sent), `${what}: payload format indicator, content type, response topic, correlation data [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-20]; got ${show(got.props)}`);
  assert.equal(got.props.filter((p) => p.id === 0x23).length, 0, `${what}: a Topic Alias was sent to a client that allowed none [MQTT-3.1.2-27]; got ${show(got.props)}`);
}

describe(`downlink MQTT 5 features, target ${kind}`, { timeout: 300_000 }, () => {
  const suite = new Scope();
  // Traced client ids tell which shard each CONNECT landed on (see DaemonProcess.connectShards).
  before(async () => { target = suite.use(await startTarget({ env: { FANOUT_TRACE_CLIENTS: 'sharem*' } })); });
  after(() => suite.close());
  const fresh = (t: { after(fn: () => unknown): void }): void => {
    scope = new Scope();
    t.after(() => scope.close());
  };

  test('application properties of a live message reach the device unaltered, user properties in order [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20]', async (t) => {
    fresh(t);
    const b = base('props');
    const dev = scope.use(await target.rawDevice(5));
    await rawSubscribeOk(dev, [{ topic: `${b}/t`, qos: 1 }], 1);
    const pub = scope.use(await RawClient.connected(target.upstreamPort, 5));
    const sent = appProperties(b);
    const payload = Buffer.from('{"ok":true,"ü":"€"}', 'utf8');
    pub.send(publishV5(`${b}/t`, payload, sent));
    await pub.waitForPacket('puback', DELIVERY_MS);
    const [m] = await waitPublishes(dev, 1, (p) => p.topic === `${b}/t`, 'the message with properties');
    dev.sendPacket({ cmd: 'puback', messageId: m.messageId! });
    const [got] = receivedPublishes(dev).filter((p) => p.topic === `${b}/t`);
    assert.deepEqual(got.payload, payload, 'payload');
    assertPropertiesPassed(got, sent, 'live message');
  });

  test('application properties of a retained message reach a new subscriber unaltered, user properties in order [MQTT-3.3.2-17] [MQTT-3.3.2-18]', async (t) => {
    fresh(t);
    const b = base('props-ret');
    const pub = scope.use(await RawClient.connected(target.upstreamPort, 5));
    const sent = appProperties(b);
    const payload = Buffer.from('{"retained":true}', 'utf8');
    pub.send(publishV5(`${b}/t`, payload, sent, true));
    await pub.waitForPacket('puback', DELIVERY_MS);
    const dev = scope.use(await target.rawDevice(5));
    await rawSubscribeOk(dev, [{ topic: `${b}/#`, qos: 1 }], 1);
    const [m] = await waitPublishes(dev, 1, (p) => p.topic === `${b}/t`, 'the retained message');
    dev.sendPacket({ cmd: 'puback', messageId: m.messageId! });
    const [got] = receivedPublishes(dev).filter((p) => p.topic === `${b}/t`);
    assert.equal(got.retain, true, 'RETAIN flag');
    assert.deepEqual(got.payload, payload, 'payload');
    assertPropertiesPassed(got, sent, 'retained message');
  });

  test('mqtt.js view of the same: userProperties, contentType, payloadFormatIndicator, responseTopic, correlationData as published (QoS 0, 1 and 2)', async (t) => {
    fresh(t);
    const b = base('props-js');
    const d = await device();
    await d.subscribeOk(`${b}/+`, { qos: 2 });
    const pub = await upstream();
    const properties = {
      userProperties: { region: 'eu', tags: ['a', 'b'] }, contentType: 'text/plain', payloadFormatIndicator: true,
      responseTopic: `${b}/reply`, correlationData: Buffer.from('corr-123'),
    };
    for (const qos of [0, 1, 2] as const) await pub.publish(`${b}/q${qos}`, `q${qos}`, { qos, properties });
    for (const qos of [0, 1, 2] as const) {
      const [m] = await d.waitOn(`${b}/q${qos}`);
      const p = m.properties ?? {};
      assert.deepEqual({ ...p.userProperties }, properties.userProperties, `userProperties at QoS ${qos}`);
      assert.equal(p.contentType, 'text/plain', `contentType at QoS ${qos}`);
      assert.equal(p.payloadFormatIndicator, true, `payloadFormatIndicator at QoS ${qos}`);
      assert.equal(p.responseTopic, `${b}/reply`, `responseTopic at QoS ${qos}`);
      assert.deepEqual(p.correlationData, Buffer.from('corr-123'), `correlationData at QoS ${qos}`);
    }
  });

  test('a live message keeps a Message Expiry Interval no larger than published [MQTT-3.3.2-6]; one without expiry gets none', async (t) => {
    fresh(t);
    const b = base('exp-live');
    const d = await device();
    await d.subscribeOk(`${b}/t`, { qos: 1 });
    const pub = await upstream();
    await pub.publish(`${b}/t`, 'with', { qos: 1, properties: { messageExpiryInterval: 60 } });
    await pub.publish(`${b}/t`, 'without', { qos: 1 });
    const [withExpiry, without] = await d.waitOn(`${b}/t`, 2);
    const e = withExpiry.properties?.messageExpiryInterval;
    assert.ok(e !== undefined && e >= 1 && e <= 60, `Message Expiry Interval ${e}, published 60`);
    assert.equal(without.properties?.messageExpiryInterval, undefined, 'a message published without expiry got one');
  });

  test('messages queued for an offline session: expiry 1 s is dropped after 2.2 s away [MQTT-3.3.2-5], expiry 60 is delivered with the interval reduced by the time waited [MQTT-3.3.2-6]', async (t) => {
    fresh(t);
    const b = base('exp-queued');
    const clientId = unique('exp');
    const opts = { protocolVersion: 5 as const, clientId, clean: false, properties: { sessionExpiryInterval: 60 } };
    const d1 = await device('device (first connection)', opts);
    await d1.subscribeOk(`${b}/t`, { qos: 1 });
    await d1.client.endAsync(false);
    const pub = await upstream();
    await pub.publish(`${b}/t`, 'short', { qos: 1, properties: { messageExpiryInterval: 1 } });
    await pub.publish(`${b}/t`, 'long', { qos: 1, properties: { messageExpiryInterval: 60 } });
    await sleep(2200);
    const d2 = await device('device (back after 2.2 s)', opts);
    assert.equal(d2.sessionPresent, true, 'session present');
    await d2.waitFor(1, (m) => m.text === 'long', 'the message with expiry 60');
    await pub.publish(`${b}/t`, 'fence', { qos: 1 });
    await d2.waitFor(1, (m) => m.text === 'fence', 'the fence');
    await settle();
    assert.deepEqual(d2.on(`${b}/t`).map((m) => m.text), ['long', 'fence'], 'the expired message was delivered');
    const e = d2.on(`${b}/t`)[0].properties?.messageExpiryInterval;
    // It waited at least 2.2 s: whatever the rounding, at most 58 of the 60 s remain.
    assert.ok(e !== undefined && e >= 1 && e <= 58, `Message Expiry Interval ${e} after waiting 2.2 s of 60`);
    await d2.client.endAsync(false, { properties: { sessionExpiryInterval: 0 } });
  });

  // mosquitto 2.0.11 honours the Receive Maximum only until the first acknowledgements: with
  // Receive Maximum 2 it sends 2, then 4 after 2 PUBACKs, then 8 (its send quota grows by two per
  // PUBACK). The spec is unambiguous, so the test keeps the spec's expectation and is marked
  // TODO against mosquitto instead of adopting the bug.
  test('Receive Maximum 2: at most 2 unacknowledged QoS 1 PUBLISHes reach the device, the rest follow as it acknowledges, in order; other packets are not held back [MQTT-3.3.4-9] [MQTT-3.3.4-10] [MQTT-4.9.0-2] [MQTT-4.9.0-3]', {
    todo: kind === 'mosquitto' ? 'mosquitto 2.0.11 exceeds the Receive Maximum after the first PUBACKs (2, then 4, then 8 outstanding)' : false,
  }, async (t) => {
    fresh(t);
    const b = base('recvmax');
    const dev = scope.use(await target.rawDevice(5, { properties: { receiveMaximum: 2 } }));
    await rawSubscribeOk(dev, [{ topic: `${b}/t`, qos: 1 }], 1);
    const pub = await upstream();
    const N = 20;
    await Promise.all(Array.from({ length: N }, (_, i) => pub.publish(`${b}/t`, String(i), { qos: 1 })));
    let acked = 0;
    const maxSeen: number[] = [];
    await waitPublishes(dev, 2, () => true, 'the first 2 messages');
    // While the quota is used up the server still answers PINGREQ.
    dev.sendPacket({ cmd: 'pingreq' });
    await dev.waitForPacket('pingresp', DELIVERY_MS);
    while (acked < N) {
      await settle();
      const got = publishesOf(dev);
      const unacked = got.length - acked;
      maxSeen.push(unacked);
      assert.ok(unacked <= 2, `${unacked} unacknowledged PUBLISHes outstanding with Receive Maximum 2 (after ${acked} acks)`);
      assert.ok(unacked > 0, `nothing more arrived after ${acked} acknowledgements`);
      for (const p of got.slice(acked)) dev.sendPacket({ cmd: 'puback', messageId: p.messageId! });
      acked = got.length;
      if (acked < N) await waitPublishes(dev, acked + 1, () => true, `message ${acked + 1} after acknowledging ${acked}`);
    }
    await settle();
    assert.deepEqual(publishesOf(dev).map(textOf), Array.from({ length: N }, (_, i) => String(i)), 'messages, in order, each once');
    t.diagnostic(`unacknowledged counts seen: ${maxSeen.join(',')}`);
  });

  test('Maximum Packet Size 256: a larger message is not sent to the device, the next small one is [MQTT-3.1.2-24] [MQTT-3.1.2-25]', async (t) => {
    fresh(t);
    const b = base('maxpkt');
    const dev = scope.use(await target.rawDevice(5, { properties: { maximumPacketSize: 256 } }));
    await rawSubscribeOk(dev, [{ topic: `${b}/t`, qos: 1 }], 1);
    const pub = await upstream();
    await pub.publish(`${b}/t`, Buffer.alloc(1000, 0x61), { qos: 1 });
    await pub.publish(`${b}/t`, 'small', { qos: 1 });
    const [small] = await waitPublishes(dev, 1, (p) => textOf(p) === 'small', 'the small message');
    dev.sendPacket({ cmd: 'puback', messageId: small.messageId! });
    await settle();
    const sizes = splitPackets(Buffer.concat(dev.bytes)).map((p) => 1 + varint(p.body.length).length + p.body.length);
    assert.ok(sizes.every((s) => s <= 256), `packet sizes sent to the device: ${sizes.join(', ')}`);
    assert.deepEqual(publishesOf(dev).map(textOf), ['small'], 'PUBLISHes the device got');
    assert.equal(dev.closed, false, 'the device was disconnected');
  });

  test('No Local: a device subscribed with No Local does not get its own message; another device does [MQTT-3.8.3-3]', async (t) => {
    fresh(t);
    const b = base('nolocal');
    const self = await device('publisher with No Local');
    await self.subscribeOk({ [`${b}/t`]: { qos: 1, nl: true } });
    const other = await device('other device');
    await other.subscribeOk(`${b}/t`, { qos: 1 });
    await self.publish(`${b}/t`, 'own', { qos: 1 });
    const pub = await upstream();
    await other.waitFor(1, (m) => m.text === 'own', 'the device\'s message');
    await pub.publish(`${b}/t`, 'upstream', { qos: 1 });
    await self.waitFor(1, (m) => m.text === 'upstream', 'the upstream message');
    await other.waitFor(1, (m) => m.text === 'upstream', 'the upstream message');
    await settle();
    assert.deepEqual(self.on(`${b}/t`).map((m) => m.text), ['upstream'], 'the No Local subscriber got its own message');
    assert.deepEqual(other.on(`${b}/t`).map((m) => m.text), ['own', 'upstream'], 'the other device');
  });

  test('subscription identifiers: a message carries the identifier of the subscription it matched, none without one, the new one after the subscription is replaced [MQTT-3.3.4-3] [MQTT-3.8.4-3] (section 3.8.2.1.2)', async (t) => {
    fresh(t);
    const b = base('subid');
    const d = await device();
    await d.subscribeOk(`${b}/a`, { qos: 1, properties: { subscriptionIdentifier: 7 } });
    await d.subscribeOk(`${b}/b`, { qos: 1 });
    const pub = await upstream();
    await pub.publish(`${b}/a`, 'a1', { qos: 1 });
    await pub.publish(`${b}/b`, 'b1', { qos: 1 });
    const [a1] = await d.waitOn(`${b}/a`);
    const [b1] = await d.waitOn(`${b}/b`);
    assert.equal(a1.properties?.subscriptionIdentifier, 7, 'identifier of the subscription to a');
    assert.equal(b1.properties?.subscriptionIdentifier, undefined, 'identifier on a message matching a subscription without one');
    await d.subscribeOk(`${b}/a`, { qos: 1, properties: { subscriptionIdentifier: 268435455 } });
    await pub.publish(`${b}/a`, 'a2', { qos: 1 });
    const [, a2] = await d.waitOn(`${b}/a`, 2);
    assert.equal(a2.properties?.subscriptionIdentifier, 268435455, 'identifier after replacing the subscription (largest allowed value)');
  });

  test('Retain Handling 1: retained messages are sent only when the subscription is new to the session, per device [MQTT-3.3.1-10]', async (t) => {
    fresh(t);
    const b = base('rh1');
    const pub = await upstream();
    await pub.publish(`${b}/r`, 'kept', { qos: 1, retain: true });
    const d1 = await device('device 1');
    await d1.subscribeOk({ [`${b}/r`]: { qos: 1, rh: 1 } });
    const [first] = await d1.waitOn(`${b}/r`);
    assert.equal(first.retain, true);
    await d1.subscribeOk({ [`${b}/r`]: { qos: 1, rh: 1 } });
    // Another device's subscription is new to its own session: it gets the retained message.
    const d2 = await device('device 2');
    await d2.subscribeOk({ [`${b}/r`]: { qos: 1, rh: 1 } });
    await d2.waitOn(`${b}/r`);
    await pub.publish(`${b}/r`, 'live', { qos: 1 });
    await d1.waitFor(1, (m) => m.text === 'live', 'the live message');
    await settle();
    assert.deepEqual(d1.on(`${b}/r`).map((m) => `${m.text} retain=${m.retain}`), ['kept retain=true', 'live retain=false'], 'device 1: the retained message was sent again for an existing subscription');
    assert.equal(d2.on(`${b}/r`)[0].text, 'kept');
  });

  test('Retain Handling 2: no retained message at subscribe time, live messages still flow [MQTT-3.3.1-11]', async (t) => {
    fresh(t);
    const b = base('rh2');
    const pub = await upstream();
    await pub.publish(`${b}/r`, 'kept', { qos: 1, retain: true });
    const d = await device();
    await d.subscribeOk({ [`${b}/#`]: { qos: 1, rh: 2 } });
    await pub.publish(`${b}/r`, 'live', { qos: 1 });
    await d.waitFor(1, (m) => m.text === 'live', 'the live message');
    await settle();
    assert.deepEqual(d.on(`${b}/r`).map((m) => m.text), ['live'], 'messages with Retain Handling 2');
  });

  test('Retain As Published: live messages keep the RETAIN flag they were published with [MQTT-3.3.1-13]; without it they arrive with RETAIN 0 [MQTT-3.3.1-12]', async (t) => {
    fresh(t);
    const b = base('rap');
    const withRap = await device('device with Retain As Published');
    await withRap.subscribeOk({ [`${b}/r`]: { qos: 1, rap: true } });
    const without = await device('device without');
    await without.subscribeOk({ [`${b}/r`]: { qos: 1, rap: false } });
    const pub = await upstream();
    await pub.publish(`${b}/r`, 'retained', { qos: 1, retain: true });
    await pub.publish(`${b}/r`, 'plain', { qos: 1, retain: false });
    const got = await withRap.waitOn(`${b}/r`, 2);
    assert.deepEqual(got.map((m) => `${m.text} retain=${m.retain}`), ['retained retain=true', 'plain retain=false'], 'with Retain As Published');
    const got2 = await without.waitOn(`${b}/r`, 2);
    assert.deepEqual(got2.map((m) => `${m.text} retain=${m.retain}`), ['retained retain=false', 'plain retain=false'], 'without Retain As Published');
  });

  test('shared subscription $share/g/t/#: with 2 devices in the group every message goes to exactly one of them, on its real topic (section 4.8.2) [MQTT-4.8.2-3]', async (t) => {
    fresh(t);
    const b = base('share');
    const group = unique('g');
    const members = [await device('member 1'), await device('member 2')];
    for (const m of members) await m.subscribeOk(`$share/${group}/${b}/#`, { qos: 1 });
    const pub = await upstream();
    const N = 20;
    await Promise.all(Array.from({ length: N }, (_, i) => pub.publish(`${b}/x/${i % 3}`, `m${i}`, { qos: 1 })));
    await waitFor('all messages to reach the group', () => members.reduce((n, m) => n + m.messages.length, 0) >= N, {
      timeoutMs: DELIVERY_MS, detail: () => members.map((m) => m.describe()).join(' | '),
    });
    await settle();
    const all = members.flatMap((m) => m.messages);
    assert.deepEqual(all.map((m) => m.text).sort(), Array.from({ length: N }, (_, i) => `m${i}`).sort(), 'each message delivered to exactly one member');
    for (const m of all) {
      assert.equal(m.topic, `${b}/x/${Number(m.text.slice(1)) % 3}`, 'topic of a shared-subscription delivery');
      assert.equal(m.qos, 1, 'QoS granted to the member');
    }
    t.diagnostic(`split: ${members.map((m) => m.messages.length).join(' / ')}`);
  });

  test(`an AUTH packet on a connection made without an Authentication Method is a protocol error: ${kind === 'proxy' ? 'DISCONNECT 0x82 and closed' : 'closed (a DISCONNECT, if sent, says 0x82 or 0x8C)'}; the server sends no AUTH [MQTT-4.12.0-6] [MQTT-4.12.0-7] [MQTT-4.13.1-1]`, async (t) => {
    fresh(t);
    const raw = scope.use(await target.rawDevice(5));
    raw.sendPacket({ cmd: 'auth', reasonCode: 0x19, properties: { authenticationMethod: 'SCRAM-SHA-1' } });
    await raw.waitClosed(DELIVERY_MS);
    const cmds = raw.packets.map((p) => p.cmd);
    assert.ok(!cmds.includes('auth'), `the server sent AUTH: ${raw.describe()}`);
    assert.deepEqual(cmds.filter((c) => c !== 'connack' && c !== 'disconnect'), [], raw.describe());
    const reason = raw.disconnectReason();
    // mosquitto 2.0.11 may just close; the proxy says why, as section 4.13 asks.
    if (kind === 'proxy') assert.equal(reason, 0x82, raw.describe());
    else if (reason !== undefined) assert.ok([0x82, 0x8c].includes(reason), `DISCONNECT reason 0x${reason.toString(16)}: ${raw.describe()}`);
  });

  test('a CONNECT with an Authentication Method the server does not support gets CONNACK 0x8C (Bad authentication method) and is closed, without AUTH [MQTT-4.12.0-1]', async (t) => {
    fresh(t);
    const raw = scope.use(await target.openRawDevice(5));
    raw.sendPacket({
      cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 0, clientId: unique('authm'),
      properties: { authenticationMethod: 'SCRAM-SHA-1', authenticationData: Buffer.from('n,,n=user,r=abc') },
    } as mqttPacket.IConnectPacket);
    const connack = await raw.waitForPacket('connack') as mqttPacket.IConnackPacket;
    assert.equal(connack.reasonCode, 0x8c, raw.describe());
    await raw.waitClosed(DELIVERY_MS);
    assert.deepEqual(raw.packets.map((p) => p.cmd), ['connack'], raw.describe());
  });

  // mosquitto 2.0.11 is no reference here: it grants $share/g and $share//x, and closes on a
  // ShareName with + or # (0x81); it also grants No Local on a shared subscription.
  const proxyOnly = kind === 'proxy' ? false : 'mosquitto 2.0.11 does not follow section 4.8.2 here';

  for (const v of [5, 4] as const) {
    test(`invalid shared subscriptions ($share/g, $share//x, $share/g+/x, $share/g#/x) get SUBACK ${v === 5 ? '0x8F' : '0x80'} each, beside a valid one (MQTT ${v === 5 ? '5' : '3.1.1'}), and the connection stays [MQTT-4.8.2-1] [MQTT-4.8.2-2]`, { skip: proxyOnly }, async (t) => {
      fresh(t);
      const b = base('badshare');
      const raw = scope.use(await target.rawDevice(v));
      const bad = ['$share/g', '$share//x', `$share/g+/${b}`, `$share/g#/${b}`];
      const codes = await rawSubscribe(raw, [...bad, `$share/${unique('g')}/${b}/#`].map((topic) => ({ topic, qos: 1 as const })), 7);
      assert.deepEqual(codes, [...bad.map(() => (v === 5 ? 0x8f : 0x80)), 1], raw.describe());
      raw.sendPacket({ cmd: 'pingreq' });
      await waitFor('PINGRESP', () => raw.packets.some((p) => p.cmd === 'pingresp'), { timeoutMs: DELIVERY_MS, detail: () => raw.describe() });
      assert.equal(raw.closed, false);
    });
  }

  test('No Local on a shared subscription is a protocol error: DISCONNECT 0x82 and closed, no SUBACK [MQTT-3.8.3-4]', { skip: proxyOnly }, async (t) => {
    fresh(t);
    const raw = scope.use(await target.rawDevice(5));
    raw.sendPacket({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: `$share/${unique('g')}/${base('nlshare')}/#`, qos: 1, nl: true }] } as mqttPacket.ISubscribePacket);
    await raw.waitClosed(DELIVERY_MS);
    assert.equal(raw.disconnectReason(), 0x82, raw.describe());
    assert.ok(!raw.packets.some((p) => p.cmd === 'suback'), raw.describe());
  });

  test('a shared group whose two members are on different shards gets each message once, and both members get some', { skip: kind === 'proxy' ? false : 'shards are the proxy\'s' }, async (t) => {
    fresh(t);
    const daemon = target.daemon!;
    const b = base('xshare');
    const group = unique('g');
    // One member per shard: connect until both shards have one, and let the others go.
    const members: (Device | undefined)[] = [undefined, undefined];
    for (let i = 0; members.some((m) => m === undefined); i++) {
      assert.ok(i < 30, 'no member on each shard after 30 connections');
      const clientId = unique('sharem');
      const d = await device(`member ${i}`, { clientId });
      const shard = await daemon.shardOfConnect(clientId);
      if (members[shard] === undefined) members[shard] = d;
      else await d.close();
    }
    const both = members as Device[];
    for (const m of both) await m.subscribeOk(`$share/${group}/${b}/#`, { qos: 1 });
    const pub = await upstream();
    const N = 30;
    for (let i = 0; i < N; i++) await pub.publish(`${b}/x`, `m${i}`, { qos: 1 });
    await waitFor('all messages to reach the group', () => both.reduce((n, m) => n + m.messages.length, 0) >= N, {
      timeoutMs: DELIVERY_MS, detail: () => both.map((m) => m.describe()).join(' | '),
    });
    await settle();
    const all = both.flatMap((m) => m.messages.map((x) => x.text));
    assert.deepEqual(all.sort(), Array.from({ length: N }, (_, i) => `m${i}`).sort(), 'each message delivered to exactly one member');
    t.diagnostic(`split: shard 0 ${both[0].messages.length} / shard 1 ${both[1].messages.length}`);
    assert.ok(both.every((m) => m.messages.length > 0), `both shards' members get messages: ${both.map((m) => m.messages.length).join(' / ')}`);
  });
});
