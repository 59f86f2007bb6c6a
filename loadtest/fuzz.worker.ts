// Fuzz traffic for `npm run fuzz` (loadtest/fuzz.ts): one script of generated and mutated MQTT
// packets per connection, and the engine that keeps N connections busy with them over TCP and
// WebSocket. A script is a pure function of (seed, index), so any connection of a run can be
// printed or replayed alone (--print, --only). fuzz.ts runs the engine in worker threads, so its
// own RSS sampling and liveness probes keep their timing; everything is exported so the main
// thread can replay scripts. (Generators, engine and the worker wiring share this file because
// the fuzz program owns only fuzz.ts and this file.)

import * as net from 'node:net';
import * as os from 'node:os';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as mqttPacket from 'mqtt-packet';
import WebSocket from 'ws';
import { mulberry32 } from '../test/helpers/prng';

// ---------------------------------------------------------------------------------------------
// Randomness

class R {
  constructor(readonly next: () => number) {}
  /** 0 .. n-1 */
  int(n: number): number { return Math.floor(this.next() * n); }
  /** a .. b inclusive */
  range(a: number, b: number): number { return a + Math.floor(this.next() * (b - a + 1)); }
  chance(p: number): boolean { return this.next() < p; }
  pick<T>(items: readonly T[]): T { return items[Math.floor(this.next() * items.length)]; }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    // Four bytes per draw: payloads are most of the bytes generated.
    for (let i = 0; i < n; i += 4) {
      const x = (this.next() * 4294967296) >>> 0;
      b[i] = x;
      if (i + 1 < n) b[i + 1] = x >>> 8;
      if (i + 2 < n) b[i + 2] = x >>> 16;
      if (i + 3 < n) b[i + 3] = x >>> 24;
    }
    return b;
  }
  /** One of `table`'s values, each with its weight. */
  weighted<T>(table: ReadonlyArray<readonly [number, T]>): T {
    let total = 0;
    for (const [w] of table) total += w;
    let x = this.next() * total;
    for (const [w, v] of table) {
      x -= w;
      if (x < 0) return v;
    }
    return table[table.length - 1][1];
  }
}

