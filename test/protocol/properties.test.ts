// Unit tests for the MQTT 5 PUBLISH property walker and the UTF-8 string check
// (src/protocol/properties.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as mqttPacket from 'mqtt-packet';
import { hasDiscouraged } from '../helpers/bytes';
import {
  ACK_ALLOWED, CONNECT_ALLOWED, DISCONNECT_ALLOWED, isValidMqttString, PROP_TOPIC_ALIAS, propertyBlockFault, propertyFault, scanPublishProperties,
  SUBSCRIBE_ALLOWED, UNSUBSCRIBE_ALLOWED, WILL_ALLOWED, type PropertyScan,
} from '../../src/protocol/properties';
import { readVarint, varintEnd } from '../../src/protocol/framer';

/** Every identifier allowed: for the checks that do not depend on the packet type. */
const ANY = new Uint8Array(256).fill(1);

/** propertyFault's two verdicts, as the CONNECT decoder reads them. */
const propertiesAreValid = (buf: Buffer, start: number, end: number, allowed: Uint8Array = ANY): boolean => propertyFault(buf, start, end, allowed) !== 0x81;
const hasRepeatedProperty = (buf: Buffer, start: number, end: number): boolean => propertyFault(buf, start, end, ANY) === 0x82;

function scan(props: Buffer | number[], pad = 0): PropertyScan & { start: number; buf: Buffer } {
  const body = Buffer.isBuffer(props) ? props : Buffer.from(props);
  // Embed the properties inside a larger buffer: offsets must be absolute, bounds respected.
  const buf = Buffer.concat([Buffer.alloc(pad, 0xaa), body, Buffer.from([0x23, 0x00, 0x09, 0x01, 0x05])]);
  const out = { error: -1, topicAlias: -1, aliasStart: -2, start: pad, buf };
  scanPublishProperties(buf, pad, pad + body.length, out);
  return out;
}

const str = (s: string): number[] => {
  const b = Buffer.from(s);
  return [b.length >> 8, b.length & 0xff, ...b];
};

/** Property bytes of every kind a client may send, as mqtt-packet writes them. */
function generatedProperties(props: NonNullable<mqttPacket.IPublishPacket['properties']>): Buffer {
  const pkt = mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(0), qos: 0, retain: false, dup: false, properties: props }, { protocolVersion: 5 });
  // 0x30, remaining length (1 byte here), 00 01 't', property length varint, properties.
  const len = readVarint(pkt, 2 + 3, pkt.length);
  return pkt.subarray(varintEnd, varintEnd + len);
}

test('finds the Topic Alias and the absolute offset of its property', () => {
  const props = [0x02, 0, 0, 0x0e, 0x10, PROP_TOPIC_ALIAS, 0x01, 0x02, 0x26, ...str('k'), ...str('v')];
  for (const pad of [0, 7]) {
    const r = scan(props, pad);
    assert.equal(r.error, 0);
    assert.equal(r.topicAlias, 0x0102);
    assert.equal(r.aliasStart, pad + 5);
    assert.equal(r.buf[r.aliasStart], 0x23);
  }
});

test('all PUBLISH properties a client may send are accepted; no alias gives 0 / -1', () => {
  const bytes = generatedProperties({
    payloadFormatIndicator: true, messageExpiryInterval: 3600, contentType: 'application/json', responseTopic: 'reply/ü',
    correlationData: Buffer.from([0, 1, 2, 0xff]), userProperties: { a: 'b', 'ключ': ['1', '2'] },
  });
  const r = scan(bytes, 3);
  assert.equal(r.error, 0);
  assert.equal(r.topicAlias, 0);
  assert.equal(r.aliasStart, -1);
  const withAlias = generatedProperties({ topicAlias: 65535, contentType: 'x' });
  const a = scan(withAlias);
  assert.equal(a.error, 0);
  assert.equal(a.topicAlias, 65535);
  assert.equal(withAlias[a.aliasStart], 0x23);
});

test('an empty property section is valid', () => {
  const r = scan([]);
  assert.deepEqual([r.error, r.topicAlias, r.aliasStart], [0, 0, -1]);
});

test('rejects a repeated property (Protocol Error 0x82), but User Property may repeat', () => {
  assert.equal(scan([0x23, 0, 1, 0x23, 0, 2]).error, 0x82);
  assert.equal(scan([0x01, 0, 0x01, 1]).error, 0x82);
  assert.equal(scan([0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1]).error, 0x82);
  assert.equal(scan([0x03, ...str('a'), 0x03, ...str('a')]).error, 0x82);
  assert.equal(scan([0x08, ...str('a'), 0x08, ...str('b')]).error, 0x82);
  assert.equal(scan([0x09, 0, 0, 0x09, 0, 0]).error, 0x82);
  assert.equal(scan([0x26, ...str('k'), ...str('v'), 0x26, ...str('k'), ...str('v')]).error, 0);
});

