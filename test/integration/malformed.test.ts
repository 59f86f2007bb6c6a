// Malformed and illegal input on raw sockets: every case closes the offending connection (MQTT 5
// connections are first told why with a DISCONNECT reason code), nothing of it is forwarded, and
// the daemon goes on serving normal clients. Then a seeded fuzz loop over random bytes.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Collector, closeClient, connectClient, publish, RawClient, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep } from '../helpers/wait';
import { varint } from '../helpers/bytes';

const MAX_PACKET = 1024;

/** Encodes an MQTT variable byte integer. */

/** A packet: first byte, then the remaining length, then `body`. */
function packet(first: number, ...body: Array<number[] | Buffer>): Buffer {
  const b = Buffer.concat(body.map((p) => Buffer.from(p)));
  return Buffer.concat([Buffer.from([first, ...varint(b.length)]), b]);
}

/** A 2-byte-length-prefixed string. */
function str(s: string | Buffer): Buffer {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
}

/** A PUBLISH body: topic, packet id for QoS > 0, empty property list for MQTT 5, payload. */
function publishBody(version: 4 | 5, topic: string | Buffer, qos: number, payload = 'x'): Buffer {
  return Buffer.concat([str(topic), qos > 0 ? Buffer.from([0, 1]) : Buffer.alloc(0), version === 5 ? Buffer.from([0]) : Buffer.alloc(0), Buffer.from(payload)]);
}

function connectBytes(level: number, clientId: string, name = 'MQTT'): Buffer {
  return packet(0x10, str(name), [level, 0x02, 0x00, 0x3c], level === 5 ? [0] : [], str(clientId));
}

interface Case {
  name: string;
  /** Bytes sent after a successful CONNECT. */
  bytes: (version: 4 | 5) => Buffer;
  /** DISCONNECT reason code an MQTT 5 connection must get. */
  reason: number;
  /** A topic that must not reach the broker, if the case is a PUBLISH. */
  topic?: string;
  /** Protocol levels the case applies to (default both). */
  versions?: Array<4 | 5>;
}

/** An MQTT 5 PUBLISH body with the given raw property bytes. */
function publishBodyV5(topic: string, qos: number, props: number[], payload = 'x'): Buffer {
  return Buffer.concat([str(topic), qos > 0 ? Buffer.from([0, 1]) : Buffer.alloc(0), Buffer.from([...varint(props.length), ...props]), Buffer.from(payload)]);
}

let seq = 0;
const tag = (): string => `${process.pid}-${++seq}`;

