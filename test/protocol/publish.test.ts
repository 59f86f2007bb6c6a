// The PUBLISH fast path (src/protocol/publish.ts) against mqtt-packet, the parser of record.
//
// The same bytes go to decodePublish (behind the Framer, as on a device connection) and to
// mqtt-packet's parser. Both must agree on accept vs reject and, when both accept, on every
// field. The fast path may reject more: only where it applies an MQTT rule mqtt-packet 9 does not
// check, and then an independent oracle written from the specification (specViolations below)
// must confirm that the input really breaks such a rule.
//
// Reproduce a failure: every message names the master seed and the case index;
//   FUZZ_SEED=<seed> FUZZ_ONLY=<index> node --test dist/test/protocol/publish.test.js
// FUZZ_CASES=<n> changes the number of fuzz cases (default 20,000).

import { hasDiscouraged } from '../helpers/bytes';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import * as mqttPacket from 'mqtt-packet';
import { Framer, FRAME_BAD_LENGTH, FRAME_INCOMPLETE, FRAME_READY, varintSize, writeVarint } from '../../src/protocol/framer';
import { decodePublish, encodePublish, encodePublishHead, publishSize, PublishView } from '../../src/protocol/publish';
import { mulberry32, type Rng } from '../helpers/prng';

const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) >>> 0 : 0x6d717474;
const FUZZ_CASES = process.env.FUZZ_CASES !== undefined ? Number(process.env.FUZZ_CASES) : 20_000;
const GENERATED_CASES = 4_000;
const ONLY = process.env.FUZZ_ONLY !== undefined ? Number(process.env.FUZZ_ONLY) : -1;
/** The largest packet MQTT can express: 268,435,455 bytes of body and a 5-byte fixed header. */
const MAX_MQTT_PACKET = 268_435_455 + 5;

// ---------------------------------------------------------------------------------------------
// Seeded randomness


const caseRng = (index: number): Rng => mulberry32(SEED ^ Math.imul(index + 1, 0x9e3779b1));
const int = (r: Rng, n: number): number => Math.floor(r() * n);
const pick = <T>(r: Rng, a: readonly T[]): T => a[int(r, a.length)];

function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  const head = Math.min(n, 64);
  for (let i = 0; i < head; i++) b[i] = int(r, 256);
  const k = 1 + int(r, 250);
  for (let i = head; i < n; i++) b[i] = (i * k + (i >>> 8)) & 0xff;
  return b;
}

// ---------------------------------------------------------------------------------------------
// The specification oracle: which MQTT rules does a PUBLISH body break?

type Rule =
  | 'qos-3'
  | 'dup-at-qos-0'
  | 'non-minimal-property-length'
  | 'response-topic-not-a-topic-name'
  | 'truncated-topic'
  | 'truncated-packet-id'
  | 'truncated-property-length'
  | 'overlong-property-length'
  | 'property-length-overrun'
  | 'property-value-overrun'
  | 'unknown-property'
  | 'property-not-valid-for-publish'
  | 'subscription-identifier-from-client'
  | 'duplicate-property'
  | 'invalid-utf8-property'
  | 'topic-alias-zero'
  | 'payload-format-out-of-range'
  | 'invalid-utf8-topic'
  | 'null-character-in-topic'
  | 'null-character-in-property'
  | 'packet-id-zero'
  | 'empty-topic-without-alias'
  | 'wildcard-in-topic';

/** Reason codes an MQTT 5 receiver may close with for each rule (section 2.2.2.2, 3.3, 4.13). */
const CODES: Record<Rule, readonly number[]> = {
  'qos-3': [0x81],
  'dup-at-qos-0': [0x81],
  'non-minimal-property-length': [0x81],
  'response-topic-not-a-topic-name': [0x90],
  'truncated-topic': [0x81],
  'truncated-packet-id': [0x81],
  'truncated-property-length': [0x81],
  'overlong-property-length': [0x81],
  'property-length-overrun': [0x81],
  'property-value-overrun': [0x81],
  // Strictly 0x81 per section 2.2.2.2; 0x82 is tolerated here and tested in properties.test.ts.
  'unknown-property': [0x81, 0x82],
  'property-not-valid-for-publish': [0x81, 0x82],
  'subscription-identifier-from-client': [0x82, 0x81],
  'duplicate-property': [0x82],
  'invalid-utf8-property': [0x81],
  'topic-alias-zero': [0x94],
  'payload-format-out-of-range': [0x81, 0x82],
  'invalid-utf8-topic': [0x81],
  'null-character-in-topic': [0x81],
  'null-character-in-property': [0x81],
  'packet-id-zero': [0x82],
  'empty-topic-without-alias': [0x82],
  'wildcard-in-topic': [0x90],
};

/**
 * Rules mqtt-packet 9.0 does not check, so it accepts such a PUBLISH where the fast path must
 * not. The first four are the ones the fast path is specified to add; the others are further
 * mqtt-packet leniencies found by reading lib parser.js: _parseMessageId never fails (a missing
 * id becomes -1), a missing property length reads as 0, property values are read past the
 * property length, and neither identifiers' packet types, duplicates nor values are checked.
 */
const NOT_CHECKED_BY_MQTT_PACKET: ReadonlySet<Rule> = new Set<Rule>([
  'invalid-utf8-topic', 'null-character-in-topic', 'wildcard-in-topic', 'packet-id-zero', 'empty-topic-without-alias',
  'truncated-packet-id', 'truncated-property-length', 'property-value-overrun', 'property-not-valid-for-publish',
  'subscription-identifier-from-client', 'duplicate-property', 'invalid-utf8-property', 'null-character-in-property', 'topic-alias-zero',
  'payload-format-out-of-range', 'dup-at-qos-0', 'non-minimal-property-length', 'response-topic-not-a-topic-name',
]);

/** Whether b[start, end) is an MQTT UTF-8 Encoded String: 'ok', 'invalid' UTF-8 (Unicode table
 *  3-7: no overlongs, surrogates, > U+10FFFF or truncated sequences) [MQTT-1.5.4-1], or well-formed
 *  but with U+0000 ('null') [MQTT-1.5.4-2]. Control characters and non-characters, which a
 *  receiver may treat as malformed [MQTT-1.5.4] and the proxy does, count as 'invalid'. */