test('rejects every identifier a client must not put on a PUBLISH', () => {
  const allowed = new Set([0x01, 0x02, 0x03, 0x08, 0x09, 0x23, 0x26]);
  for (let id = 0; id < 256; id++) {
    if (allowed.has(id)) continue;
    // Followed by enough bytes for any value type, so only the identifier can be the problem.
    const r = scan([id, 0, 1, 0x61, 0, 1, 0x62]);
    assert.notEqual(r.error, 0, `identifier 0x${id.toString(16)} accepted`);
  }
  assert.equal(scan([0x11, 0, 0, 0, 1]).error !== 0, true, 'Session Expiry Interval (CONNECT only)');
  assert.equal(scan([0x0b, 0x05]).error, 0x82, 'Subscription Identifier from a client [MQTT-3.3.4-6]: Protocol Error');
});

test('an identifier not valid for PUBLISH is a Malformed Packet (0x81) per MQTT 5.0 section 2.2.2.2', () => {
  // "A Control Packet which contains an Identifier which is not valid for its packet type ... is
  // a Malformed Packet. If received, use a CONNACK or DISCONNECT packet with Reason Code 0x81".
  assert.equal(scan([0x11, 0, 0, 0, 1]).error, 0x81, 'Session Expiry Interval (0x11)');
  assert.equal(scan([0x21, 0, 10]).error, 0x81, 'Receive Maximum (0x21)');
  assert.equal(scan([0x05, 0]).error, 0x81, 'unassigned identifier 0x05');
  assert.equal(scan([0x00, 0]).error, 0x81, 'identifier 0');
});

test('Topic Alias 0 is rejected with 0x94 [MQTT-3.3.2-8]', () => {
  assert.equal(scan([0x23, 0, 0]).error, 0x94);
  assert.equal(scan([0x02, 0, 0, 0, 1, 0x23, 0, 0]).error, 0x94);
});

test('Payload Format Indicator must be 0 or 1', () => {
  assert.equal(scan([0x01, 0]).error, 0);
  assert.equal(scan([0x01, 1]).error, 0);
  for (const v of [2, 0x7f, 0xff]) assert.notEqual(scan([0x01, v]).error, 0, `value ${v}`);
});

test('truncated values are Malformed (0x81): every allowed property cut at every length', () => {
  const full: number[][] = [
    [0x01, 1],
    [0x02, 0, 0, 1, 0],
    [0x03, ...str('text/plain')],
    [0x08, ...str('reply/to')],
    [0x09, 0, 3, 1, 2, 3],
    [0x23, 0, 5],
    [0x26, ...str('key'), ...str('value')],
  ];
  for (const p of full) {
    assert.equal(scan(p).error, 0, `complete 0x${p[0].toString(16)}`);
    for (let cut = 1; cut < p.length; cut++) {
      // The bytes after the property section (a valid alias property) must not be read.
      const r = scan(p.slice(0, cut));
      assert.equal(r.error, 0x81, `0x${p[0].toString(16)} cut to ${cut} bytes`);
    }
  }
});

test('invalid UTF-8 in string properties is Malformed (0x81), binary data is not checked', () => {
  assert.equal(scan([0x03, 0, 2, 0xc3, 0x28]).error, 0x81);
  assert.equal(scan([0x08, 0, 3, 0xed, 0xa0, 0x80]).error, 0x81);
  assert.equal(scan([0x26, 0, 1, 0xff, ...str('v')]).error, 0x81, 'user property name');
  assert.equal(scan([0x26, ...str('k'), 0, 1, 0x80]).error, 0x81, 'user property value');
  assert.equal(scan([0x03, 0, 1, 0x00]).error, 0x81, 'U+0000');
  assert.equal(scan([0x09, 0, 3, 0xff, 0x00, 0xc0]).error, 0, 'Correlation Data is binary');
});

test('the result is reset on every call', () => {
  const out: PropertyScan = { error: 0, topicAlias: 0, aliasStart: -1 };
  const bad = Buffer.from([0x23, 0, 0]);
  scanPublishProperties(bad, 0, bad.length, out);
  assert.equal(out.error, 0x94);
  const good = Buffer.from([0x01, 1]);
  scanPublishProperties(good, 0, good.length, out);
  assert.deepEqual(out, { error: 0, topicAlias: 0, aliasStart: -1 });
});

// ---------------------------------------------------------------------------------------------
// isValidMqttString