describe('malformed input', { timeout: 150_000 }, () => {
  const scope = new Scope();
  let b1: Mosquitto;
  let b2: Mosquitto;
  let daemon: DaemonProcess;
  let at: Collector;
  let at2: Collector;

  before(async () => {
    b1 = scope.use(await Mosquitto.start());
    // b2 speaks MQTT 5, so device properties are forwarded there as they are.
    b2 = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })},b2=${b2.url({ pool: 1, protocol: 5 })}`,
      FANOUT_MAX_PACKET_SIZE: MAX_PACKET,
      FANOUT_LOG_LEVEL: 'debug',
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    at = scope.use(await Collector.start(b1.port, 'mal/#', { qos: 1 }));
    at2 = scope.use(await Collector.start(b2.port, 'mal/#', { qos: 1, protocolVersion: 5 }));
  });
  after(() => scope.close());

  /** A normal device can still connect and its publish reaches both brokers; nothing on
   *  `forbidden` topics (or topics starting with one of `forbiddenPrefixes`) reached either (the
   *  fence publish comes later, on the same broker connections); and neither broker dropped the
   *  daemon's connection, as mosquitto does when it gets a malformed packet. */
  async function assertStillServes(forbidden: string[] = [], forbiddenPrefixes: string[] = []): Promise<void> {
    assert.ok(daemon.running, 'the daemon process died');
    const client = await connectClient(daemon.port, { clientId: `mal-ok-${tag()}` });
    try {
      const topic = `mal/ok/${tag()}`;
      await publish(client, topic, 'still served', { qos: 1 });
      for (const c of [at, at2]) await c.waitForCount(1, (m) => m.topic === topic, 10_000, 'the normal publish at the broker');
    } finally {
      await closeClient(client);
    }
    for (const [name, c] of [['b1', at], ['b2', at2]] as const) {
      for (const t of forbidden) assert.equal(c.count((m) => m.topic === t), 0, `the invalid packet on ${t} was forwarded to ${name}`);
      for (const p of forbiddenPrefixes) assert.equal(c.count((m) => m.topic.startsWith(p)), 0, `a message on ${p}... reached ${name}`);
    }
    for (const [name, b] of [['b1', b1], ['b2', b2]] as const) {
      const ids = b.connectedClientIds().filter((id) => id.startsWith(`${daemon.proxyId}-`));
      assert.deepEqual(ids, [`${daemon.proxyId}-${name}-0`], `${name} dropped the daemon's connection; broker log tail: ${b.log.slice(-1500)}`);
    }
  }

  const cases: Case[] = [
    {
      name: 'remaining length with 5 continuation bytes',
      bytes: () => Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x01, 0x61]),
      reason: 0x81,
    },
    {
      name: 'PUBREL with reserved flags 0000 (must be 0010)',
      bytes: (v) => packet(0x60, [0x00, 0x01], v === 5 ? [0x00] : []),
      reason: 0x81,
    },
    {
      name: 'SUBSCRIBE with reserved flags 0000 (must be 0010)',
      bytes: (v) => packet(0x80, [0x00, 0x01], v === 5 ? [0x00] : [], str('mal/sub'), [0x00]),
      reason: 0x81,
    },
    ...(['mal/q3'].map((topic): Case => ({
      name: 'PUBLISH with QoS 3', topic, bytes: (v) => packet(0x36, publishBody(v, topic, 1)), reason: 0x81,
    }))),
    {
      name: 'PUBLISH with invalid UTF-8 in the topic',
      bytes: (v) => packet(0x30, publishBody(v, Buffer.from([0x6d, 0x61, 0x6c, 0x2f, 0xc3, 0x28]), 0)),
      reason: 0x81,
    },
    {
      name: 'PUBLISH with a U+0000 in the topic',
      bytes: (v) => packet(0x30, publishBody(v, Buffer.from('mal/nul\u0000x'), 0)),
      reason: 0x81,
    },
    ...([['mal/ctl\u0007bell', 'U+0007'], ['mal/ctl\u0085next', 'U+0085'], ['mal/nonchar\uffff', 'U+FFFF']].map(([topic, cp]): Case => ({
      name: `PUBLISH with ${cp} in the topic (a control character or non-character, refused by mosquitto too)`,
      topic, bytes: (v) => packet(0x32, publishBody(v, Buffer.from(topic), 1)), reason: 0x81,
    }))),
    {
      name: 'SUBSCRIBE with U+FFFF in the topic filter',
      bytes: (v) => packet(0x82, [0x00, 0x01], v === 5 ? [0x00] : [], str('mal/sub/\uffff'), [0x01]),
      reason: 0x81,
    },
    ...(['mal/wild/+', 'mal/wild/#'].map((topic): Case => ({
      name: `PUBLISH with a wildcard in the topic (${topic})`, topic, bytes: (v) => packet(0x32, publishBody(v, topic, 1)), reason: 0x90,
    }))),
    {
      name: 'a second CONNECT',
      bytes: (v) => connectBytes(v, `mal-second-${tag()}`),
      reason: 0x82,
    },
    ...(['mal/big'].map((topic): Case => ({
      name: `a PUBLISH larger than FANOUT_MAX_PACKET_SIZE (${MAX_PACKET})`, topic,
      bytes: (v) => packet(0x32, publishBody(v, topic, 1, 'x'.repeat(MAX_PACKET + 100))),
      reason: 0x95,
    }))),
    ...(['mal/id0'].map((topic): Case => ({
      name: 'PUBLISH QoS 1 with packet identifier 0', topic,
      bytes: (v) => packet(0x32, str(topic), [0, 0], v === 5 ? [0] : [], Buffer.from('x')),
      reason: 0x82,
    }))),
    ...(['mal/alias0'].map((topic): Case => ({
      name: 'PUBLISH with Topic Alias 0', topic, versions: [5],
      bytes: () => packet(0x30, publishBodyV5(topic, 0, [0x23, 0x00, 0x00])),
      reason: 0x94,
    }))),
    ...(['mal/alias65'].map((topic): Case => ({
      name: 'PUBLISH with Topic Alias 65, above the Topic Alias Maximum (64) of the CONNACK', topic, versions: [5],
      bytes: () => packet(0x30, publishBodyV5(topic, 0, [0x23, 0x00, 0x41])),
      reason: 0x94,
    }))),
    {
      name: 'PUBLISH with an empty topic and a Topic Alias never set',
      versions: [5],
      bytes: () => packet(0x30, publishBodyV5('', 0, [0x23, 0x00, 0x05])),
      reason: 0x82,
    },
    ...(['mal/unknown-prop'].map((topic): Case => ({
      name: 'PUBLISH with an unknown property identifier (0x7F)', topic, versions: [5],
      bytes: () => packet(0x30, publishBodyV5(topic, 0, [0x7f, 0x00])),
      reason: 0x81,
    }))),
    ...(['mal/dup-prop'].map((topic): Case => ({
      name: 'PUBLISH with the Payload Format Indicator twice', topic, versions: [5],
      bytes: () => packet(0x30, publishBodyV5(topic, 0, [0x01, 0x00, 0x01, 0x00])),
      reason: 0x82,
    }))),
    ...([['content type', [0x03, 0x00, 0x02, 0xc3, 0x28]], ['user property name', [0x26, 0x00, 0x02, 0xc3, 0x28, 0x00, 0x01, 0x76]],
      ['user property value with U+0000', [0x26, 0x00, 0x01, 0x6b, 0x00, 0x02, 0x61, 0x00]]].map(([what, props], i): Case => ({
      name: `PUBLISH with a ${what as string} that is not a valid MQTT string`, topic: `mal/strprop${i}`, versions: [5],
      bytes: () => packet(0x32, publishBodyV5(`mal/strprop${i}`, 1, props as number[])),
      reason: 0x81,
    }))),
    ...(['mal/truncated'].map((topic): Case => ({
      name: 'a truncated PUBLISH (topic length beyond the packet)', topic,
      bytes: () => packet(0x30, [0x00, 0x40], Buffer.from(topic)),
      reason: 0x81,
    }))),
    {
      // Found by the fuzz: taken as given, the session never expired.
      name: 'DISCONNECT with the Session Expiry Interval twice',
      versions: [5],
      bytes: () => packet(0xe0, [0x00, 0x0a, 0x11, 0, 0, 0, 5, 0x11, 0, 0, 0, 7]),
      reason: 0x82,
    },
    {
      name: 'SUBSCRIBE with the Subscription Identifier twice',
      versions: [5],
      bytes: () => packet(0x82, [0x00, 0x01], [0x04, 0x0b, 0x01, 0x0b, 0x02], str('mal/sub-dup'), [0x00]),
      reason: 0x82,
    },
    {
      name: 'PUBACK with the Reason String twice',
      versions: [5],
      bytes: () => packet(0x40, [0x00, 0x01, 0x00], [0x08, 0x1f, 0x00, 0x01, 0x61, 0x1f, 0x00, 0x01, 0x62]),
      reason: 0x82,
    },
    {
      name: 'PUBREL with an unknown property identifier (0x7F)',
      versions: [5],
      bytes: () => packet(0x62, [0x00, 0x01, 0x00], [0x02, 0x7f, 0x00]),
      reason: 0x81,
    },
    {
      name: 'PUBCOMP with a property list longer than the packet',
      versions: [5],
      bytes: () => packet(0x70, [0x00, 0x01, 0x00], [0x09, 0x1f, 0x00, 0x01, 0x61]),
      reason: 0x81,
    },
    ...(['mal/dup0'].map((topic): Case => ({
      name: 'PUBLISH QoS 0 with DUP set [MQTT-3.3.1-2]', topic, bytes: (v) => packet(0x38, publishBody(v, topic, 0)), reason: 0x81,
    }))),
    ...(['mal/rl-long'].map((topic): Case => ({
      name: 'a remaining length in two bytes where one does [MQTT-1.5.5-1]', topic,
      bytes: (v) => { const b = publishBody(v, topic, 0); return Buffer.concat([Buffer.from([0x30, 0x80 | b.length, 0x00]), b]); },
      reason: 0x81,
    }))),
    ...(['mal/pl-long'].map((topic): Case => ({
      name: 'PUBLISH with its property length in two bytes (80 00) where one does [MQTT-1.5.5-1]', topic, versions: [5],
      bytes: () => packet(0x30, str(topic), [0x80, 0x00], Buffer.from('x')),
      reason: 0x81,
    }))),
    ...([['a/+', 'mal/resp-plus'], ['#', 'mal/resp-hash']].map(([resp, topic]): Case => ({
      name: `PUBLISH with the Response Topic ${resp} [MQTT-3.3.2-14]`, topic, versions: [5],
      bytes: () => packet(0x32, publishBodyV5(topic, 1, [0x08, 0, resp.length, ...Buffer.from(resp)])),
      reason: 0x90,
    }))),
    {
      name: 'SUBSCRIBE with Subscription Identifier 0 (3.8.2.1.2)',
      versions: [5],
      bytes: () => packet(0x82, [0x00, 0x01], [0x02, 0x0b, 0x00], str('mal/sub-id0'), [0x00]),
      reason: 0x82,
    },
    {
      name: 'SUBSCRIBE with Subscription Identifier 0 written 0B 80 00 [MQTT-1.5.5-1]',
      versions: [5],
      bytes: () => packet(0x82, [0x00, 0x01], [0x03, 0x0b, 0x80, 0x00], str('mal/sub-id0'), [0x00]),
      reason: 0x81,
    },
    {
      name: 'SUBSCRIBE with no topic filter [MQTT-3.8.3-2]',
      bytes: (v) => packet(0x82, [0x00, 0x01], v === 5 ? [0x00] : []),
      reason: 0x82,
    },
    {
      name: 'UNSUBSCRIBE with no topic filter [MQTT-3.10.3-2]',
      bytes: (v) => packet(0xa2, [0x00, 0x01], v === 5 ? [0x00] : []),
      reason: 0x82,
    },
  ];

  for (const c of cases) {
    for (const version of c.versions ?? [4, 5] as const) {
      test(`${c.name} (MQTT ${version === 4 ? '3.1.1' : '5'}): connection closed${version === 5 ? `, DISCONNECT 0x${c.reason.toString(16)}` : ''}; daemon still serves`, async (t) => {
        const raw = await RawClient.connected(daemon.port, version, { clientId: `mal-${tag()}` });
        t.after(() => raw.destroy());
        raw.send(c.bytes(version));
        await raw.waitClosed(5000);
        const disconnect = raw.disconnectReason();
        if (version === 5) assert.equal(disconnect, c.reason, `DISCONNECT reason; ${raw.describe()}`);
        else assert.equal(disconnect, undefined, `an MQTT 3.1.1 client got a DISCONNECT; ${raw.describe()}`);
        await assertStillServes(c.topic ? [c.topic] : []);
      });
    }
  }

  for (const version of [4, 5] as const) {
    test(`a PUBLISH of exactly FANOUT_MAX_PACKET_SIZE (${MAX_PACKET}) bytes is accepted and forwarded (MQTT ${version === 4 ? '3.1.1' : '5'})`, async (t) => {
      const raw = await RawClient.connected(daemon.port, version, { clientId: `mal-max-${tag()}` });
      t.after(() => raw.destroy());
      const topic = `mal/max/${tag()}`;
      // 1 header byte + 2 length bytes + body.
      const payloadLen = MAX_PACKET - 3 - 2 - Buffer.byteLength(topic) - 2 - (version === 5 ? 1 : 0);
      const bytes = packet(0x32, publishBody(version, topic, 1, 'y'.repeat(payloadLen)));
      assert.equal(bytes.length, MAX_PACKET);
      raw.send(bytes);
      const [m] = await at.waitForCount(1, (x) => x.topic === topic, 10_000, 'the maximum-size message at the broker');
      assert.equal(m.payload.length, payloadLen);
      await raw.waitForPacket('puback', 5000);
      assert.equal(raw.closed, false, `closed: ${raw.describe()}`);
    });
  }

  /** A CONNECT built by hand: clean session, keep-alive 60, the fields given as raw bytes. */
  function rawConnect(version: 4 | 5, f: { clientId: Buffer; username?: Buffer; will?: { topic: Buffer; props?: number[] }; props?: number[] }): Buffer {
    const flags = 0x02 | (f.will ? 0x04 : 0) | (f.username ? 0x80 : 0);
    const parts: Buffer[] = [str('MQTT'), Buffer.from([version, flags, 0x00, 0x3c])];
    if (version === 5) parts.push(Buffer.from(varint((f.props ?? []).length)), Buffer.from(f.props ?? []));
    parts.push(str(f.clientId));
    if (f.will) {
      if (version === 5) parts.push(Buffer.from(varint((f.will.props ?? []).length)), Buffer.from(f.will.props ?? []));
      parts.push(str(f.will.topic), str('gone'));
    }
    if (f.username) parts.push(str(f.username));
    return packet(0x10, ...parts);
  }

  const BAD_UTF8 = [0xc3, 0x28];
  const withBad = (s: string): Buffer => Buffer.concat([Buffer.from(s), Buffer.from(BAD_UTF8)]);
  /** code: the CONNACK reason code an MQTT 5 client gets (default 0x81, malformed). */
  interface ConnectCase { name: string; bytes: (v: 4 | 5, willTopic: string) => Buffer; versions?: Array<4 | 5>; code?: number }
  const connectCases: ConnectCase[] = [
    { name: 'a client id that is not valid UTF-8', bytes: (v) => rawConnect(v, { clientId: withBad('mal-id') }) },
    { name: 'a client id with U+0000', bytes: (v) => rawConnect(v, { clientId: Buffer.from('mal-id\u0000x') }) },
    { name: 'a user name that is not valid UTF-8', bytes: (v) => rawConnect(v, { clientId: Buffer.from(`mal-u-${tag()}`), username: withBad('user') }) },
    { name: 'a user name with U+0000', bytes: (v) => rawConnect(v, { clientId: Buffer.from(`mal-u-${tag()}`), username: Buffer.from('us\u0000er') }) },
    { name: 'a will topic that is not valid UTF-8', bytes: (v, w) => rawConnect(v, { clientId: Buffer.from(`mal-w-${tag()}`), will: { topic: withBad(w) } }) },
    { name: 'a will topic with U+0000', bytes: (v, w) => rawConnect(v, { clientId: Buffer.from(`mal-w-${tag()}`), will: { topic: Buffer.from(`${w}\u0000x`) } }) },
    {
      name: 'a will Content Type that is not valid UTF-8', versions: [5],
      bytes: (v, w) => rawConnect(v, { clientId: Buffer.from(`mal-w-${tag()}`), will: { topic: Buffer.from(w), props: [0x03, 0x00, 0x02, ...BAD_UTF8] } }),
    },
    {
      name: 'a will User Property with U+0000', versions: [5],
      bytes: (v, w) => rawConnect(v, { clientId: Buffer.from(`mal-w-${tag()}`), will: { topic: Buffer.from(w), props: [0x26, 0x00, 0x01, 0x6b, 0x00, 0x01, 0x00] } }),
    },
    {
      // Found by the fuzz: mqtt-packet handed the two over as an array, and the session made of
      // it never expired.
      name: 'the Session Expiry Interval twice', versions: [5], code: 0x82,
      bytes: (v) => rawConnect(v, { clientId: Buffer.from(`mal-se-${tag()}`), props: [0x11, 0, 0, 0, 60, 0x11, 0, 0, 0x0e, 0x10] }),
    },
    {
      // The first one 0: mqtt-packet keeps only the second.
      name: 'the Receive Maximum twice', versions: [5], code: 0x82,
      bytes: (v) => rawConnect(v, { clientId: Buffer.from(`mal-rm-${tag()}`), props: [0x21, 0, 0, 0x21, 0, 10] }),
    },
    {
      name: 'the Will Delay Interval twice', versions: [5], code: 0x82,
      bytes: (v, w) => rawConnect(v, { clientId: Buffer.from(`mal-wd-${tag()}`), will: { topic: Buffer.from(w), props: [0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 2] } }),
    },
    {
      name: 'bytes after its last field [MQTT-3.1.4-1]',
      bytes: (v) => { const c = rawConnect(v, { clientId: Buffer.from(`mal-tail-${tag()}`) }); return packet(0x10, c.subarray(2), [0x00, 0x01, 0x61]); },
    },
    {
      name: 'a password but no user name [MQTT-3.1.2-22]', versions: [4],
      bytes: () => packet(0x10, str('MQTT'), [4, 0x42, 0x00, 0x3c], str(`mal-pw-${tag()}`), str('secret')),
    },
    {
      name: 'a Topic Alias (not a CONNECT property)', versions: [5],
      bytes: (v) => rawConnect(v, { clientId: Buffer.from(`mal-ta-${tag()}`), props: [0x23, 0x00, 0x01] }),
    },
    {
      name: 'a will Response Topic with a wildcard [MQTT-3.3.2-14]', versions: [5], code: 0x90,
      bytes: (v, w) => rawConnect(v, { clientId: Buffer.from(`mal-wr-${tag()}`), will: { topic: Buffer.from(w), props: [0x08, 0x00, 0x03, 0x61, 0x2f, 0x2b] } }),
    },
    {
      name: 'a CONNECT User Property that is not valid UTF-8', versions: [5],
      bytes: (v) => rawConnect(v, { clientId: Buffer.from(`mal-p-${tag()}`), props: [0x26, 0x00, 0x02, ...BAD_UTF8, 0x00, 0x01, 0x76] }),
    },
  ];

  for (const c of connectCases) {
    for (const version of c.versions ?? [4, 5] as const) {
      const code = c.code ?? 0x81;
      test(`CONNECT with ${c.name} (MQTT ${version === 4 ? '3.1.1' : '5'}): ${version === 5 ? `CONNACK 0x${code.toString(16)} and closed` : 'closed without an answer'}; no will, nothing forwarded; daemon still serves`, async (t) => {
        const raw = await RawClient.open(daemon.port, version);
        t.after(() => raw.destroy());
        const willTopic = `mal/cwill/${tag()}`;
        raw.send(c.bytes(version, willTopic));
        await raw.waitClosed(5000);
        if (version === 5) {
          const connack = raw.packets.find((p) => p.cmd === 'connack') as { reasonCode?: number } | undefined;
          assert.equal(connack?.reasonCode, code, raw.describe());
          assert.deepEqual(raw.packets.map((p) => p.cmd), ['connack'], raw.describe());
        } else {
          assert.equal(raw.bytes.length, 0, `an MQTT 3.1.1 client got an answer: ${raw.describe()}`);
        }
        await assertStillServes([], [willTopic]);
      });
    }
  }

  for (const [name, bytes] of [
    ['SUBSCRIBE', packet(0x82, [0x00, 0x01], str('mal/early-sub'), [0x01])],
    ['PINGREQ', Buffer.from([0xc0, 0x00])],
    ['UNSUBSCRIBE', packet(0xa2, [0x00, 0x01], str('mal/early-sub'))],
    ['DISCONNECT', Buffer.from([0xe0, 0x00])],
  ] as const) {
    test(`${name} before CONNECT: closed without an answer; daemon still serves`, async (t) => {
      const raw = await RawClient.open(daemon.port);
      t.after(() => raw.destroy());
      raw.send(bytes);
      await raw.waitClosed(5000);
      assert.equal(raw.bytes.length, 0, `got an answer: ${raw.describe()}`);
      await assertStillServes();
    });
  }

  test('PUBLISH before CONNECT: closed without an answer; daemon still serves', async (t) => {
    const raw = await RawClient.open(daemon.port);
    t.after(() => raw.destroy());
    raw.send(packet(0x30, publishBody(4, 'mal/early', 0)));
    await raw.waitClosed(5000);
    assert.equal(raw.bytes.length, 0, `got an answer: ${raw.describe()}`);
    await assertStillServes(['mal/early']);
  });

  test('a first packet that is not CONNECT is refused on its first byte: 62 f0 07 (1,008 bytes declared, under FANOUT_MAX_PACKET_SIZE) is closed at once, not after FANOUT_CONNECT_TIMEOUT_MS (10 s)', async (t) => {
    const raw = await RawClient.open(daemon.port);
    t.after(() => raw.destroy());
    raw.send([0x62, 0xf0, 0x07]);
    await raw.waitClosed(5000);
    assert.equal(raw.bytes.length, 0, `got an answer: ${raw.describe()}`);
    await assertStillServes();
  });

  test('MQTT 5 CONNECT with a Maximum Packet Size (2) smaller than its CONNACK: closed without a CONNACK [MQTT-3.1.2-24]', async (t) => {
    const raw = await RawClient.open(daemon.port, 5);
    t.after(() => raw.destroy());
    raw.send(rawConnect(5, { clientId: Buffer.from(`mal-mps-${tag()}`), props: [0x27, 0, 0, 0, 2] }));
    await raw.waitClosed(5000);
    assert.equal(raw.bytes.length, 0, `got an answer: ${raw.describe()}`);
    await assertStillServes();
  });

  /** One valid value for each property identifier MQTT 5 defines, by its kind; [0] for others. */
  const VALUE: Record<number, number[]> = {
    0x01: [0], 0x02: [0, 0, 0, 60], 0x03: [0, 1, 0x61], 0x08: [0, 1, 0x61], 0x09: [0, 1, 0xff], 0x0b: [1], 0x11: [0, 0, 0, 0],
    0x12: [0, 1, 0x61], 0x13: [0, 10], 0x15: [0, 1, 0x61], 0x16: [0, 1, 0xff], 0x17: [1], 0x18: [0, 0, 0, 0], 0x19: [0],
    0x1a: [0, 1, 0x61], 0x1c: [0, 1, 0x61], 0x1f: [0, 1, 0x61], 0x21: [0, 10], 0x22: [0, 10], 0x23: [0, 1], 0x24: [1],
    0x25: [1], 0x26: [0, 1, 0x6b, 0, 1, 0x76], 0x27: [0, 0, 0x10, 0], 0x28: [1], 0x29: [1], 0x2a: [1],
  };
  const IDS = [...Array.from({ length: 0x2b }, (_, i) => i), 0x7f];
  const prop = (id: number): number[] => [id, ...(VALUE[id] ?? [0])];
  const block = (id: number): number[] => { const p = prop(id); return [...varint(p.length), ...p]; };

  /**
   * Where a property can be, what a device sends to put one there, and the outcome each
   * identifier must have [MQTT 5, 2.2.2.2]: 'ok' (answered, the connection stays), or the
   * reason code of the CONNACK (CONNECT, will) or DISCONNECT that ends it. `after`: the packet
   * sent after a successful CONNECT; `connect`: a CONNECT carrying the property itself.
   */
  interface Place { name: string; allowed: Record<number, 'ok' | number>; otherwise: number; after?: (id: number, topic: string) => Buffer; connect?: (id: number, willTopic: string) => Buffer }
  const ack = (first: number) => (id: number): Buffer => packet(first, [0x00, 0x01, 0x00], block(id));
  const places: Place[] = [
    // Authentication Method: CONNACK 0x8C (no enhanced authentication); Authentication Data without it: 0x82.
    { name: 'CONNECT', allowed: { 0x11: 'ok', 0x15: 0x8c, 0x16: 0x82, 0x17: 'ok', 0x19: 'ok', 0x21: 'ok', 0x22: 'ok', 0x26: 'ok', 0x27: 'ok' }, otherwise: 0x81,
      connect: (id) => rawConnect(5, { clientId: Buffer.from(`mal-mx-c-${id}-${tag()}`), props: prop(id) }) },
    { name: 'will', allowed: { 0x01: 'ok', 0x02: 'ok', 0x03: 'ok', 0x08: 'ok', 0x09: 'ok', 0x18: 'ok', 0x26: 'ok' }, otherwise: 0x81,
      connect: (id, w) => rawConnect(5, { clientId: Buffer.from(`mal-mx-w-${id}-${tag()}`), will: { topic: Buffer.from(w), props: prop(id) } }) },
    // A Subscription Identifier from a client is a protocol error [MQTT-3.3.4-6].
    { name: 'PUBLISH', allowed: { 0x01: 'ok', 0x02: 'ok', 0x03: 'ok', 0x08: 'ok', 0x09: 'ok', 0x0b: 0x82, 0x23: 'ok', 0x26: 'ok' }, otherwise: 0x81,
      after: (id, topic) => packet(0x32, publishBodyV5(topic, 1, prop(id))) },
    ...([['PUBACK', 0x40], ['PUBREC', 0x50], ['PUBREL', 0x62], ['PUBCOMP', 0x70]] as const).map(([name, first]): Place => ({
      name, allowed: { 0x1f: 'ok', 0x26: 'ok' }, otherwise: 0x81, after: ack(first),
    })),
    { name: 'SUBSCRIBE', allowed: { 0x0b: 'ok', 0x26: 'ok' }, otherwise: 0x81, after: (id) => packet(0x82, [0x00, 0x01], block(id), str('mal/mx/sub'), [0x00]) },
    { name: 'UNSUBSCRIBE', allowed: { 0x26: 'ok' }, otherwise: 0x81, after: (id) => packet(0xa2, [0x00, 0x01], block(id), str('mal/mx/sub')) },
    // Accepted: a normal disconnect, which ends the connection without a DISCONNECT back (0).
    { name: 'DISCONNECT', allowed: { 0x11: 0, 0x1c: 0, 0x1f: 0, 0x26: 0 }, otherwise: 0x81, after: (id) => packet(0xe0, [0x00], block(id)) },
    // No enhanced authentication: AUTH is a protocol error whatever it carries.
    { name: 'AUTH', allowed: {}, otherwise: 0x82, after: (id) => packet(0xf0, [0x00], block(id)) },
  ];

  for (const place of places) {
    test(`MQTT 5 ${place.name}: every property identifier (0x00-0x2A, 0x7F) gets the outcome the specification gives, and nothing of a refused packet reaches a broker`, async (t) => {
      const prefix = `mal/mx/${place.name}/${tag()}`;
      const open: RawClient[] = [];
      t.after(() => open.forEach((c) => c.destroy()));
      const one = async (id: number): Promise<string | null> => {
        const want = place.allowed[id] ?? place.otherwise;
        const topic = `${prefix}/${id}`;
        const willTopic = `${prefix}/will/${id}`;
        let raw: RawClient;
        if (place.connect) {
          raw = await RawClient.open(daemon.port, 5);
          open.push(raw);
          raw.send(place.connect(id, willTopic));
          const connack = await raw.waitForPacket('connack', 5000) as { reasonCode?: number };
          if (want === 'ok') return connack.reasonCode === 0 ? null : `0x${id.toString(16)}: CONNACK 0x${connack.reasonCode?.toString(16)}, expected 0`;
          await raw.waitClosed(5000);
          return connack.reasonCode === want ? null : `0x${id.toString(16)}: CONNACK 0x${connack.reasonCode?.toString(16)}, expected 0x${want.toString(16)}`;
        }
        raw = await RawClient.connected(daemon.port, 5, {
          clientId: `mal-mx-${id}-${tag()}`, will: { topic: willTopic, payload: Buffer.from('gone'), qos: 1, retain: false },
        });
        open.push(raw);
        raw.send(place.after!(id, topic));
        if (want === 'ok') {
          raw.send([0xc0, 0x00]);
          await raw.waitForPacket('pingresp', 5000);
          return raw.closed || raw.disconnectReason() !== undefined ? `0x${id.toString(16)}: closed; ${raw.describe()}` : null;
        }
        await raw.waitClosed(5000);
        const got = raw.disconnectReason() ?? 0;
        return got === want ? null : `0x${id.toString(16)}: DISCONNECT 0x${got.toString(16)}, expected 0x${want.toString(16)}`;
      };
      const wrong = (await Promise.all(IDS.map(one))).filter((x) => x !== null);
      assert.deepEqual(wrong, [], `${place.name}: identifiers with the wrong outcome`);
      const refused = IDS.filter((id) => (place.allowed[id] ?? place.otherwise) !== 'ok' && place.allowed[id] !== 0);
      await assertStillServes(refused.map((id) => `${prefix}/${id}`));
      if (place.name === 'PUBLISH') {
        const accepted = IDS.filter((id) => place.allowed[id] === 'ok');
        for (const [name, c] of [['b1', at], ['b2', at2]] as const) {
          for (const id of accepted) {
            await c.waitForCount(1, (m) => m.topic === `${prefix}/${id}`, 10_000, `the PUBLISH with property 0x${id.toString(16)} at ${name}`);
            assert.equal(c.count((m) => m.topic === `${prefix}/${id}`), 1, `${name}: copies of the PUBLISH with property 0x${id.toString(16)}`);
          }
        }
      }
      if (place.name === 'DISCONNECT') {
        // The will goes out after a refused DISCONNECT, never after an accepted one.
        for (const [name, c] of [['b1', at], ['b2', at2]] as const) {
          for (const id of refused) await c.waitForCount(1, (m) => m.topic === `${prefix}/will/${id}`, 10_000, `the will after the DISCONNECT with 0x${id.toString(16)} at ${name}`);
          for (const id of IDS.filter((x) => place.allowed[x] === 0)) assert.equal(c.count((m) => m.topic === `${prefix}/will/${id}`), 0, `${name}: a will after a normal DISCONNECT with 0x${id.toString(16)}`);
        }
      }
    });
  }

  for (const level of [2, 6, 255]) {
    test(`CONNECT "MQTT" with unsupported protocol level ${level}: CONNACK 0x01 and closed; daemon still serves`, async (t) => {
      const raw = await RawClient.open(daemon.port, 4);
      t.after(() => raw.destroy());
      raw.send(connectBytes(level, `mal-level-${tag()}`));
      const connack = await raw.waitForPacket('connack', 5000) as { returnCode?: number };
      assert.equal(connack.returnCode, 0x01, raw.describe());
      await raw.waitClosed(5000);
      await assertStillServes();
    });
  }

  test('fuzz: 300 random byte strings after a valid CONNECT, each on its own connection; the daemon survives and serves', async (t) => {
    const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31);
    let state = seed >>> 0;
    // mulberry32: reproducible with FUZZ_SEED.
    const rand = (): number => {
      state = (state + 0x6d2b79f5) >>> 0;
      let x = state;
      x = Math.imul(x ^ (x >>> 15), x | 1);
      x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
      return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
    };
    const byte = (): number => Math.floor(rand() * 256);
    const open: RawClient[] = [];
    t.after(() => open.forEach((c) => c.destroy()));
    let closedByDaemon = 0;
    const one = async (i: number): Promise<void> => {
      const version = rand() < 0.5 ? 4 : 5;
      const c = await RawClient.connected(daemon.port, version, { clientId: `mal-fuzz-${seed}-${i}` });
      open.push(c);
      const len = 1 + Math.floor(rand() * 64);
      const bytes = Buffer.from(Array.from({ length: len }, byte));
      // Half of the strings start like a real packet type with a plausible length.
      if (rand() < 0.5) {
        bytes[0] = (Math.floor(rand() * 16) << 4) | Math.floor(rand() * 16);
        if (len > 1) bytes[1] = Math.floor(rand() * len);
      }
      c.send(bytes);
      await Promise.race([c.waitClosed(300).then(() => { closedByDaemon++; }, () => undefined), sleep(300)]);
      c.destroy();
    };
    const batch = 25;
    for (let i = 0; i < 300; i += batch) {
      await Promise.all(Array.from({ length: batch }, (_, k) => one(i + k)));
      assert.ok(daemon.running, `the daemon died during the fuzz loop (FUZZ_SEED=${seed}); stderr: ${daemon.stderr}`);
    }
    t.diagnostic(`FUZZ_SEED=${seed}: ${closedByDaemon} of 300 connections closed by the daemon`);
    await assertStillServes();
    assert.ok(daemon.running, `the daemon died (FUZZ_SEED=${seed})`);
    const fatal = daemon.lines.filter((l) => l.level >= 50);
    assert.deepEqual(fatal, [], `fatal log lines (FUZZ_SEED=${seed})`);
    // Whatever the daemon accepted from a device, it must not have sent a broker anything that
    // made the broker drop the connection.
    for (const [name, b] of [['b1', b1], ['b2', b2]] as const) {
      const ids = b.connectedClientIds().filter((id) => id.startsWith(`${daemon.proxyId}-`));
      assert.deepEqual(ids, [`${daemon.proxyId}-${name}-0`], `${name}: the daemon's connection had to reconnect (FUZZ_SEED=${seed}); broker log tail: ${b.log.slice(-1500)}`);
    }
  });
});