function mqttString(b: Buffer, start: number, end: number): 'ok' | 'invalid' | 'null' {
  if (!isWellFormedUtf8(b, start, end)) return 'invalid';
  if (b.subarray(start, end).includes(0)) return 'null';
  return hasDiscouraged(b.toString('utf8', start, end)) ? 'invalid' : 'ok';
}


function isWellFormedUtf8(b: Buffer, start: number, end: number): boolean {
  let i = start;
  while (i < end) {
    const c = b[i];
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c === 0xe0) { need = 2; lo = 0xa0; }
    else if ((c >= 0xe1 && c <= 0xec) || c === 0xee || c === 0xef) need = 2;
    else if (c === 0xed) { need = 2; hi = 0x9f; } // no surrogates
    else if (c === 0xf0) { need = 3; lo = 0x90; }
    else if (c >= 0xf1 && c <= 0xf3) need = 3;
    else if (c === 0xf4) { need = 3; hi = 0x8f; }
    else return false;
    if (i + need >= end) return false; // truncated sequence
    const second = b[i + 1];
    if (second < lo || second > hi) return false;
    for (let k = 2; k <= need; k++) if (b[i + k] < 0x80 || b[i + k] > 0xbf) return false;
    i += need + 1;
  }
  return true;
}

const PUBLISH_PROPERTY_TYPES: Record<number, 'byte' | 'u16' | 'u32' | 'string' | 'binary' | 'pair' | 'varint'> = {
  0x01: 'byte', 0x02: 'u32', 0x03: 'string', 0x08: 'string', 0x09: 'binary', 0x0b: 'varint', 0x23: 'u16', 0x26: 'pair',
};
/** Every property identifier MQTT 5 defines. */
const ALL_PROPERTY_IDS = new Set([
  0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1c, 0x1f, 0x21, 0x22, 0x23,
  0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a,
]);

function stringProblem(kind: 'ok' | 'invalid' | 'null', problems: Rule[]): void {
  if (kind === 'invalid' && !problems.includes('invalid-utf8-property')) problems.push('invalid-utf8-property');
  if (kind === 'null' && !problems.includes('null-character-in-property')) problems.push('null-character-in-property');
}