const valid = (b: number[] | Buffer, start = 0, end?: number): boolean => {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b);
  return isValidMqttString(buf, start, end ?? buf.length);
};

test('isValidMqttString accepts well-formed strings, U+FEFF and the code points next to the refused ones', () => {
  for (const s of ['', 'a', 'sensors/temp', ' ~', 'é', '\u00a0', 'Ωmega', '中文/主题', '😀🚀', '\ufeffbom', '\ufdcf', '\ufdf0', '\ufffd', '\u{1fffd}', '\u{10fffd}']) {
    assert.equal(valid(Buffer.from(s)), true, JSON.stringify(s));
  }
});

test('isValidMqttString rejects control characters and non-characters, as mosquitto does [MQTT-1.5.4]', () => {
  const bad = ['\u0001', '\t', '\n', '\u001f', '\u007f', '\u0080', '\u009f', '\ufdd0', '\ufdef', '\ufffe', '\uffff', '\u{1fffe}', '\u{10ffff}'];
  for (const c of bad) {
    const name = `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`;
    assert.equal(valid(Buffer.from(c)), false, name);
    assert.equal(valid(Buffer.from(`a/${c}/b`)), false, `${name} inside ASCII`);
    assert.equal(valid(Buffer.from(`é/${c}`)), false, `${name} after a multi-byte character`);
  }
});

test('isValidMqttString rejects U+0000 [MQTT-1.5.4-2]', () => {
  assert.equal(valid([0x00]), false);
  assert.equal(valid([0x61, 0x00]), false);
  assert.equal(valid([0x00, 0x61]), false);
  assert.equal(valid(Buffer.from('a/b\u0000c')), false);
});

test('isValidMqttString rejects U+0000 after a multi-byte character [MQTT-1.5.4-2]', () => {
  // C3 A9 00: the scan stops looking for 0x00 at the first byte >= 0x80 and only asks isUtf8.
  assert.equal(valid(Buffer.from('é\u0000')), false, 'é U+0000');
  assert.equal(valid(Buffer.from('sensors/ü/\u0000')), false, 'sensors/ü/ U+0000');
  assert.equal(valid(Buffer.from('😀\u0000x')), false);
});

test('isValidMqttString rejects overlong encodings, surrogates and code points above U+10FFFF [MQTT-1.5.4-1]', () => {
  const bad: Array<[string, number[]]> = [
    ['overlong U+0000 (C0 80)', [0xc0, 0x80]],
    ['overlong "/" (C0 AF)', [0xc0, 0xaf]],
    ['overlong (C1 BF)', [0xc1, 0xbf]],
    ['overlong 3-byte (E0 80 80)', [0xe0, 0x80, 0x80]],
    ['overlong 3-byte (E0 9F BF)', [0xe0, 0x9f, 0xbf]],
    ['overlong 4-byte (F0 80 80 80)', [0xf0, 0x80, 0x80, 0x80]],
    ['overlong 4-byte (F0 8F BF BF)', [0xf0, 0x8f, 0xbf, 0xbf]],
    ['high surrogate U+D800 (ED A0 80)', [0xed, 0xa0, 0x80]],
    ['low surrogate U+DFFF (ED BF BF)', [0xed, 0xbf, 0xbf]],
    ['CESU-8 surrogate pair', [0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]],
    ['U+110000 (F4 90 80 80)', [0xf4, 0x90, 0x80, 0x80]],
    ['F5 lead byte', [0xf5, 0x80, 0x80, 0x80]],
    ['FF byte', [0x61, 0xff]],
    ['lone continuation byte', [0x80]],
    ['truncated 2-byte sequence', [0x61, 0xc3]],
    ['truncated 3-byte sequence', [0xe2, 0x82]],
    ['truncated 4-byte sequence', [0xf0, 0x9f, 0x98]],
  ];
  for (const [name, bytes] of bad) {
    assert.equal(valid(bytes), false, name);
    assert.equal(valid([0x61, 0x2f, ...bytes, 0x62]), false, `${name} inside ASCII`);
  }
});

test('isValidMqttString only looks at [start, end)', () => {
  const buf = Buffer.from([0xff, 0x61, 0x62, 0x00]);
  assert.equal(isValidMqttString(buf, 1, 3), true);
  assert.equal(isValidMqttString(buf, 0, 3), false);
  assert.equal(isValidMqttString(buf, 1, 4), false);
  const multi = Buffer.from([0x00, 0xc3, 0xa9, 0xff]);
  assert.equal(isValidMqttString(multi, 1, 3), true);
  assert.equal(isValidMqttString(multi, 1, 4), false);
});