/** The PRNG seed of script `index` of a run seeded with `seed` (murmur3's finaliser). */
export function scriptSeed(seed: number, index: number): number {
  let h = (seed ^ Math.imul(index >>> 0, 0x9e3779b1) ^ Math.imul(Math.floor(index / 2 ** 32), 0x85ebca77)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Valid packets (mqtt-packet's generate), for MQTT 3.1 (level 3), 3.1.1 (4) and 5.0 (5)

type Level = 3 | 4 | 5;

interface Ctx {
  r: R;
  level: Level;
  /** mqtt-packet's protocolVersion for everything after CONNECT. */
  opts: { protocolVersion: 4 | 5 };
  maxPacketSize: number;
}

const LEVEL_WORDS = ['a', 'b', 'dev', '42', 'x', 'telemetry', 'cmd', 'état', ' ', ''] as const;
const CLIENT_IDS = 512;

function topic(r: R): string {
  const parts = ['fuzz'];
  const n = r.int(4);
  for (let i = 0; i < n; i++) parts.push(r.pick(LEVEL_WORDS));
  return parts.join('/');
}

function filter(r: R): string {
  const t = r.weighted([
    [6, 'topic'], [3, 'plus'], [3, 'hash'], [1, 'all'], [2, 'share'], [1, 'sys'],
  ] as const);
  switch (t) {
    case 'topic': return topic(r);
    case 'plus': return `fuzz/+/${r.pick(LEVEL_WORDS)}`;
    case 'hash': return r.chance(0.5) ? 'fuzz/#' : `fuzz/${r.pick(LEVEL_WORDS)}/#`;
    case 'all': return r.pick(['#', '+', '+/+', '+/#']);
    case 'share': return `$share/g${r.int(3)}/${r.chance(0.5) ? 'fuzz/#' : topic(r)}`;
    case 'sys': return r.pick(['$SYS/#', '$SYS/broker/uptime']);
  }
}

function clientId(r: R): string {
  const k = r.weighted([[90, 'pool'], [5, 'empty'], [5, 'long']] as const);
  if (k === 'pool') return `fz${r.int(CLIENT_IDS)}`;
  if (k === 'empty') return '';
  return `fz-long-${'x'.repeat(r.range(16, 2000))}`;
}

function payload(r: R): Buffer {
  const size = r.weighted([[70, 16], [25, 512], [4.8, 2048], [0.2, 32768]] as const);
  return r.bytes(r.int(size + 1));
}

function userProps(r: R): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const n = r.range(1, 3);
  for (let i = 0; i < n; i++) out[`k${r.int(4)}`] = r.chance(0.3) ? ['v1', 'v2'] : `v${r.int(100)}`;
  return out;
}

/** generate(), or `fallback` for the combinations it refuses (it throws). */
function gen(c: Ctx, p: mqttPacket.Packet, opts: object = c.opts, fallback?: () => Buffer): Buffer {
  try {
    return mqttPacket.generate(p, opts);
  } catch (err) {
    if (fallback) return fallback();
    throw err;
  }
}

function gConnect(c: Ctx, id = clientId(c.r)): Buffer {
  const r = c.r;
  const level = c.level;
  const p: mqttPacket.IConnectPacket = {
    cmd: 'connect',
    clientId: id,
    protocolVersion: level,
    protocolId: level === 3 ? 'MQIsdp' : 'MQTT',
    clean: r.chance(0.8),
    keepalive: r.pick([0, 1, 5, 30, 60, 300, 65535]),
  };
  if (r.chance(0.2)) p.username = `user${r.int(10)}`;
  if (p.username !== undefined && r.chance(0.5)) p.password = r.bytes(r.int(20));
  if (r.chance(0.15)) {
    p.will = { topic: `fuzz/will/${r.int(10)}`, payload: r.bytes(r.int(32)), qos: r.pick([0, 1, 2] as const), retain: r.chance(0.1) };
    if (level === 5 && r.chance(0.5)) p.will.properties = { willDelayInterval: r.pick([0, 1, 2]), messageExpiryInterval: r.int(60), contentType: 'bin', userProperties: userProps(r) };
  }
  if (level === 5 && r.chance(0.7)) {
    p.properties = {};
    if (r.chance(0.4)) p.properties.sessionExpiryInterval = r.pick([0, 1, 5, 60, 0xffffffff]);
    if (r.chance(0.3)) p.properties.receiveMaximum = r.range(1, 100);
    if (r.chance(0.3)) p.properties.maximumPacketSize = r.pick([64, 256, 1024, 65536, 268435455]);
    if (r.chance(0.3)) p.properties.topicAliasMaximum = r.range(0, 20);
    if (r.chance(0.2)) p.properties.requestResponseInformation = r.chance(0.5);
    if (r.chance(0.2)) p.properties.requestProblemInformation = r.chance(0.5);
    if (r.chance(0.2)) p.properties.userProperties = userProps(r);
  }
  // generate() refuses an empty client id without clean session, which a server must answer.
  return gen(c, p, {}, () => frame(0x10, str(p.protocolId!), Buffer.from([level, 0, 0, 30]), level === 5 ? varint(0) : Buffer.alloc(0), str('')));
}

function gPublish(c: Ctx, t = topic(c.r)): Buffer {
  const r = c.r;
  const qos = r.pick([0, 0, 1, 1, 2] as const);
  const p: mqttPacket.IPublishPacket = {
    cmd: 'publish', topic: t, payload: payload(r), qos, dup: qos > 0 && r.chance(0.1), retain: r.chance(0.03),
    ...(qos > 0 ? { messageId: r.range(1, 65535) } : {}),
  };
  if (c.level === 5 && r.chance(0.5)) {
    p.properties = {};
    if (r.chance(0.3)) p.properties.payloadFormatIndicator = r.chance(0.5);
    if (r.chance(0.3)) p.properties.messageExpiryInterval = r.int(120);
    if (r.chance(0.3)) {
      p.properties.topicAlias = r.range(1, 64);
      // A topic alias once set may stand alone.
      if (r.chance(0.3)) p.topic = '';
    }
    if (r.chance(0.2)) p.properties.responseTopic = topic(r);
    if (r.chance(0.2)) p.properties.correlationData = r.bytes(r.int(16));
    if (r.chance(0.2)) p.properties.userProperties = userProps(r);
    if (r.chance(0.2)) p.properties.contentType = r.pick(['text/plain', 'application/json', '']);
  }
  return gen(c, p);
}

function gAck(c: Ctx): Buffer {
  const r = c.r;
  const cmd = r.pick(['puback', 'pubrec', 'pubrel', 'pubcomp'] as const);
  const p = { cmd, messageId: r.range(1, 65535) } as mqttPacket.IPubackPacket;
  if (c.level === 5 && r.chance(0.3)) {
    p.reasonCode = cmd === 'puback' || cmd === 'pubrec' ? r.pick([0, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]) : r.pick([0, 0x92]);
    if (r.chance(0.3)) p.properties = { reasonString: 'fuzz', userProperties: userProps(r) };
  }
  return gen(c, p);
}

function gSubscribe(c: Ctx): Buffer {
  const r = c.r;
  const n = r.range(1, 4);
  const subscriptions: mqttPacket.ISubscription[] = [];
  for (let i = 0; i < n; i++) {
    const s: mqttPacket.ISubscription = { topic: filter(r), qos: r.pick([0, 1, 2] as const) };
    if (c.level === 5) {
      if (r.chance(0.3) && !s.topic.startsWith('$share/')) s.nl = true;
      if (r.chance(0.3)) s.rap = true;
      if (r.chance(0.3)) s.rh = r.range(0, 2);
    }
    subscriptions.push(s);
  }
  const p: mqttPacket.ISubscribePacket = { cmd: 'subscribe', messageId: r.range(1, 65535), subscriptions };
  if (c.level === 5 && r.chance(0.3)) p.properties = { subscriptionIdentifier: r.range(1, 268435455), ...(r.chance(0.3) ? { userProperties: userProps(r) } : {}) };
  return gen(c, p);
}

function gUnsubscribe(c: Ctx): Buffer {
  const r = c.r;
  const unsubscriptions = Array.from({ length: r.range(1, 3) }, () => filter(r));
  return gen(c, { cmd: 'unsubscribe', messageId: r.range(1, 65535), unsubscriptions });
}

function gDisconnect(c: Ctx): Buffer {
  const r = c.r;
  if (c.level !== 5 || r.chance(0.5)) return gen(c, { cmd: 'disconnect' });
  return gen(c, {
    cmd: 'disconnect', reasonCode: r.pick([0, 4, 0x80, 0x81]),
    ...(r.chance(0.4) ? { properties: { sessionExpiryInterval: r.pick([0, 1, 5]), reasonString: 'bye' } } : {}),
  });
}

function gAuth(c: Ctx): Buffer {
  return gen(c, { cmd: 'auth', reasonCode: c.r.pick([0, 0x18, 0x19]), properties: { authenticationMethod: c.r.pick(['SCRAM-SHA-1', 'x']), authenticationData: c.r.bytes(8) } }, { protocolVersion: 5 });
}

/** Packets only a server sends. */
function gServerOnly(c: Ctx): Buffer {
  const r = c.r;
  switch (r.int(4)) {
    case 0: return gen(c, { cmd: 'connack', returnCode: 0, reasonCode: 0, sessionPresent: r.chance(0.5) });
    case 1: return gen(c, { cmd: 'suback', messageId: r.range(1, 65535), granted: [0, 1, 0x80] });
    case 2: return gen(c, { cmd: 'unsuback', messageId: r.range(1, 65535), granted: [0] });
    default: return gen(c, { cmd: 'pingresp' });
  }
}

type Kind = 'publish' | 'ack' | 'subscribe' | 'unsubscribe' | 'pingreq' | 'disconnect' | 'connect' | 'auth' | 'server';

const KINDS: ReadonlyArray<readonly [number, Kind]> = [
  [55, 'publish'], [15, 'ack'], [8, 'subscribe'], [5, 'unsubscribe'], [5, 'pingreq'],
  [1, 'disconnect'], [1, 'connect'], [1, 'auth'], [1, 'server'],
];

/** Labels of generated packets; the well-formed ones a client may not send count as bad. */
const LABELS: Record<Kind, (level: Level) => string> = {
  publish: () => 'publish', ack: () => 'ack', subscribe: () => 'subscribe', unsubscribe: () => 'unsubscribe',
  pingreq: () => 'pingreq', disconnect: () => 'disconnect', connect: () => 'bad:second-connect',
  auth: (level) => (level === 5 ? 'auth' : 'bad:auth-before-v5'), server: () => 'bad:server-only',
};

function valid(c: Ctx, kind: Kind): Buffer {
  switch (kind) {
    case 'publish': return gPublish(c);
    case 'ack': return gAck(c);
    case 'subscribe': return gSubscribe(c);
    case 'unsubscribe': return gUnsubscribe(c);
    case 'pingreq': return gen(c, { cmd: 'pingreq' });
    case 'disconnect': return gDisconnect(c);
    case 'connect': return gConnect(c);
    case 'auth': return gAuth(c);
    case 'server': return gServerOnly(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Hand-built bytes for what generate() cannot express

function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

function str(s: string | Buffer): Buffer {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length & 0xffff);
  return Buffer.concat([len, b]);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
}

function frame(first: number, ...body: Buffer[]): Buffer {
  const b = Buffer.concat(body);
  return Buffer.concat([Buffer.from([first]), varint(b.length), b]);
}

/** Where the remaining length ends: [offset of the body, remaining length], or null. */
function header(p: Buffer): [number, number] | null {
  let len = 0;
  let mul = 1;
  for (let i = 1; i < 5 && i < p.length; i++) {
    len += (p[i] & 0x7f) * mul;
    if ((p[i] & 0x80) === 0) return [i + 1, len];
    mul *= 128;
  }
  return null;
}

/** Byte sequences that are not well-formed UTF-8 or are characters MQTT forbids. */
const BAD_UTF8: readonly number[][] = [
  [0xc3, 0x28], [0xff], [0xfe], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80],
  [0x00], [0xe2, 0x82], [0xef, 0xbf, 0xbf], [0xc2, 0x80], [0x01], [0x7f], [0xf8, 0x88, 0x80, 0x80],
];

function badString(r: R, prefix: string): Buffer {
  const bad = Buffer.from(r.pick(BAD_UTF8));
  const at = r.int(prefix.length + 1);
  return Buffer.concat([Buffer.from(prefix.slice(0, at)), bad, Buffer.from(prefix.slice(at))]);
}

/** MQTT 5 property identifiers and how their values are encoded. */
const PROPS: ReadonlyArray<readonly [number, 'byte' | 'u16' | 'u32' | 'var' | 'str' | 'bin' | 'pair']> = [
  [0x01, 'byte'], [0x02, 'u32'], [0x03, 'str'], [0x08, 'str'], [0x09, 'bin'], [0x0b, 'var'],
  [0x11, 'u32'], [0x12, 'str'], [0x13, 'u16'], [0x15, 'str'], [0x16, 'bin'], [0x17, 'byte'],
  [0x18, 'u32'], [0x19, 'byte'], [0x1a, 'str'], [0x1c, 'str'], [0x1f, 'str'], [0x21, 'u16'],
  [0x22, 'u16'], [0x23, 'u16'], [0x24, 'byte'], [0x25, 'byte'], [0x26, 'pair'], [0x27, 'u32'],
  [0x28, 'byte'], [0x29, 'byte'], [0x2a, 'byte'],
];

/** A property list that is wrong somehow: unknown identifiers, duplicates, properties the packet
 *  may not carry, odd values, a truncated value, or a length that runs past the packet. */
function badProps(r: R): Buffer {
  const parts: Buffer[] = [];
  const n = r.range(1, 4);
  for (let i = 0; i < n; i++) {
    if (r.chance(0.15)) {
      parts.push(Buffer.from([r.pick([0x00, 0x04, 0x05, 0x07, 0x0a, 0x14, 0x2b, 0x7f, 0xff])]), r.bytes(r.int(5)));
      continue;
    }
    const [id, type] = r.pick(PROPS);
    const value = (): Buffer => {
      switch (type) {
        case 'byte': return Buffer.from([r.pick([0, 1, 2, 0xff])]);
        case 'u16': return u16(r.pick([0, 1, 64, 65, 65535]));
        case 'u32': { const b = Buffer.alloc(4); b.writeUInt32BE(r.pick([0, 1, 5, 0xffffffff])); return b; }
        case 'var': return r.chance(0.8) ? varint(r.pick([0, 1, 268435455])) : Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f]);
        case 'str': return r.chance(0.7) ? str('fuzz') : str(badString(r, 'fuzz'));
        case 'bin': return str(r.bytes(r.int(8)));
        case 'pair': return Buffer.concat([str('k'), r.chance(0.8) ? str('v') : str(badString(r, 'v'))]);
      }
    };
    parts.push(Buffer.from([id]), value());
    if (r.chance(0.3)) parts.push(Buffer.from([id]), value()); // duplicate
  }
  let props = Buffer.concat(parts);
  if (r.chance(0.15)) props = props.subarray(0, r.int(props.length));
  const len = r.chance(0.15) ? props.length + r.range(1, 300) : props.length;
  return Buffer.concat([varint(len), props]);
}

type BadKind = 'pid0' | 'utf8' | 'wildcard' | 'topic-empty' | 'alias' | 'props' | 'topic-long'
  | 'levels' | 'subscribe' | 'unsubscribe-empty' | 'connect' | 'oversize' | 'random';

const BAD_KINDS: ReadonlyArray<readonly [number, BadKind]> = [
  [6, 'pid0'], [8, 'utf8'], [6, 'wildcard'], [3, 'topic-empty'], [4, 'alias'], [10, 'props'],
  [2, 'topic-long'], [2, 'levels'], [6, 'subscribe'], [2, 'unsubscribe-empty'], [4, 'connect'],
  [0.01, 'oversize'], [5, 'random'],
];

/** A packet that is well framed (mostly) but breaks a rule of the protocol. */
function bad(c: Ctx, kind: BadKind): Buffer {
  const r = c.r;
  const v5 = c.level === 5;
  const props = (): Buffer => (v5 ? varint(0) : Buffer.alloc(0));
  switch (kind) {
    case 'pid0':
      switch (r.int(4)) {
        case 0: return frame(0x30 | (r.pick([1, 2]) << 1), str(topic(r)), u16(0), props(), r.bytes(4));
        case 1: return frame(0x82, u16(0), props(), str(filter(r)), Buffer.from([1]));
        case 2: return frame(0xa2, u16(0), props(), str(filter(r)));
        default: return frame(r.pick([0x40, 0x50, 0x62, 0x70]), u16(0));
      }
    case 'utf8': {
      const s = badString(r, r.pick(['fuzz/bad', 'fuzz/+', 'x']));
      switch (r.int(4)) {
        case 0: return frame(0x30, str(s), props(), r.bytes(4));
        case 1: return frame(0x82, u16(r.range(1, 65535)), props(), str(s), Buffer.from([0]));
        case 2: return frame(0xa2, u16(r.range(1, 65535)), props(), str(s));
        default: return frame(0x10, str('MQTT'), Buffer.from([c.level === 3 ? 4 : c.level, 0x02, 0, 30]), props(), str(s));
      }
    }
    case 'wildcard': {
      const t = r.pick(['fuzz/+/x', 'fuzz/#', '#', '+', 'fuzz/a+', 'fuzz/#/x']);
      const qos = r.int(3);
      return frame(0x30 | (qos << 1), str(t), qos > 0 ? u16(r.range(1, 65535)) : Buffer.alloc(0), props(), r.bytes(4));
    }
    case 'topic-empty':
      return frame(0x30, str(''), props(), r.bytes(4));
    case 'alias': {
      if (!v5) return frame(0x30, str(''), r.bytes(4));
      const alias = r.pick([0, 65, 65535, r.range(1, 64)]);
      const t = r.chance(0.5) ? '' : topic(r);
      const p = Buffer.concat([Buffer.from([0x23]), u16(alias)]);
      return frame(0x30, str(t), varint(p.length), p, r.bytes(4));
    }
    case 'props': {
      if (!v5) return frame(0x30, str(topic(r)), badProps(r), r.bytes(4)); // read as payload by 3.1.1
      switch (r.int(6)) {
        case 0: return frame(0x30 | (r.int(3) << 1), str(topic(r)), u16(r.range(1, 65535)), badProps(r), r.bytes(4));
        case 1: return frame(0x30, str(topic(r)), badProps(r), r.bytes(4));
        case 2: return frame(0x82, u16(r.range(1, 65535)), badProps(r), str(filter(r)), Buffer.from([1]));
        case 3: return frame(0xa2, u16(r.range(1, 65535)), badProps(r), str(filter(r)));
        case 4: return frame(r.pick([0x40, 0x50, 0x62, 0x70]), u16(r.range(1, 65535)), Buffer.from([0]), badProps(r));
        default: return frame(0xe0, Buffer.from([0]), badProps(r));
      }
    }
    case 'topic-long':
      return frame(0x30, str(`fuzz/${'l'.repeat(r.range(1020, 4000))}`), props(), r.bytes(4));
    case 'levels':
      return frame(0x30, str(Array.from({ length: r.range(30, 300) }, () => 'l').join('/')), props(), r.bytes(4));
    case 'subscribe': {
      const pid = u16(r.range(1, 65535));
      switch (r.chance(0.05) ? 5 : r.int(5)) {
        case 0: return frame(0x82, pid, props()); // no subscriptions
        case 1: return frame(0x82, pid, props(), str(filter(r)), Buffer.from([r.pick([3, 0xc0, 0x30, 0xff])])); // reserved option bits, QoS 3, RH 3
        case 2: return frame(0x82, pid, props(), str(r.pick(['fuzz/#/x', 'fuzz/a+', 'fuzz/a#', '$share/g', '$share//x', '$share/g+/x', '$share/g/', ''])), Buffer.from([1]));
        case 3: return frame(0x82, pid, props(), str('$share/g/fuzz/#'), Buffer.from([0x05])); // No Local on a shared subscription
        case 4: return frame(0x82, pid, props(), str(filter(r))); // options byte missing
        default: {
          // More filters in one SUBSCRIBE than a session may hold (FANOUT_MAX_SUBSCRIPTIONS, 1000).
          const subs = Array.from({ length: r.range(900, 1200) }, (_, i) => Buffer.concat([str(`fuzz/many/${i}`), Buffer.from([0])]));
          return frame(0x82, pid, props(), ...subs);
        }
      }
    }
    case 'unsubscribe-empty':
      return frame(0xa2, u16(r.range(1, 65535)), props());
    case 'connect':
      return badConnect(c);
    case 'oversize':
      return frame(0x30, str('fuzz/big'), props(), Buffer.alloc(c.maxPacketSize + r.range(1, 64), 0x61));
    case 'random':
      return r.bytes(r.range(1, 256));
  }
}

/** A CONNECT that is wrong: protocol name or level, flags, will, lengths, properties. */
function badConnect(c: Ctx): Buffer {
  const r = c.r;
  const level = c.level === 3 ? 4 : c.level;
  const props = (): Buffer => (level === 5 ? varint(0) : Buffer.alloc(0));
  const id = str(`fz${r.int(CLIENT_IDS)}`);
  switch (r.int(9)) {
    case 0: return frame(0x10, str(r.pick(['MQTX', 'mqtt', 'MQIsdp', '', 'MQTTMQTT'])), Buffer.from([level, 2, 0, 30]), props(), id);
    case 1: return frame(0x10, str('MQTT'), Buffer.from([r.pick([0, 1, 2, 6, 7, 0x84, 255]), 2, 0, 30]), props(), id);
    case 2: return frame(0x10, str('MQTT'), Buffer.from([level, 0x03, 0, 30]), props(), id); // reserved flag bit 0
    case 3: return frame(0x10, str('MQTT'), Buffer.from([level, 0x1e, 0, 30]), props(), id, ...(level === 5 ? [varint(0)] : []), str('fuzz/will'), str('x')); // will QoS 3
    case 4: return frame(0x10, str('MQTT'), Buffer.from([level, r.pick([0x22, 0x0a, 0x40, 0x80, 0xc2]), 0, 30]), props(), id); // will/user/password flags without their fields
    case 5: return frame(0x10, str('MQTT'), Buffer.from([level, 2, 0, 30]), props(), str(badString(r, 'fz')));
    case 6: return frame(0x10, str('MQTT'), Buffer.from([5, 2, 0, 30]), badProps(r), id);
    case 7: {
      // Receive Maximum 0, Maximum Packet Size 0, Topic Alias Maximum with a wrong width, enhanced auth.
      const p = r.pick([[0x21, 0, 0], [0x27, 0, 0, 0, 0], [0x22, 1], [0x15, 0, 5, 0x53, 0x43, 0x52, 0x41, 0x4d], [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]]);
      return frame(0x10, str('MQTT'), Buffer.from([5, 2, 0, 30]), varint(p.length), Buffer.from(p), id);
    }
    default: return frame(0x10, str('MQTT'), Buffer.from([level, 2, 0, 30]), props(), str(''), r.bytes(r.int(8))); // trailing bytes
  }
}

// ---------------------------------------------------------------------------------------------
// Byte-level mutations of a valid packet

type MutOp = 'bitflip' | 'insert' | 'delete' | 'truncate' | 'remlen' | 'flags' | 'type' | 'qos3' | 'splice';

const MUT_OPS: ReadonlyArray<readonly [number, MutOp]> = [
  [10, 'bitflip'], [5, 'insert'], [5, 'delete'], [5, 'truncate'], [8, 'remlen'], [5, 'flags'],
  [3, 'type'], [3, 'qos3'], [3, 'splice'],
];

function mutate(c: Ctx, op: MutOp, p: Buffer): Buffer {
  const r = c.r;
  switch (op) {
    case 'bitflip': {
      const out = Buffer.from(p);
      const n = r.range(1, 4);
      // Half the flips land in the first bytes, where the fixed and variable headers are.
      for (let i = 0; i < n; i++) {
        const at = r.chance(0.5) ? r.int(Math.min(out.length, 8)) : r.int(out.length);
        out[at] ^= 1 << r.int(8);
      }
      return out;
    }
    case 'insert': {
      const at = r.int(p.length + 1);
      return Buffer.concat([p.subarray(0, at), r.bytes(r.range(1, 8)), p.subarray(at)]);
    }
    case 'delete': {
      const at = r.int(p.length);
      return Buffer.concat([p.subarray(0, at), p.subarray(at + r.range(1, 8))]);
    }
    case 'truncate':
      return Buffer.from(p.subarray(0, r.int(p.length)));
    case 'remlen': {
      const h = header(p);
      if (!h) return Buffer.from(p);
      const [bodyAt, len] = h;
      const body = p.subarray(bodyAt);
      const pick = r.int(8);
      let enc: Buffer;
      if (pick === 0) enc = varint(0);
      else if (pick === 1) enc = varint(Math.max(0, len + r.pick([-3, -2, -1, 1, 2, 3])));
      else if (pick === 2) enc = varint(r.int(1 << 14));
      else if (pick === 3) enc = varint(r.range(1 << 14, (1 << 21) - 1));
      else if (pick === 4) enc = varint(r.range(c.maxPacketSize + 1, 268435455)); // above FANOUT_MAX_PACKET_SIZE
      else if (pick === 5) enc = varint(268435455);
      else if (pick === 6) enc = Buffer.from([0xff, 0xff, 0xff, 0xff, r.int(128)]); // five bytes
      else {
        // The right length, encoded with more bytes than needed.
        const min = varint(len);
        const extra = min.length >= 4 ? 0 : r.range(1, 4 - min.length);
        enc = extra === 0 ? min : Buffer.concat([Buffer.from(min.map((b) => b | 0x80)), Buffer.alloc(extra - 1, 0x80), Buffer.from([0])]);
      }
      return Buffer.concat([Buffer.from([p[0]]), enc, body]);
    }
    case 'flags': {
      const out = Buffer.from(p);
      out[0] = (out[0] & 0xf0) | r.int(16);
      return out;
    }
    case 'type': {
      const out = Buffer.from(p);
      out[0] = (r.int(16) << 4) | (out[0] & 0x0f);
      return out;
    }
    case 'qos3': {
      const out = Buffer.from(p);
      out[0] = 0x30 | 0x06 | (out[0] & 0x09);
      return out;
    }
    case 'splice': {
      const other = valid(c, r.weighted(KINDS));
      return Buffer.concat([p.subarray(0, r.int(p.length + 1)), other.subarray(r.int(other.length))]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Scripts

export type Transport = 'tcp' | 'ws';

export interface ScriptOptions {
  /** Share of connections over WebSocket (0 when there is no WebSocket port). */
  wsShare: number;
  /** Most packets in one connection's script. */
  maxPackets: number;
  /** FANOUT_MAX_PACKET_SIZE of the daemon. */
  maxPacketSize: number;
}

export interface Script {
  index: number;
  transport: Transport;
  level: Level;
  /** The packets in order, and for each its label: 'publish', 'mut:bitflip', 'bad:utf8', ... */
  packets: Buffer[];
  labels: string[];
  /** How the bytes are cut into writes (TCP) or frames (WebSocket). */
  chunking: 'whole' | 'packet' | 'random' | 'bytes';
  /** Pause between writes (a slow device), ms. */
  gapMs: number;
  /** How long the connection stays open after the last write, unless the daemon closes it. */
  lingerMs: number;
  close: 'destroy' | 'end';
  /** WebSocket only: a text frame after the first packet (the daemon must close). */
  wsText: boolean;
}

export function buildScript(seed: number, index: number, o: ScriptOptions): Script {
  const r = new R(mulberry32(scriptSeed(seed, index)));
  const level: Level = r.weighted([[45, 4], [45, 5], [10, 3]] as const);
  const c: Ctx = { r, level, opts: { protocolVersion: level === 5 ? 5 : 4 }, maxPacketSize: o.maxPacketSize };
  const transport: Transport = r.chance(o.wsShare) ? 'ws' : 'tcp';
  const start = r.weighted([[72, 'connect'], [10, 'bad-connect'], [10, 'no-connect'], [5, 'random'], [3, 'empty']] as const);
  const mutRate = r.pick([0, 0.01, 0.05, 0.2, 0.5, 1]);
  let n = 1 + Math.floor(r.next() ** 2 * o.maxPackets);
  const packets: Buffer[] = [];
  const labels: string[] = [];
  const add = (p: Buffer, label: string): void => {
    packets.push(p);
    labels.push(label);
  };
  switch (start) {
    case 'connect': add(gConnect(c), 'connect'); break;
    case 'bad-connect':
      if (r.chance(0.5)) add(badConnect(c), 'bad:connect');
      else add(mutate(c, r.weighted(MUT_OPS), gConnect(c)), 'mut:connect');
      break;
    case 'no-connect': n = r.range(1, 4); break;
    case 'random': n = r.range(1, 4); break;
    case 'empty': n = 0; break;
  }
  while (packets.length < n) {
    if (start === 'random') {
      add(r.bytes(r.range(1, 256)), 'random');
      continue;
    }
    if (!r.chance(mutRate)) {
      const kind = r.weighted(KINDS);
      add(valid(c, kind), LABELS[kind](level));
    } else if (r.chance(0.5)) {
      const kind = r.weighted(BAD_KINDS);
      add(bad(c, kind), `bad:${kind}`);
    } else {
      const op = r.weighted(MUT_OPS);
      add(mutate(c, op, valid(c, r.weighted(KINDS))), `mut:${op}`);
    }
  }
  if (start === 'connect' && r.chance(0.2)) add(gDisconnect(c), 'disconnect');
  const slow = r.chance(0.05);
  return {
    index, transport, level, packets, labels,
    chunking: r.weighted([[40, 'whole'], [30, 'packet'], [25, 'random'], [5, 'bytes']] as const),
    gapMs: slow ? r.range(1, 30) : 0,
    lingerMs: r.weighted([[15, 0], [65, r.range(5, 60)], [20, r.range(100, 1000)]] as const),
    close: r.chance(0.5) ? 'destroy' : 'end',
    wsText: transport === 'ws' && r.chance(0.02),
  };
}

/** The script's bytes cut into writes, and the offset each packet ends at. */
export function chunksOf(s: Script, r: R = new R(mulberry32(s.index ^ 0x5eed))): { chunks: Buffer[]; ends: number[] } {
  const ends: number[] = [];
  let total = 0;
  for (const p of s.packets) ends.push(total += p.length);
  let chunks: Buffer[];
  const all = Buffer.concat(s.packets);
  switch (s.chunking) {
    case 'whole': chunks = all.length > 0 ? [all] : []; break;
    case 'packet': chunks = s.packets.filter((p) => p.length > 0); break;
    case 'random': {
      chunks = [];
      for (let at = 0; at < all.length;) {
        const len = Math.min(all.length - at, 1 + r.int(r.chance(0.5) ? 8 : 512));
        chunks.push(all.subarray(at, at + len));
        at += len;
      }
      break;
    }
    case 'bytes': {
      const head = Math.min(all.length, 64);
      chunks = Array.from({ length: head }, (_, i) => all.subarray(i, i + 1));
      if (all.length > head) chunks.push(all.subarray(head));
      break;
    }
  }
  if (s.gapMs > 0 && chunks.length > 20) {
    // A slow device: at most 20 pauses.
    const per = Math.ceil(chunks.length / 20);
    const merged: Buffer[] = [];
    for (let i = 0; i < chunks.length; i += per) merged.push(Buffer.concat(chunks.slice(i, i + per)));
    chunks = merged;
  }
  return { chunks, ends };
}

/** A script as text: one line per packet, its label and bytes in hex. */
export function describeScript(s: Script): string {
  const head = `connection ${s.index}: ${s.transport}, MQTT level ${s.level}, ${s.packets.length} packets, chunking ${s.chunking}, gap ${s.gapMs} ms, linger ${s.lingerMs} ms, close ${s.close}${s.wsText ? ', text frame' : ''}`;
  return [head, ...s.packets.map((p, i) => `  ${String(i).padStart(3)} ${s.labels[i].padEnd(18)} ${p.length > 512 ? `${p.subarray(0, 512).toString('hex')}… (${p.length} bytes)` : p.toString('hex')}`)].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Tallies

export interface Tally {
  /** Connections established (TCP connected, WebSocket opened). */
  connections: number;
  tcp: number;
  ws: number;
  /** Connection attempts that failed before the connection was up. */
  connectErrors: number;
  errorCodes: Record<string, number>;
  /** Established connections the daemon closed (FIN, reset or WebSocket close) before we did. */
  closedByDaemon: number;
  closedByUs: number;
  /** Connections still open at the per-connection deadline (we closed them). */
  stalled: number;
  /** Packets whose last byte was handed to the kernel (TCP) or to ws (WebSocket). */
  packets: number;
  valid: number;
  mutated: number;
  bytesOut: number;
  bytesIn: number;
  /** Written packets by label. */
  labels: Record<string, number>;
  /** What the daemon answered: packets by type, CONNACK and DISCONNECT codes. */
  replies: Record<string, number>;
  connack: Record<string, number>;
  disconnect: Record<string, number>;
  /** Replies that break the protocol (a client packet type, reserved flags, no CONNACK first, ...). */
  badReplies: number;
  badSamples: string[];
}

export function newTally(): Tally {
  return {
    connections: 0, tcp: 0, ws: 0, connectErrors: 0, errorCodes: {}, closedByDaemon: 0, closedByUs: 0, stalled: 0,
    packets: 0, valid: 0, mutated: 0, bytesOut: 0, bytesIn: 0, labels: {}, replies: {}, connack: {}, disconnect: {},
    badReplies: 0, badSamples: [],
  };
}

function bump(into: Record<string, number>, key: string, by = 1): void {
  into[key] = (into[key] ?? 0) + by;
}

/** Adds `from` into `into` (counters summed, samples appended). */
export function addTally(into: Tally, from: Tally): void {
  for (const key of Object.keys(from) as Array<keyof Tally>) {
    const v = from[key];
    if (typeof v === 'number') (into[key] as number) += v;
    else if (Array.isArray(v)) (into[key] as string[]).push(...v.slice(0, Math.max(0, 20 - (into[key] as string[]).length)));
    else for (const [k, n] of Object.entries(v)) bump(into[key] as Record<string, number>, k, n);
  }
}

const PACKET_NAMES = ['reserved0', 'connect', 'connack', 'publish', 'puback', 'pubrec', 'pubrel', 'pubcomp',
  'subscribe', 'suback', 'unsubscribe', 'unsuback', 'pingreq', 'pingresp', 'disconnect', 'auth'] as const;
const hex8 = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;

/** Frames what the daemon sends one connection and checks each packet may come from a server. */
class Replies {
  private pending: Buffer | null = null;
  private first = true;
  private v5 = false;
  constructor(private readonly tally: Tally, private readonly s: Script) {}

  feed(chunk: Buffer): void {
    this.tally.bytesIn += chunk.length;
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    let pos = 0;
    while (buf.length - pos >= 2) {
      let len = 0;
      let mul = 1;
      let i = pos + 1;
      let complete = false;
      for (; i < buf.length && i < pos + 5; i++) {
        len += (buf[i] & 0x7f) * mul;
        mul *= 128;
        if ((buf[i] & 0x80) === 0) {
          complete = true;
          i++;
          break;
        }
      }
      if (!complete) {
        if (i >= pos + 5) {
          this.bad('a remaining length of more than 4 bytes', buf.subarray(pos, pos + 16));
          this.pending = null;
          return;
        }
        break;
      }
      if (i + len > buf.length) break;
      this.packet(buf[pos], buf.subarray(i, i + len), buf.subarray(pos, i + Math.min(len, 32)));
      pos = i + len;
    }
    this.pending = pos < buf.length ? Buffer.from(buf.subarray(pos)) : null;
  }

  private packet(first: number, body: Buffer, head: Buffer): void {
    const type = first >> 4;
    const flags = first & 0x0f;
    bump(this.tally.replies, PACKET_NAMES[type]);
    const wasFirst = this.first;
    this.first = false;
    // The protocol the daemon took the CONNECT for (a mutated CONNECT may not be the script's
    // level): an MQTT 5 CONNACK has a property length, a 3.1/3.1.1 one is exactly 2 bytes.
    if (type === 2 && wasFirst) this.v5 = body.length > 2;
    // [MQTT-3.2.0-1], [MQTT-3.14.0-1]: CONNACK comes first, and only once.
    if (wasFirst && type !== 2) return this.bad(`${PACKET_NAMES[type]} before CONNACK`, head);
    if (!wasFirst && type === 2) return this.bad('a second CONNACK', head);
    const serverTypes = this.v5 ? [2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15] : [2, 3, 4, 5, 6, 7, 9, 11, 13];
    if (!serverTypes.includes(type)) return this.bad(`${PACKET_NAMES[type]} sent to an ${this.v5 ? 'MQTT 5' : 'MQTT 3.1.1'} client`, head);
    if (type === 3 ? (flags & 0x06) === 0x06 : flags !== (type === 6 ? 2 : 0)) return this.bad(`${PACKET_NAMES[type]} with flags ${flags}`, head);
    if (type === 2) bump(this.tally.connack, hex8(body[1] ?? 0xff));
    if (type === 14) bump(this.tally.disconnect, hex8(body.length > 0 ? body[0] : 0));
  }

  private bad(what: string, bytes: Buffer): void {
    this.tally.badReplies++;
    if (this.tally.badSamples.length < 20) this.tally.badSamples.push(`connection ${this.s.index}: ${what}: ${bytes.toString('hex')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The engine: `concurrency` connections at once, a new one as soon as one ends

export interface EngineOptions extends ScriptOptions {
  host: string;
  port: number;
  wsPort: number;
  wsPath: string;
  seed: number;
  concurrency: number;
  /** No new connection once this many packets were written (Infinity: until stop()). */
  budget: number;
  /** Script indices first, first + step, first + 2·step, ... unless `only` lists them. */
  first: number;
  step: number;
  only: number[] | null;
  /** A connection still open this long after it started (plus its pauses) is closed. */
  connectionTimeoutMs: number;
}

/** Consecutive failed connection attempts after which the daemon is taken to be gone. */
const GIVE_UP_AFTER_ERRORS = 50;

export class Engine {
  readonly tally = newTally();
  private next: number;
  private onlyAt = 0;
  private active = 0;
  private stopped = false;
  private failures = 0;
  private resolveDone: (() => void) | null = null;
  /** Open connections by script index, with a function that closes each at once. */
  private readonly open = new Map<number, () => void>();
  /** Finished connections and when they finished, the latest few thousand. */
  private readonly recent: number[] = [];
  private readonly recentAt: number[] = [];

  constructor(readonly o: EngineOptions) {
    this.next = o.first;
  }

  run(): Promise<void> {
    return new Promise((resolve) => {
      this.resolveDone = resolve;
      this.fill();
    });
  }

  /** Starts no more connections and closes the open ones. */
  stop(): void {
    this.stopped = true;
    for (const close of [...this.open.values()]) close();
    this.fill();
  }

  /** Indices of the open connections and of those that finished in the last `sinceMs`. */
  snapshot(sinceMs: number): { live: number[]; recent: number[] } {
    const from = Date.now() - sinceMs;
    let k = this.recentAt.length;
    while (k > 0 && this.recentAt[k - 1] >= from) k--;
    return { live: [...this.open.keys()], recent: this.recent.slice(k) };
  }

  private nextIndex(): number | null {
    if (this.o.only) return this.onlyAt < this.o.only.length ? this.o.only[this.onlyAt++] : null;
    const i = this.next;
    this.next += this.o.step;
    return i;
  }

  private fill(): void {
    while (!this.stopped && this.active < this.o.concurrency && this.tally.packets < this.o.budget) {
      const index = this.nextIndex();
      if (index === null) {
        this.stopped = true;
        break;
      }
      this.active++;
      this.connect(buildScript(this.o.seed, index, this.o));
    }
    if (this.active === 0 && (this.stopped || this.tally.packets >= this.o.budget)) this.resolveDone?.();
  }

  private connect(s: Script): void {
    const t = this.tally;
    const { chunks, ends } = chunksOf(s);
    const chunkEnds: number[] = [];
    let total = 0;
    for (const c of chunks) chunkEnds.push(total += c.length);
    let flushed = 0;
    let connected = false;
    let byUs = false;
    let byDaemon = false;
    let finished = false;
    let lingerTimer: NodeJS.Timeout | null = null;
    const replies = new Replies(t, s);

    let closeNow: (graceful: boolean) => void = () => undefined;
    const deadline = setTimeout(() => {
      t.stalled++;
      closeNow(false);
    }, this.o.connectionTimeoutMs + chunks.length * s.gapMs);
    const linger = (): void => {
      if (!finished && lingerTimer === null) lingerTimer = setTimeout(() => closeNow(true), s.lingerMs);
    };
    const up = (transport: Transport): void => {
      connected = true;
      this.failures = 0;
      t.connections++;
      t[transport]++;
    };
    const failed = (err: NodeJS.ErrnoException): void => {
      bump(t.errorCodes, err.code ?? err.message.slice(0, 40));
      if (connected) {
        if (!byUs) byDaemon = true;
        return;
      }
      t.connectErrors++;
      if (++this.failures >= GIVE_UP_AFTER_ERRORS) this.stopped = true;
    };
    const done = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(deadline);
      if (lingerTimer) clearTimeout(lingerTimer);
      this.open.delete(s.index);
      let k = 0;
      while (k < ends.length && ends[k] <= flushed) {
        const label = s.labels[k];
        bump(t.labels, label);
        if (label.includes(':') || label === 'random') t.mutated++;
        else t.valid++;
        k++;
      }
      t.packets += k;
      t.bytesOut += flushed;
      if (connected) {
        if (byDaemon) t.closedByDaemon++;
        else t.closedByUs++;
      }
      this.active--;
      this.recent.push(s.index);
      this.recentAt.push(Date.now());
      if (this.recent.length > 20_000) {
        this.recent.splice(0, 10_000);
        this.recentAt.splice(0, 10_000);
      }
      setImmediate(() => this.fill());
    };
    this.open.set(s.index, () => closeNow(false));

    if (s.transport === 'tcp') {
      const sock = net.connect({ host: this.o.host, port: this.o.port });
      sock.setNoDelay(true);
      closeNow = (graceful) => {
        if (finished) return;
        if (!byDaemon) byUs = true;
        if (graceful && s.close === 'end') {
          sock.end();
          setTimeout(() => sock.destroy(), 200).unref();
        } else {
          sock.destroy();
        }
      };
      const write = (i: number): void => {
        if (finished || sock.destroyed) return;
        if (i >= chunks.length) return linger();
        if (s.gapMs === 0) {
          for (let j = i; j < chunks.length; j++) {
            sock.write(chunks[j], (err) => {
              if (err) return;
              flushed = Math.max(flushed, chunkEnds[j]);
              if (j === chunks.length - 1) linger();
            });
          }
        } else {
          sock.write(chunks[i], (err) => {
            if (err) return;
            flushed = chunkEnds[i];
            setTimeout(() => write(i + 1), s.gapMs);
          });
        }
      };
      sock.on('connect', () => {
        up('tcp');
        write(0);
      });
      sock.on('data', (b: Buffer) => replies.feed(b));
      sock.on('end', () => {
        if (!byUs) byDaemon = true;
        sock.destroy();
      });
      sock.on('error', failed);
      sock.on('close', done);
    } else {
      const ws = new WebSocket(`ws://${this.o.host}:${this.o.wsPort}${this.o.wsPath}`, ['mqtt'], { perMessageDeflate: false, handshakeTimeout: 5000 });
      closeNow = (graceful) => {
        if (finished) return;
        if (!byDaemon) byUs = true;
        if (graceful && s.close === 'end' && ws.readyState === WebSocket.OPEN) {
          ws.close(1000);
          setTimeout(() => ws.terminate(), 200).unref();
        } else {
          ws.terminate();
        }
      };
      const send = (i: number): void => {
        if (finished || ws.readyState !== WebSocket.OPEN) return;
        if (i >= chunks.length) return linger();
        const last = s.gapMs === 0 ? chunks.length : i + 1;
        for (let j = i; j < last; j++) {
          ws.send(chunks[j], { binary: true }, (err) => {
            if (err) return;
            flushed = Math.max(flushed, chunkEnds[j]);
            if (j === chunks.length - 1) linger();
            else if (s.gapMs > 0) setTimeout(() => send(j + 1), s.gapMs);
          });
          if (s.wsText && j === 0) ws.send('text frame', { binary: false });
        }
      };
      ws.on('open', () => {
        up('ws');
        send(0);
      });
      ws.on('message', (data: WebSocket.RawData) => {
        if (Buffer.isBuffer(data)) replies.feed(data);
        else if (Array.isArray(data)) replies.feed(Buffer.concat(data));
        else replies.feed(Buffer.from(data));
      });
      ws.on('error', failed);
      ws.on('close', () => {
        if (!byUs) byDaemon = true;
        done();
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Worker thread wiring (fuzz.ts starts this file with workerData { fuzz: options })

export interface FuzzWorkerData {
  fuzz: EngineOptions;
  /** Scheduling priority of this thread (see --nice in fuzz.ts). */
  nice?: number;
}
export type ToFuzzWorker = { t: 'stop' } | { t: 'snapshot'; sinceMs: number };
export type FromFuzzWorker =
  | { t: 'progress'; tally: Tally }
  | { t: 'done'; tally: Tally }
  | { t: 'snapshot'; live: number[]; recent: number[] };

if (!isMainThread && (workerData as FuzzWorkerData | null)?.fuzz) {
  // Linux schedules each thread on its own: this one gives way to the daemon and the broker.
  const nice = (workerData as FuzzWorkerData).nice ?? 0;
  if (nice > 0) os.setPriority(0, nice);
  const engine = new Engine((workerData as FuzzWorkerData).fuzz);
  const port = parentPort!;
  const post = (m: FromFuzzWorker): void => port.postMessage(m);
  const timer = setInterval(() => post({ t: 'progress', tally: engine.tally }), 500);
  port.on('message', (m: ToFuzzWorker) => {
    if (m.t === 'stop') engine.stop();
    else post({ t: 'snapshot', ...engine.snapshot(m.sinceMs) });
  });
  void engine.run().then(() => {
    clearInterval(timer);
    post({ t: 'done', tally: engine.tally });
    port.close();
  });
}