/** The rules `body` (the PUBLISH variable header and payload) breaks; empty when valid. */
function specViolations(header: number, body: Buffer, version: number): Rule[] {
  const qos = (header >> 1) & 3;
  if (qos === 3) return ['qos-3'];
  if (qos === 0 && (header & 8) !== 0) return ['dup-at-qos-0']; // [MQTT-3.3.1-2]
  if (body.length < 2) return ['truncated-topic'];
  const topicLen = body.readUInt16BE(0);
  if (2 + topicLen > body.length) return ['truncated-topic'];
  let pos = 2 + topicLen;
  let packetId = -1;
  if (qos > 0) {
    if (pos + 2 > body.length) return ['truncated-packet-id'];
    packetId = body.readUInt16BE(pos);
    pos += 2;
  }
  const found: Rule[] = [];
  let alias = 0;
  let propertiesOk = true;
  if (version === 5) {
    let len = 0;
    let mul = 1;
    let n = 0;
    for (;;) {
      if (pos + n >= body.length) return ['truncated-property-length'];
      const b = body[pos + n++];
      len += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (b === 0 && n > 1) return ['non-minimal-property-length']; // [MQTT-1.5.5-1]
        break;
      }
      if (n === 4) return ['overlong-property-length'];
      mul *= 128;
    }
    pos += n;
    const end = pos + len;
    if (end > body.length) return ['property-length-overrun'];
    const seen = new Set<number>();
    while (pos < end) {
      const id = body[pos++];
      const type = PUBLISH_PROPERTY_TYPES[id];
      const problems: Rule[] = [];
      if (type === undefined) {
        found.push(ALL_PROPERTY_IDS.has(id) ? 'property-not-valid-for-publish' : 'unknown-property');
        propertiesOk = false;
        break;
      }
      if (id === 0x0b) problems.push('subscription-identifier-from-client'); // [MQTT-3.3.4-6]
      if (id !== 0x26 && seen.has(id)) problems.push('duplicate-property');
      seen.add(id);
      const valueAt = pos;
      let next = -1;
      const lengthPrefixed = (at: number): number => (at + 2 > end ? -1 : at + 2 + body.readUInt16BE(at) > end ? -1 : at + 2 + body.readUInt16BE(at));
      switch (type) {
        case 'byte': next = pos + 1 <= end ? pos + 1 : -1; break;
        case 'u16': next = pos + 2 <= end ? pos + 2 : -1; break;
        case 'u32': next = pos + 4 <= end ? pos + 4 : -1; break;
        case 'varint': {
          let k = 0;
          for (;;) {
            if (pos + k >= end || k === 4) { next = -1; break; }
            if ((body[pos + k++] & 0x80) === 0) { next = pos + k; break; }
          }
          break;
        }
        case 'binary': next = lengthPrefixed(pos); break;
        case 'string':
          next = lengthPrefixed(pos);
          if (next >= 0) stringProblem(mqttString(body, pos + 2, next), problems);
          if (next >= 0 && problems.length === 0 && id === 0x08) {
            // A topic name: not empty, no wildcard [MQTT-3.3.2-14, MQTT-4.7.3-1].
            const t = body.subarray(pos + 2, next);
            if (t.length === 0 || t.includes(0x23) || t.includes(0x2b)) problems.push('response-topic-not-a-topic-name');
          }
          break;
        case 'pair': {
          const k = lengthPrefixed(pos);
          next = k < 0 ? -1 : lengthPrefixed(k);
          if (next >= 0) {
            stringProblem(mqttString(body, pos + 2, k), problems);
            stringProblem(mqttString(body, k + 2, next), problems);
          }
          break;
        }
      }
      if (next < 0) {
        problems.push('property-value-overrun');
      } else {
        if (id === 0x23) {
          alias = body.readUInt16BE(valueAt);
          if (alias === 0) problems.push('topic-alias-zero'); // [MQTT-3.3.2-8]
        }
        if (id === 0x01 && body[valueAt] > 1) problems.push('payload-format-out-of-range');
      }
      if (problems.length > 0) {
        found.push(...problems);
        propertiesOk = false;
        break;
      }
      pos = next;
    }
  }
  const topic = mqttString(body, 2, 2 + topicLen);
  if (topic !== 'ok') found.push(topic === 'null' ? 'null-character-in-topic' : 'invalid-utf8-topic'); // [MQTT-1.5.4-1/2]
  if (qos > 0 && packetId === 0) found.push('packet-id-zero'); // [MQTT-2.2.1-3]
  if (topicLen === 0 && alias === 0 && propertiesOk) found.push('empty-topic-without-alias'); // [MQTT-3.3.2-1], 3.3.2.3.4
  for (let i = 2; i < 2 + topicLen; i++) {
    if (body[i] === 0x23 || body[i] === 0x2b) {
      found.push('wildcard-in-topic'); // [MQTT-3.3.2-2]
      break;
    }
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// mqtt-packet side

interface MqttOutcome {
  packet?: mqttPacket.IPublishPacket;
  error?: string;
  left: number;
}

function parseWithMqttPacket(bytes: Buffer, version: number): MqttOutcome {
  const parser = mqttPacket.parser({ protocolVersion: version });
  const out: MqttOutcome = { left: 0 };
  parser.on('packet', (p: mqttPacket.Packet) => {
    if (out.packet === undefined && out.error === undefined) out.packet = p as mqttPacket.IPublishPacket;
  });
  parser.on('error', (e: Error) => { out.error ??= e.message; });
  out.left = parser.parse(bytes);
  return out;
}

/** Decodes MQTT 5 property bytes with mqtt-packet (inside a minimal PUBLISH to topic "x"). */
function propertiesViaMqttPacket(props: Buffer): { ok: boolean; properties?: unknown } {
  const rem = 3 + varintSize(props.length) + props.length;
  const pkt = Buffer.alloc(1 + varintSize(rem) + rem);
  pkt[0] = 0x30;
  let pos = writeVarint(pkt, 1, rem);
  pkt[pos++] = 0;
  pkt[pos++] = 1;
  pkt[pos++] = 0x78;
  pos = writeVarint(pkt, pos, props.length);
  props.copy(pkt, pos);
  const r = parseWithMqttPacket(pkt, 5);
  return r.packet ? { ok: true, properties: r.packet.properties } : { ok: false };
}

/** Plain, comparable form of a properties object (null-prototype objects and Buffers). */
function normalize(v: unknown): unknown {
  if (v === undefined || v === null) return undefined;
  if (Buffer.isBuffer(v)) return `hex:${v.toString('hex')}`;
  if (Array.isArray(v)) return v.map(normalize);
  if (typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v as object).sort()) {
      const x = normalize((v as Record<string, unknown>)[k]);
      if (x !== undefined) o[k] = x;
    }
    return Object.keys(o).length > 0 ? o : undefined;
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Inputs

const TOPIC_PIECES = [
  'sensors', 'a', 'b', 'temp', 'device-42', 'ü', 'é', 'Ωmega', '中文', '主题', '😀', '🚀', '\u00a0', ' ', '$SYS', 'K',
  'x'.repeat(300), 'ʕ•ᴥ•ʔ', '\ufffd', 'line\u2028sep',
];

function randomTopic(r: Rng): string {
  const n = 1 + int(r, 5);
  const segs: string[] = [];
  for (let i = 0; i < n; i++) segs.push(r() < 0.1 ? '' : pick(r, TOPIC_PIECES));
  return segs.join('/');
}

function randomUserProperties(r: Rng): Record<string, string | string[]> {
  const u: Record<string, string | string[]> = {};
  const n = 1 + int(r, 4);
  for (let i = 0; i < n; i++) {
    const key = pick(r, ['k', 'trace-id', 'ünï', '', 'region', '键', 'x'.repeat(40)]);
    u[key] = r() < 0.25
      // Not '' in arrays: mqtt-packet's parser tests `if (result[name])` when merging repeated
      // keys, so a first value '' is silently replaced by the next one (an mqtt-packet quirk).
      ? Array.from({ length: 2 + int(r, 3) }, () => randomTopic(r) || 'v')
      : pick(r, ['v', '', 'value-1', 'wert-ä', '😀', randomTopic(r)]);
  }
  return u;
}

type PublishProperties = NonNullable<mqttPacket.IPublishPacket['properties']>;

function randomProperties(r: Rng, emptyTopic: boolean): PublishProperties | undefined {
  const p: PublishProperties = {};
  if (r() < 0.3) p.payloadFormatIndicator = r() < 0.5;
  if (r() < 0.3) p.messageExpiryInterval = int(r, 2 ** 32);
  if (emptyTopic || r() < 0.25) p.topicAlias = 1 + int(r, 65535);
  if (r() < 0.3) p.responseTopic = randomTopic(r);
  if (r() < 0.3) p.correlationData = randomBytes(r, int(r, 40));
  if (r() < 0.3) p.userProperties = randomUserProperties(r);
  if (r() < 0.3) p.contentType = pick(r, ['application/json', 'text/plain; charset=utf-8', 'application/vnd.ü+cbor', '']);
  return Object.keys(p).length > 0 ? p : undefined;
}

function randomPayloadSize(r: Rng): number {
  const x = r();
  if (x < 0.15) return 0;
  if (x < 0.65) return int(r, 128);
  if (x < 0.88) return int(r, 2048);
  if (x < 0.97) return int(r, 20000);
  return int(r, 70001);
}

interface Generated {
  version: 3 | 4 | 5;
  packet: mqttPacket.IPublishPacket;
  /** Topic as put on the wire when it is not a well-formed string. */
  rawTopic?: Buffer;
  bytes: Buffer;
  /** Which rule this input breaks on purpose, if any. */
  breaks?: string;
}

function generatePublish(r: Rng): Generated {
  const version = pick(r, [3, 4, 4, 5, 5, 5] as const);
  const qos = pick(r, [0, 1, 2] as const);
  let topic = randomTopic(r);
  let rawTopic: Buffer | undefined;
  let messageId = qos > 0 ? 1 + int(r, 65535) : undefined;
  let breaks: string | undefined;
  let emptyTopic = version === 5 && r() < 0.1;
  if (emptyTopic) topic = '';
  const bad = r();
  if (bad < 0.025) {
    topic = pick(r, ['a/+/b', '#', 'sensors/#', '+', 'x+y', 'a#b']);
    breaks = 'wildcard';
  } else if (bad < 0.04 && qos > 0) {
    messageId = 0;
    breaks = 'packet id 0';
  } else if (bad < 0.055) {
    topic = '';
    emptyTopic = false;
    breaks = 'empty topic';
  } else if (bad < 0.075) {
    rawTopic = pick(r, [
      Buffer.from([0x61, 0xff, 0x62]), Buffer.from([0xc0, 0x80]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('a\u0000b'),
      Buffer.from([0xe2, 0x82]), Buffer.from([0xf4, 0x90, 0x80, 0x80]), Buffer.from('é\u0000'), Buffer.from([0x80]),
    ]);
    breaks = 'bad UTF-8';
  }
  const packet: mqttPacket.IPublishPacket = {
    cmd: 'publish', topic, payload: randomBytes(r, randomPayloadSize(r)), qos, retain: r() < 0.3, dup: qos > 0 && r() < 0.2,
  };
  if (messageId !== undefined) packet.messageId = messageId;
  if (version === 5) {
    const props = randomProperties(r, emptyTopic);
    if (props) packet.properties = props;
  }
  const wire = rawTopic ? { ...packet, topic: rawTopic as unknown as string } : packet;
  const bytes = mqttPacket.generate(wire, { protocolVersion: version });
  return { version, packet, rawTopic, bytes, breaks };
}

/** Whether the remaining length of `b` ends in a 0 byte after others: a shorter encoding existed. */
function nonMinimalLength(b: Buffer): boolean {
  for (let i = 1; i < Math.min(b.length, 5); i++) if ((b[i] & 0x80) === 0) return b[i] === 0 && i > 1;
  return false;
}

function fixedHeaderLength(b: Buffer): number {
  let n = 1;
  while (n < b.length && n < 5 && (b[n] & 0x80) !== 0) n++;
  return n + 1;
}

function withLength(first: number, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = first;
  const n = writeVarint(head, 1, body.length);
  return Buffer.concat([head.subarray(0, n), body]);
}

/** One or two random mutations: byte flips (mostly in the headers), truncations, random
 *  length fields (remaining length, topic and property lengths), inserted/deleted bytes. */
function mutate(r: Rng, input: Buffer): { bytes: Buffer; how: string[] } {
  let b: Buffer = Buffer.from(input);
  const how: string[] = [];
  const rounds = r() < 0.7 ? 1 : 2;
  for (let m = 0; m < rounds; m++) {
    const hl = fixedHeaderLength(b);
    const body = b.subarray(Math.min(hl, b.length));
    const x = r();
    if (x < 0.4) {
      const flips = 1 + int(r, 4);
      for (let k = 0; k < flips; k++) {
        const pos = r() < 0.8 ? int(r, Math.min(b.length, hl + 48)) : int(r, b.length);
        if (pos === 0) {
          b[0] = (b[0] & 0xf0) | ((b[0] ^ (1 << int(r, 4))) & 0x0f); // flags only: stay a PUBLISH
        } else {
          b[pos] = r() < 0.5 ? b[pos] ^ (1 << int(r, 8)) : pick(r, [0x00, 0x23, 0x2b, 0x80, 0xff, 0xc0, 0xed, 0x01, 0x26, 0x23, int(r, 256)]);
        }
        how.push(`flip@${pos}`);
      }
    } else if (x < 0.55) {
      const keep = int(r, body.length + 1);
      b = withLength(b[0], Buffer.from(body.subarray(0, keep)));
      how.push(`truncate body to ${keep}`);
    } else if (x < 0.6) {
      const keep = int(r, b.length);
      b = Buffer.from(b.subarray(0, keep));
      how.push(`cut stream at ${keep}`);
    } else if (x < 0.75) {
      const y = r();
      let field: Buffer;
      let value = -1;
      if (y < 0.1) {
        field = Buffer.from([0xff, 0xff, 0xff, 0xff, int(r, 128)]);
      } else if (y < 0.2) {
        value = int(r, 128);
        field = Buffer.from([0x80 | value, 0x80, 0x00]); // non-minimal encoding
        value = value & 0x7f;
      } else {
        value = Math.max(0, body.length + int(r, 41) - 30);
        if (r() < 0.1) value = int(r, 268435456);
        field = Buffer.alloc(4);
        field = field.subarray(0, writeVarint(field, 0, value));
      }
      let rest: Buffer = body;
      if (value >= 0 && value > body.length && value - body.length < 100 && r() < 0.5) {
        rest = Buffer.concat([body, randomBytes(r, value - body.length)]);
      }
      b = Buffer.concat([Buffer.from([b[0]]), field, rest]);
      how.push(`length field ${field.toString('hex')}`);
    } else if (x < 0.9) {
      if (body.length >= 2) {
        const at = r() < 0.5 ? 0 : int(r, Math.min(body.length - 1, 48));
        const v = pick(r, [0, 1, 2, 3, 0x7f, 0x80, 0xff, 0x100, 0xffff, body.length - at, body.length - at - 2, int(r, 65536)]);
        const nb = Buffer.from(body);
        nb.writeUInt16BE(Math.max(0, Math.min(0xffff, v)), at);
        b = withLength(b[0], nb);
        how.push(`u16 ${v} @body+${at}`);
      }
    } else {
      const at = int(r, Math.min(body.length, 48) + 1);
      const nb = r() < 0.5
        ? Buffer.concat([body.subarray(0, at), randomBytes(r, 1 + int(r, 3)), body.subarray(at)])
        : Buffer.concat([body.subarray(0, at), body.subarray(Math.min(body.length, at + 1 + int(r, 3)))]);
      b = withLength(b[0], nb);
      how.push(`splice @body+${at}`);
    }
  }
  return { bytes: b, how };
}

// ---------------------------------------------------------------------------------------------
// Running one input through both parsers

interface Failure {
  test: 'equivalence' | 'strictness' | 'encode';
  category: string;
  detail: string;
}

interface Stats {
  cases: number;
  fuzzCases: number;
  generatedCases: number;
  bothAccept: number;
  bothReject: number;
  incomplete: number;
  badLength: number;
  onlyFastRejects: Partial<Record<Rule, number>>;
  fastCodes: Record<string, number>;
  encoded: number;
}

const view = new PublishView(); // reused across cases, as a shard does

function hex(b: Buffer): string {
  return b.length > 96 ? `${b.subarray(0, 96).toString('hex')}... (${b.length} bytes)` : b.toString('hex');
}

function fieldMismatch(v: PublishView, pk: mqttPacket.IPublishPacket, start: number, end: number, version: number): string | null {
  if (v.topic() !== pk.topic) return `topic ${JSON.stringify(v.topic())} vs ${JSON.stringify(pk.topic)}`;
  if (v.topicStart !== start + 2) return `topicStart ${v.topicStart}`;
  if (v.qos !== pk.qos) return `qos ${v.qos} vs ${pk.qos}`;
  if (v.dup !== pk.dup) return `dup ${v.dup} vs ${pk.dup}`;
  if (v.retain !== pk.retain) return `retain ${v.retain} vs ${pk.retain}`;
  if ((v.qos > 0 ? v.messageId : undefined) !== pk.messageId) return `messageId ${v.messageId} vs ${pk.messageId}`;
  const payload = v.buf.subarray(v.payloadStart, v.payloadEnd);
  const theirs = Buffer.isBuffer(pk.payload) ? pk.payload : Buffer.from(pk.payload);
  if (!payload.equals(theirs)) return `payload ${payload.length} bytes vs ${theirs.length} bytes`;
  if (v.payloadEnd !== end) return 'payload does not end at the packet end';
  if (version === 5) {
    const decoded = propertiesViaMqttPacket(v.buf.subarray(v.propsStart, v.propsEnd));
    if (!decoded.ok) return 'fast-path property bytes do not parse with mqtt-packet';
    if (!isDeepStrictEqual(decoded.properties, pk.properties)) {
      return `properties ${JSON.stringify(normalize(decoded.properties))} vs ${JSON.stringify(normalize(pk.properties))}`;
    }
    const alias = pk.properties?.topicAlias ?? 0;
    if (v.topicAlias !== alias) return `topicAlias ${v.topicAlias} vs ${alias}`;
    if (alias !== 0) {
      const a = v.aliasStart;
      if (a < v.propsStart || a + 3 > v.propsEnd || v.buf[a] !== 0x23 || v.buf.readUInt16BE(a + 1) !== alias) return `aliasStart ${a} does not point at the Topic Alias`;
    } else if (v.aliasStart !== -1) {
      return `aliasStart ${v.aliasStart} without a Topic Alias`;
    }
  } else if (v.propsStart !== v.propsEnd || v.propsEnd !== v.payloadStart) {
    return 'MQTT 3 publish with property bytes';
  }
  return null;
}

/** encodePublish / encodePublishHead with the decoded parts must give what mqtt-packet reads
 *  back as the same message (and, for generated inputs, mqtt-packet.generate's exact bytes). */
function encodeMismatch(r: Rng, v: PublishView, pk: mqttPacket.IPublishPacket, version: number, exactBytes: boolean): string | null {
  const v5Source = version === 5;
  const v5 = v5Source ? r() < 0.8 : r() < 0.2;
  const qos = int(r, 3);
  const retain = r() < 0.5;
  const id = 1 + int(r, 65535);
  const topicLen = v.topicEnd - v.topicStart;
  const propsLen = v5Source ? v.propsEnd - v.propsStart : 0;
  const payloadLen = v.payloadEnd - v.payloadStart;
  const size = publishSize(topicLen, qos, v5 ? propsLen : 0, payloadLen, v5);
  const out = Buffer.alloc(size + 6, 0xee);
  const end = encodePublish(out, 3, qos, retain, id, v.buf, v.topicStart, topicLen, v.propsStart, propsLen, v5, v.payloadStart, payloadLen);
  if (end - 3 !== size) return `encodePublish wrote ${end - 3} bytes, publishSize says ${size}`;
  if (out[2] !== 0xee || out[end] !== 0xee) return 'encodePublish wrote outside its range';
  const encoded = out.subarray(3, end);
  const back = parseWithMqttPacket(encoded, v5 ? 5 : 4);
  if (!back.packet || back.left !== 0) return `encodePublish output does not parse: ${back.error ?? 'incomplete'} ${hex(encoded)}`;
  const p = back.packet;
  const wantProps = v5 ? pk.properties : undefined;
  if (p.topic !== pk.topic || p.qos !== qos || p.retain !== retain || p.dup !== false || (qos > 0 ? id : undefined) !== p.messageId) {
    return `encodePublish header fields differ: ${JSON.stringify({ topic: p.topic, qos: p.qos, retain: p.retain, dup: p.dup, id: p.messageId })}`;
  }
  if (!Buffer.from(p.payload as Buffer).equals(v.buf.subarray(v.payloadStart, v.payloadEnd))) return 'encodePublish payload differs';
  if (!isDeepStrictEqual(p.properties, wantProps)) return `encodePublish properties differ: ${JSON.stringify(normalize(p.properties))}`;
  if (exactBytes) {
    const ref = mqttPacket.generate({ ...pk, qos: qos as 0 | 1 | 2, retain, dup: false, messageId: qos > 0 ? id : undefined, properties: wantProps }, { protocolVersion: v5 ? 5 : 4 });
    if (!ref.equals(encoded)) return `encodePublish bytes differ from mqtt-packet.generate:\n  ours ${hex(encoded)}\n  ref  ${hex(ref)}`;
  }
  // encodePublishHead + copies, with the topic from another buffer and, as a shard does for
  // a Topic Alias, the alias property cut out of the property bytes.
  const topic = Buffer.concat([Buffer.from('zz'), v.buf.subarray(v.topicStart, v.topicEnd)]);
  const cut = v5 && v.aliasStart >= 0;
  const headPropsLen = v5 ? propsLen - (cut ? 3 : 0) : 0;
  const out2 = Buffer.alloc(publishSize(topicLen, qos, headPropsLen, payloadLen, v5) + 2, 0xee);
  let pos = encodePublishHead(out2, 1, qos, retain, id, topic, 2, topicLen, v5, headPropsLen, payloadLen);
  if (v5) {
    if (cut) {
      pos += v.buf.copy(out2, pos, v.propsStart, v.aliasStart);
      pos += v.buf.copy(out2, pos, v.aliasStart + 3, v.propsEnd);
    } else {
      pos += v.buf.copy(out2, pos, v.propsStart, v.propsEnd);
    }
  }
  pos += v.buf.copy(out2, pos, v.payloadStart, v.payloadEnd);
  if (pos !== out2.length - 1 || out2[0] !== 0xee || out2[pos] !== 0xee) return `encodePublishHead + copies: ${pos - 1} bytes, expected ${out2.length - 2}`;
  const back2 = parseWithMqttPacket(out2.subarray(1, pos), v5 ? 5 : 4);
  if (!back2.packet || back2.left !== 0) return `encodePublishHead output does not parse: ${back2.error ?? 'incomplete'}`;
  let want2: unknown = wantProps;
  if (cut && wantProps) {
    const { topicAlias: _alias, ...rest } = wantProps;
    want2 = Object.keys(rest).length > 0 ? rest : undefined;
  }
  if (!isDeepStrictEqual(normalize(back2.packet.properties), normalize(want2))) return 'encodePublishHead properties differ';
  if (back2.packet.topic !== pk.topic || !Buffer.from(back2.packet.payload as Buffer).equals(v.buf.subarray(v.payloadStart, v.payloadEnd))) {
    return 'encodePublishHead topic or payload differ';
  }
  return null;
}

function runCase(index: number, fuzz: boolean, stats: Stats, failures: Failure[]): void {
  const r = caseRng(index);
  const gen = generatePublish(r);
  const { version } = gen;
  let bytes = gen.bytes;
  let how: string[] = [];
  if (fuzz) ({ bytes, how } = mutate(r, gen.bytes));
  const ctx = (): string => `seed=0x${SEED.toString(16)} case=${index} (${fuzz ? 'fuzz' : 'generated'}) v${version} ${how.join(', ') || gen.breaks || ''}\n  input ${hex(bytes)}`;
  stats.cases++;
  if (fuzz) stats.fuzzCases++;
  else stats.generatedCases++;

  // The fast path sees the bytes through the Framer, sometimes in two chunks.
  const f = new Framer(MAX_MQTT_PACKET);
  if (bytes.length > 2 && r() < 0.3) {
    const k = 1 + int(r, bytes.length - 1);
    f.push(bytes.subarray(0, k));
    f.push(bytes.subarray(k));
  } else {
    f.push(bytes);
  }
  const framed = f.next();
  if (framed !== FRAME_READY) {
    const mq = parseWithMqttPacket(bytes, version);
    if (framed === FRAME_INCOMPLETE) {
      stats.incomplete++;
      if (mq.packet) failures.push({ test: 'equivalence', category: 'framer waits, mqtt-packet has a packet', detail: ctx() });
      else if (mq.error && ((bytes[0] >> 1) & 3) !== 3) failures.push({ test: 'equivalence', category: 'framer waits, mqtt-packet fails', detail: `${mq.error} ${ctx()}` });
    } else {
      stats.badLength++;
      // mqtt-packet takes a remaining length longer than needed; the framer does not [MQTT-1.5.5-1].
      if (framed !== FRAME_BAD_LENGTH || (!mq.error && !nonMinimalLength(bytes))) failures.push({ test: 'equivalence', category: `framer ${framed}, mqtt-packet ${mq.error ?? 'no error'}`, detail: ctx() });
    }
    return;
  }
  const packetBytes = Buffer.from(f.buf.subarray(f.end - f.size, f.end));
  const mq = parseWithMqttPacket(packetBytes, version);
  if (!mq.error && (!mq.packet || mq.left !== 0)) {
    failures.push({ test: 'equivalence', category: 'mqtt-packet frames differently', detail: ctx() });
    return;
  }
  const rc = decodePublish(f.header, f.buf, f.start, f.end, version, view);
  const body = f.buf.subarray(f.start, f.end);
  const rules = specViolations(f.header, body, version);
  const fastOk = rc === 0;
  const mqOk = mq.packet !== undefined;
  stats.fastCodes[rc.toString(16)] = (stats.fastCodes[rc.toString(16)] ?? 0) + 1;

  // 1. Equivalence with mqtt-packet.
  if (fastOk && mqOk) {
    stats.bothAccept++;
    const diff = fieldMismatch(view, mq.packet!, f.start, f.end, version);
    if (diff) failures.push({ test: 'equivalence', category: 'fields differ', detail: `${diff} ${ctx()}` });
  } else if (fastOk) {
    failures.push({ test: 'equivalence', category: 'fast path accepts what mqtt-packet rejects', detail: `mqtt-packet: ${mq.error} ${ctx()}` });
  } else if (mqOk) {
    const excuse = rules.filter((x) => NOT_CHECKED_BY_MQTT_PACKET.has(x));
    if (excuse.length === 0) {
      failures.push({ test: 'equivalence', category: 'fast path rejects what mqtt-packet accepts, no stricter rule broken', detail: `rc 0x${rc.toString(16)}, rules [${rules}] ${ctx()}` });
    } else {
      for (const x of excuse) stats.onlyFastRejects[x] = (stats.onlyFastRejects[x] ?? 0) + 1;
    }
  } else {
    stats.bothReject++;
  }

  // 2. Strictness: the fast path enforces exactly the rules the oracle finds, with their codes.
  if (rules.length === 0 && !fastOk) {
    failures.push({ test: 'strictness', category: `valid PUBLISH rejected with 0x${rc.toString(16)}`, detail: ctx() });
  } else if (rules.length > 0 && fastOk) {
    failures.push({ test: 'strictness', category: `accepted although it breaks ${rules.join(' + ')}`, detail: ctx() });
  } else if (rules.length > 0 && version === 5 && !rules.some((x) => CODES[x].includes(rc))) {
    failures.push({ test: 'strictness', category: `reason code 0x${rc.toString(16)} for ${rules.join(' + ')}`, detail: ctx() });
  }

  // 3. Encoding back towards a broker.
  if (fastOk && mqOk) {
    const diff = encodeMismatch(r, view, mq.packet!, version, !fuzz && gen.rawTopic === undefined);
    stats.encoded++;
    if (diff) failures.push({ test: 'encode', category: 'encode mismatch', detail: `${diff} ${ctx()}` });
  }

  // Generated inputs: the parsed packet is the one generated.
  if (!fuzz && mqOk && gen.rawTopic === undefined) {
    const want = gen.packet;
    const got = mq.packet!;
    const same = got.topic === want.topic && got.qos === want.qos && got.retain === want.retain && got.dup === want.dup
      && got.messageId === want.messageId && Buffer.from(got.payload as Buffer).equals(want.payload as Buffer)
      && isDeepStrictEqual(normalize(got.properties), normalize(want.properties));
    if (!same) failures.push({ test: 'equivalence', category: 'mqtt-packet round trip of the generated packet differs', detail: ctx() });
  }
}

let corpus: { stats: Stats; failures: Failure[] } | null = null;

function runCorpus(): { stats: Stats; failures: Failure[] } {
  if (corpus) return corpus;
  const stats: Stats = {
    cases: 0, fuzzCases: 0, generatedCases: 0, bothAccept: 0, bothReject: 0, incomplete: 0, badLength: 0, onlyFastRejects: {}, fastCodes: {}, encoded: 0,
  };
  const failures: Failure[] = [];
  for (let i = 0; i < GENERATED_CASES + FUZZ_CASES; i++) {
    if (ONLY >= 0 && i !== ONLY) continue;
    try {
      runCase(i, i >= GENERATED_CASES, stats, failures);
    } catch (err) {
      failures.push({ test: 'equivalence', category: 'exception', detail: `seed=0x${SEED.toString(16)} case=${i}: ${(err as Error).stack}` });
    }
  }
  corpus = { stats, failures };
  return corpus;
}

function report(failures: Failure[]): string {
  const groups = new Map<string, Failure[]>();
  for (const f of failures) {
    const g = groups.get(f.category) ?? [];
    g.push(f);
    groups.set(f.category, g);
  }
  const lines = [`${failures.length} failing cases (seed=0x${SEED.toString(16)}):`];
  for (const [cat, list] of groups) {
    lines.push(`- ${cat}: ${list.length} cases, e.g.`);
    for (const f of list.slice(0, 3)) lines.push(`    ${f.detail.replace(/\n/g, '\n    ')}`);
  }
  return lines.join('\n');
}

test(`equivalence with mqtt-packet (v3.1, v3.1.1, v5): ${GENERATED_CASES} generated + ${FUZZ_CASES} fuzzed PUBLISH packets`, (t) => {
  const { stats, failures } = runCorpus();
  t.diagnostic(`seed=0x${SEED.toString(16)} ${JSON.stringify(stats)}`);
  const mine = failures.filter((f) => f.test === 'equivalence');
  assert.equal(mine.length, 0, report(mine));
  if (ONLY < 0) {
    assert.ok(stats.fuzzCases >= Math.min(FUZZ_CASES, 20_000));
    // The corpus must really exercise both outcomes and the excused differences.
    assert.ok(stats.bothAccept > 5_000, `both accept: ${stats.bothAccept}`);
    assert.ok(stats.bothReject > 1_000, `both reject: ${stats.bothReject}`);
    assert.ok(stats.incomplete > 100 && stats.badLength > 10, 'framing outcomes exercised');
    for (const rule of ['invalid-utf8-topic', 'wildcard-in-topic', 'packet-id-zero', 'empty-topic-without-alias', 'duplicate-property', 'truncated-packet-id'] as Rule[]) {
      assert.ok((stats.onlyFastRejects[rule] ?? 0) > 0, `no case where only the fast path rejects for ${rule}`);
    }
  }
});

test('the fast path enforces every MQTT rule the specification oracle finds, with a fitting reason code', () => {
  const { failures } = runCorpus();
  const mine = failures.filter((f) => f.test === 'strictness');
  assert.equal(mine.length, 0, report(mine));
});

test('encodePublish / encodePublishHead output of every accepted input parses back with mqtt-packet to the same message', () => {
  const { stats, failures } = runCorpus();
  const mine = failures.filter((f) => f.test === 'encode');
  assert.equal(mine.length, 0, report(mine));
  if (ONLY < 0) assert.ok(stats.encoded > 5_000);
});

// ---------------------------------------------------------------------------------------------
// Hand-made cases: each stricter rule, with mqtt-packet's verdict pinned.

function frameOf(bytes: Buffer): { header: number; buf: Buffer; start: number; end: number } {
  const f = new Framer(MAX_MQTT_PACKET);
  f.push(bytes);
  assert.equal(f.next(), FRAME_READY);
  return { header: f.header, buf: f.buf, start: f.start, end: f.end };
}

function fast(bytes: Buffer, version: number): number {
  const fr = frameOf(bytes);
  return decodePublish(fr.header, fr.buf, fr.start, fr.end, version, view);
}

function publishBytes(topic: Buffer, opts: { qos?: number; id?: number; props?: Buffer; payload?: Buffer; v5?: boolean; flags?: number } = {}): Buffer {
  const qos = opts.qos ?? 0;
  const parts: Buffer[] = [Buffer.from([topic.length >> 8, topic.length & 0xff]), topic];
  if (qos > 0) parts.push(Buffer.from([(opts.id ?? 1) >> 8, (opts.id ?? 1) & 0xff]));
  if (opts.v5) {
    const props = opts.props ?? Buffer.alloc(0);
    const len = Buffer.alloc(4);
    parts.push(len.subarray(0, writeVarint(len, 0, props.length)), props);
  }
  parts.push(opts.payload ?? Buffer.from('p'));
  return withLength(0x30 | (qos << 1) | (opts.flags ?? 0), Buffer.concat(parts));
}

const STRICTER: Array<{ name: string; bytes: Buffer; version: number; rc: number | number[]; rule: Rule }> = [
  { name: 'invalid UTF-8 in the topic (0xff)', bytes: publishBytes(Buffer.from([0x61, 0xff])), version: 4, rc: 0x81, rule: 'invalid-utf8-topic' },
  { name: 'overlong encoding in the topic (C0 AF)', bytes: publishBytes(Buffer.from([0xc0, 0xaf]), { v5: true }), version: 5, rc: 0x81, rule: 'invalid-utf8-topic' },
  { name: 'UTF-16 surrogate in the topic (ED A0 80)', bytes: publishBytes(Buffer.from([0xed, 0xa0, 0x80]), { v5: true }), version: 5, rc: 0x81, rule: 'invalid-utf8-topic' },
  { name: 'U+0000 in an ASCII topic', bytes: publishBytes(Buffer.from('a\u0000b'), { v5: true }), version: 5, rc: 0x81, rule: 'null-character-in-topic' },
  { name: "wildcard '+' in the topic", bytes: publishBytes(Buffer.from('a/+/c'), { v5: true }), version: 5, rc: 0x90, rule: 'wildcard-in-topic' },
  { name: "wildcard '#' in the topic", bytes: publishBytes(Buffer.from('a/#')), version: 4, rc: 0x90, rule: 'wildcard-in-topic' },
  { name: 'packet id 0 at QoS 1', bytes: publishBytes(Buffer.from('a'), { qos: 1, id: 0 }), version: 4, rc: 0x82, rule: 'packet-id-zero' },
  { name: 'packet id 0 at QoS 2', bytes: publishBytes(Buffer.from('a'), { qos: 2, id: 0, v5: true }), version: 5, rc: 0x82, rule: 'packet-id-zero' },
  { name: 'empty topic without alias (v5)', bytes: publishBytes(Buffer.alloc(0), { v5: true }), version: 5, rc: 0x82, rule: 'empty-topic-without-alias' },
  { name: 'empty topic (v3.1.1)', bytes: publishBytes(Buffer.alloc(0)), version: 4, rc: 0x90, rule: 'empty-topic-without-alias' },
  { name: 'packet id cut off (QoS 1, one byte left)', bytes: withLength(0x32, Buffer.from([0, 1, 0x61, 0x05])), version: 4, rc: 0x81, rule: 'truncated-packet-id' },
  { name: 'property length missing (v5)', bytes: withLength(0x30, Buffer.from([0, 1, 0x61])), version: 5, rc: 0x81, rule: 'truncated-property-length' },
  { name: 'Topic Alias 0', bytes: publishBytes(Buffer.from('a'), { v5: true, props: Buffer.from([0x23, 0, 0]) }), version: 5, rc: 0x94, rule: 'topic-alias-zero' },
  { name: 'Content Type twice', bytes: publishBytes(Buffer.from('a'), { v5: true, props: Buffer.from([0x03, 0, 1, 0x61, 0x03, 0, 1, 0x62]) }), version: 5, rc: 0x82, rule: 'duplicate-property' },
  { name: 'Payload Format Indicator 2', bytes: publishBytes(Buffer.from('a'), { v5: true, props: Buffer.from([0x01, 2]) }), version: 5, rc: [0x81, 0x82], rule: 'payload-format-out-of-range' },
  { name: 'Subscription Identifier from a client', bytes: publishBytes(Buffer.from('a'), { v5: true, props: Buffer.from([0x0b, 5]) }), version: 5, rc: 0x82, rule: 'subscription-identifier-from-client' },
  { name: 'invalid UTF-8 in a User Property', bytes: publishBytes(Buffer.from('a'), { v5: true, props: Buffer.from([0x26, 0, 1, 0x6b, 0, 1, 0xfe]) }), version: 5, rc: 0x81, rule: 'invalid-utf8-property' },
  { name: 'Response Topic running past the property length', bytes: publishBytes(Buffer.from('a'), { v5: true, props: Buffer.from([0x08, 0, 5, 0x61]), payload: Buffer.from('bcdefg') }), version: 5, rc: 0x81, rule: 'property-value-overrun' },
];

for (const c of STRICTER) {
  const codes = Array.isArray(c.rc) ? c.rc : [c.rc];
  test(`stricter than mqtt-packet: ${c.name} -> ${codes.map((x) => `0x${x.toString(16)}`).join(' or ')}`, () => {
    const fr = frameOf(c.bytes);
    assert.deepEqual(specViolations(fr.header, fr.buf.subarray(fr.start, fr.end), c.version), [c.rule], 'the oracle sees exactly this rule broken');
    const mq = parseWithMqttPacket(c.bytes, c.version);
    assert.ok(mq.packet !== undefined, `mqtt-packet accepts it (${mq.error})`);
    const rc = fast(c.bytes, c.version);
    assert.ok(codes.includes(rc), `fast path returned 0x${rc.toString(16)}`);
  });
}

test('QoS 3 is rejected from the header by both', () => {
  const bytes = publishBytes(Buffer.from('a'), { qos: 1, flags: 0x06 });
  assert.equal(bytes[0] & 0x06, 0x06);
  assert.equal(fast(bytes, 4), 0x81);
  assert.ok(parseWithMqttPacket(bytes, 4).error);
});

test('topic with U+0000 after a multi-byte character is rejected [MQTT-1.5.4-2]', () => {
  // "é" then U+0000: C3 A9 00. isValidMqttString stops looking for 0x00 at the first byte >= 0x80.
  const bytes = publishBytes(Buffer.from('é\u0000'), { v5: true });
  const fr = frameOf(bytes);
  assert.deepEqual(specViolations(fr.header, fr.buf.subarray(fr.start, fr.end), 5), ['null-character-in-topic']);
  assert.equal(fast(bytes, 5), 0x81);
  assert.equal(fast(publishBytes(Buffer.from('sensors/ü/\u0000x')), 4), 0x81);
});

test('empty topic with a Topic Alias is accepted (v5) and the alias offset is reported', () => {
  const bytes = publishBytes(Buffer.alloc(0), { v5: true, props: Buffer.from([0x02, 0, 0, 0, 9, 0x23, 0, 7]) });
  assert.equal(fast(bytes, 5), 0);
  assert.equal(view.topicAlias, 7);
  assert.equal(view.buf[view.aliasStart], 0x23);
  assert.equal(view.aliasStart, view.propsStart + 5);
  assert.equal(view.topicEnd - view.topicStart, 0);
});

test('publishSize / encodePublish at the remaining-length boundaries (1 to 4 bytes)', () => {
  for (const rem of [0, 127, 128, 16383, 16384, 2097151, 2097152]) {
    for (const v5 of [false, true]) {
      const topicLen = 1;
      const fixed = 2 + topicLen + 2 + (v5 ? 1 : 0); // qos 1, empty properties
      if (rem < fixed) continue;
      const payloadLen = rem - fixed;
      const src = Buffer.alloc(topicLen + payloadLen, 0x5a);
      src[0] = 0x74;
      const size = publishSize(topicLen, 1, 0, payloadLen, v5);
      assert.equal(size, 1 + varintSize(rem) + rem, `rem ${rem}`);
      const out = Buffer.alloc(size);
      assert.equal(encodePublish(out, 0, 1, false, 9, src, 0, topicLen, 0, 0, v5, topicLen, payloadLen), size);
      const back = parseWithMqttPacket(out, v5 ? 5 : 4);
      assert.ok(back.packet, back.error);
      assert.equal(back.packet.topic, 't');
      assert.equal(back.packet.messageId, 9);
      assert.equal((back.packet.payload as Buffer).length, payloadLen);
    }
  }
});