test('isValidMqttString agrees with a UTF-8 round trip and a code point check on all 2-byte and 200,000 random strings without 0x00', () => {
  // Well-formed UTF-8 survives decoding and re-encoding unchanged; every ill-formed sequence is
  // replaced by U+FFFD (WHATWG decoder) and so changes the bytes.
  // Control characters and non-characters are refused as well.
  const wellFormed = (b: Buffer): boolean => Buffer.from(b.toString('utf8'), 'utf8').equals(b) && !hasDiscouraged(b.toString('utf8'));
  const b2 = Buffer.alloc(2);
  for (let x = 0; x < 65536; x++) {
    b2[0] = x >> 8;
    b2[1] = x & 0xff;
    if (b2.includes(0)) continue;
    assert.equal(isValidMqttString(b2, 0, 2), wellFormed(b2), b2.toString('hex'));
  }
  let seed = 7;
  const rnd = (): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed >>> 8;
  };
  const leads = [0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xc0, 0x80, 0xbf, 0x61];
  for (let i = 0; i < 200_000; i++) {
    const n = 1 + (rnd() % 6);
    const b = Buffer.alloc(n);
    for (let k = 0; k < n; k++) {
      const r = rnd() % 4;
      b[k] = r === 0 ? leads[rnd() % leads.length] : r === 1 ? 0x80 + (rnd() % 64) : 1 + (rnd() % 255);
    }
    if (b.includes(0)) continue;
    assert.equal(isValidMqttString(b, 0, n), wellFormed(b), b.toString('hex'));
  }
});

test('propertiesAreValid: CONNECT and will properties, with every string checked and any identifier MQTT 5 knows', () => {
  const b = (...bytes: number[]): Buffer => Buffer.from(bytes);
  assert.equal(propertiesAreValid(b(), 0, 0), true);
  // Session Expiry Interval, Receive Maximum, a user property, Authentication Method.
  const good = b(0x11, 0, 0, 0, 60, 0x21, 0, 10, 0x26, 0, 1, 0x6b, 0, 2, 0xc3, 0xa9, 0x15, 0, 1, 0x78);
  assert.equal(propertiesAreValid(good, 0, good.length, CONNECT_ALLOWED), true);
  assert.equal(propertiesAreValid(good, 0, good.length, WILL_ALLOWED), false, 'Session Expiry Interval in a will');
  assert.equal(propertiesAreValid(b(0x26, 0, 1, 0x6b, 0, 1, 0x00), 0, 7), false, 'U+0000 in a user property value');
  assert.equal(propertiesAreValid(b(0x03, 0, 2, 0xc3, 0x28), 0, 5), false, 'invalid UTF-8 in a content type');
  assert.equal(propertiesAreValid(b(0x7f, 0), 0, 2), false, 'an unknown identifier');
  assert.equal(propertiesAreValid(b(0x11, 0, 0), 0, 3), false, 'a truncated value');
  // Binary data (correlation data, authentication data) is not a string.
  assert.equal(propertiesAreValid(b(0x09, 0, 2, 0xc3, 0x28), 0, 5), true);
});

test('hasRepeatedProperty: any identifier but User Property, in either half of the identifier range', () => {
  const b = (...x: number[]): Buffer => Buffer.from(x);
  assert.equal(hasRepeatedProperty(b(0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2), 0, 10), true);
  assert.equal(hasRepeatedProperty(b(0x21, 0, 0, 0x21, 0, 5), 0, 6), true); // first one 0
  assert.equal(hasRepeatedProperty(b(0x01, 0, 0x21, 0, 5), 0, 5), false); // 0x01 and 0x21 share a bit position
  const pair = [0x26, 0, 1, 0x6b, 0, 1, 0x76];
  assert.equal(hasRepeatedProperty(b(...pair, ...pair), 0, 14), false);
  assert.equal(hasRepeatedProperty(b(0x1f, 0, 1, 0x61, 0x26, 0, 1, 0x6b, 0, 1, 0x76, 0x1f, 0, 0), 0, 14), true);
});

test('propertyBlockFault: 0 for well-formed, 0x82 for a repeat, 0x81 for unknown, too long or trailing', () => {
  const b = (...x: number[]): Buffer => Buffer.from(x);
  assert.equal(propertyBlockFault(b(0), 0, 1, true, ACK_ALLOWED), 0);
  assert.equal(propertyBlockFault(b(3, 0x1f, 0, 0), 0, 4, true, ACK_ALLOWED), 0);
  assert.equal(propertyBlockFault(b(6, 0x1f, 0, 0, 0x1f, 0, 0), 0, 7, true, ACK_ALLOWED), 0x82);
  assert.equal(propertyBlockFault(b(2, 0x7f, 0), 0, 3, true, ANY), 0x81);
  assert.equal(propertyBlockFault(b(5, 0x1f, 0, 0), 0, 4, true, ACK_ALLOWED), 0x81);
  assert.equal(propertyBlockFault(b(3, 0x1f, 0, 0, 0xaa), 0, 5, true, ACK_ALLOWED), 0x81); // bytes after the block
  assert.equal(propertyBlockFault(b(3, 0x1f, 0, 0, 0xaa), 0, 5, false, ACK_ALLOWED), 0); // a SUBSCRIBE's filters follow
  assert.equal(propertyBlockFault(b(0x80, 0x00), 0, 2, true, ACK_ALLOWED), 0x81, 'a property length in two bytes where one does');
});

/** One valid value for each identifier, by kind. */
const VALUE: Record<number, number[]> = {
  0x01: [0], 0x02: [0, 0, 0, 60], 0x03: [0, 1, 0x61], 0x08: [0, 1, 0x61], 0x09: [0, 1, 0xff], 0x0b: [1], 0x11: [0, 0, 0, 0],
  0x12: [0, 1, 0x61], 0x13: [0, 10], 0x15: [0, 1, 0x61], 0x16: [0, 1, 0xff], 0x17: [1], 0x18: [0, 0, 0, 0], 0x19: [0],
  0x1a: [0, 1, 0x61], 0x1c: [0, 1, 0x61], 0x1f: [0, 1, 0x61], 0x21: [0, 10], 0x22: [0, 10], 0x23: [0, 1], 0x24: [1],
  0x25: [1], 0x26: [0, 1, 0x6b, 0, 1, 0x76], 0x27: [0, 0, 0x10, 0], 0x28: [1], 0x29: [1], 0x2a: [1],
};

test('one allowed set per place [MQTT 5, 2.2.2.2]: every identifier a client may not send there is malformed (0x81)', () => {
  const places: [string, Uint8Array, number[]][] = [
    ['CONNECT', CONNECT_ALLOWED, [0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]],
    ['will', WILL_ALLOWED, [0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]],
    ['PUBACK, PUBREC, PUBREL, PUBCOMP', ACK_ALLOWED, [0x1f, 0x26]],
    ['SUBSCRIBE', SUBSCRIBE_ALLOWED, [0x0b, 0x26]],
    ['UNSUBSCRIBE', UNSUBSCRIBE_ALLOWED, [0x26]],
    ['DISCONNECT', DISCONNECT_ALLOWED, [0x11, 0x1c, 0x1f, 0x26]],
  ];
  for (const [name, table, allowed] of places) {
    for (let id = 0; id < 0x80; id++) {
      const bytes = Buffer.from([id, ...(VALUE[id] ?? [0])]);
      const want = allowed.includes(id) ? 0 : 0x81;
      assert.equal(propertyFault(bytes, 0, bytes.length, table), want, `${name}: identifier 0x${id.toString(16)}`);
    }
  }
});

test('values the specification calls a protocol error (0x82), and a Response Topic that is no topic name (0x90)', () => {
  const b = (...x: number[]): Buffer => Buffer.from(x);
  const fault = (table: Uint8Array, ...x: number[]): number => propertyFault(b(...x), 0, x.length, table);
  assert.equal(fault(CONNECT_ALLOWED, 0x21, 0, 0), 0x82, 'Receive Maximum 0');
  assert.equal(fault(CONNECT_ALLOWED, 0x27, 0, 0, 0, 0), 0x82, 'Maximum Packet Size 0');
  assert.equal(fault(CONNECT_ALLOWED, 0x17, 2), 0x82, 'Request Problem Information 2');
  assert.equal(fault(CONNECT_ALLOWED, 0x19, 2), 0x82, 'Request Response Information 2');
  assert.equal(fault(WILL_ALLOWED, 0x01, 2), 0x82, 'Payload Format Indicator 2');
  assert.equal(fault(WILL_ALLOWED, 0x08, 0, 3, 0x61, 0x2f, 0x2b), 0x90, 'a/+');
  assert.equal(fault(WILL_ALLOWED, 0x08, 0, 1, 0x23), 0x90, '#');
  assert.equal(fault(WILL_ALLOWED, 0x08, 0, 0), 0x90, 'empty');
  assert.equal(fault(WILL_ALLOWED, 0x08, 0, 3, 0x61, 0x2f, 0x62), 0, 'a/b');
  const scanned = scan([0x08, 0, 1, 0x2b]);
  assert.equal(scanned.error, 0x90, 'in a PUBLISH too');
});
