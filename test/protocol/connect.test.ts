// Unit tests for CONNECT decoding and CONNACK encoding (src/protocol/connect.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as mqttPacket from 'mqtt-packet';
import { decodeConnect, encodeConnack, type ConnectResult } from '../../src/protocol/connect';
import { Framer, FRAME_READY } from '../../src/protocol/framer';
import { varint } from '../helpers/bytes';

/** Frames `bytes` and decodes it; with `behind`, the CONNECT follows other packets in the same
 *  chunk, so its offsets inside the buffer are not 0. */
function decode(bytes: Buffer, behind = false): ConnectResult {
  const before = behind ? Buffer.from([0xc0, 0x00, 0x30, 0x03, 0x00, 0x01, 0x61]) : Buffer.alloc(0);
  const f = new Framer(1 << 20);
  f.push(Buffer.concat([before, bytes, Buffer.from([0xc0, 0x00])]));
  assert.equal(f.next(), FRAME_READY);
  if (behind) {
    assert.equal(f.next(), FRAME_READY);
    assert.equal(f.next(), FRAME_READY);
    assert.ok(f.end - f.size > 0);
  }
  assert.equal(f.header, 0x10);
  return decodeConnect(f.buf, f.end - f.size, f.start, f.end);
}

function connect(p: Partial<mqttPacket.IConnectPacket>): Buffer {
  return mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'dev-1', clean: true, keepalive: 30, ...p } as mqttPacket.IConnectPacket);
}

/** A CONNECT with a hand-written variable header (protocol name and level) and client id. */
function rawConnect(name: string, level: number, clientId: Buffer, flags = 0x02, extra: Buffer = Buffer.alloc(0)): Buffer {
  const n = Buffer.from(name, 'latin1');
  const body = Buffer.concat([
    Buffer.from([n.length >> 8, n.length & 0xff]), n, Buffer.from([level, flags, 0, 30]),
    level === 5 ? Buffer.from([0]) : Buffer.alloc(0),
    Buffer.from([clientId.length >> 8, clientId.length & 0xff]), clientId, extra,
  ]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

function refused(r: ConnectResult): { version: number; code: number } {
  assert.equal(r.ok, false, `expected a refusal, got ${JSON.stringify(r)}`);
  if (r.ok) throw new Error('unreachable');
  assert.equal(typeof r.reason, 'string');
  return { version: r.version, code: r.code };
}

test('MQTT 3.1.1 CONNECT is accepted with its fields', () => {
  for (const behind of [false, true]) {
    const r = decode(connect({ clientId: 'sensor-ü-1', keepalive: 45, username: 'user', password: Buffer.from('pw') }), behind);
    assert.ok(r.ok);
    assert.equal(r.version, 4);
    assert.equal(r.packet.clientId, 'sensor-ü-1');
    assert.equal(r.packet.keepalive, 45);
    assert.equal(r.packet.username, 'user');
    assert.deepEqual(r.packet.password, Buffer.from('pw'));
    assert.equal(r.packet.clean, true);
  }
});

test('MQTT 3.1 (MQIsdp, level 3) CONNECT is accepted', () => {
  const r = decode(connect({ protocolId: 'MQIsdp', protocolVersion: 3, clientId: 'legacy-device' }));
  assert.ok(r.ok);
  assert.equal(r.version, 3);
  assert.equal(r.packet.clientId, 'legacy-device');
});

test('MQTT 5.0 CONNECT with properties and a will with properties is accepted', () => {
  const r = decode(connect({
    protocolVersion: 5, clientId: 'v5-device', clean: false,
    properties: { sessionExpiryInterval: 300, receiveMaximum: 20, maximumPacketSize: 4096, topicAliasMaximum: 10, userProperties: { a: '1' } },
    will: {
      topic: 'devices/v5-device/status', payload: Buffer.from('offline'), qos: 1, retain: true,
      properties: { willDelayInterval: 5, payloadFormatIndicator: true, messageExpiryInterval: 60, contentType: 'text/plain', userProperties: { k: 'v' } },
    },
  }));
  assert.ok(r.ok, JSON.stringify(r));
  assert.equal(r.version, 5);
  const p = r.packet;
  assert.equal(p.clientId, 'v5-device');
  assert.equal(p.clean, false);
  assert.equal(p.properties?.sessionExpiryInterval, 300);
  assert.equal(p.properties?.receiveMaximum, 20);
  assert.equal(p.will?.topic, 'devices/v5-device/status');
  assert.deepEqual(p.will?.payload, Buffer.from('offline'));
  assert.equal(p.will?.qos, 1);
  assert.equal(p.will?.retain, true);
  assert.equal(p.will?.properties?.willDelayInterval, 5);
  assert.equal(p.will?.properties?.contentType, 'text/plain');
});

test('MQTT 5.0 with an empty client id and clean start = false is accepted (the server assigns one)', () => {
  // (mqtt-packet's generator refuses to write this, so by hand: flags 0x00 = clean start off.)
  const r = decode(rawConnect('MQTT', 5, Buffer.alloc(0), 0x00));
  assert.ok(r.ok);
  assert.equal(r.packet.clientId, '');
});

test('an unsupported protocol level gets the 3.1.1-style CONNACK 0x01', () => {
  for (const [name, level] of [['MQTT', 3], ['MQTT', 6], ['MQTT', 2], ['MQTT', 0], ['MQTT', 0x84], ['MQIsdp', 4], ['MQIsdp', 1]] as const) {
    const r = refused(decode(rawConnect(name, level, Buffer.from('id'))));
    assert.deepEqual(r, { version: 4, code: 0x01 }, `${name} level ${level}`);
  }
  const ok = decode(rawConnect('MQTT', 5, Buffer.from('id')));
  assert.ok(ok.ok, 'level 5 with the name MQTT is fine');
  assert.equal(ok.version, 5);
});

test('an unknown protocol name is closed without a CONNACK (version 0)', () => {
  for (const name of ['MQTX', 'mqtt', 'HTTP', '', 'MQIsdpX']) {
    const r = refused(decode(rawConnect(name, 4, Buffer.from('id'))));
    assert.equal(r.version, 0, JSON.stringify(name));
  }
  // Some bytes that are not an MQTT CONNECT body at all.
  const junk = Buffer.from([0x10, 0x03, 0x00, 0x05, 0x47]);
  assert.equal(refused(decode(junk)).version, 0);
});

test('a client id that is not valid UTF-8 is refused: closed for 3.1.1, CONNACK 0x81 for 5.0', () => {
  for (const id of [[0x61, 0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0x61, 0x00, 0x62]]) {
    const v4 = refused(decode(rawConnect('MQTT', 4, Buffer.from(id))));
    assert.equal(v4.version, 0, `v4 id ${Buffer.from(id).toString('hex')}`);
    const v5 = refused(decode(rawConnect('MQTT', 5, Buffer.from(id))));
    assert.deepEqual(v5, { version: 5, code: 0x81 }, `v5 id ${Buffer.from(id).toString('hex')}`);
  }
});

test('a client id with U+0000 after a multi-byte character is refused [MQTT-1.5.4-2]', () => {
  const r = decode(rawConnect('MQTT', 5, Buffer.from('é\u0000')));
  assert.equal(r.ok, false, 'client id C3 A9 00 accepted');
});

test('MQTT 3.1: a client id longer than 23 bytes (or empty) gets CONNACK 0x02', () => {
  const ok = decode(connect({ protocolId: 'MQIsdp', protocolVersion: 3, clientId: 'x'.repeat(23) }));
  assert.ok(ok.ok, '23 bytes is fine');
  assert.deepEqual(refused(decode(connect({ protocolId: 'MQIsdp', protocolVersion: 3, clientId: 'x'.repeat(24) }))), { version: 4, code: 0x02 });
  // 12 x "é" = 12 characters but 24 bytes.
  assert.deepEqual(refused(decode(connect({ protocolId: 'MQIsdp', protocolVersion: 3, clientId: 'é'.repeat(12) }))), { version: 4, code: 0x02 });
  assert.deepEqual(refused(decode(rawConnect('MQIsdp', 3, Buffer.alloc(0)))), { version: 4, code: 0x02 });
  const long311 = decode(connect({ clientId: 'x'.repeat(100) }));
  assert.ok(long311.ok, '3.1.1 allows longer ids');
});

test('MQTT 3.1.1: an empty client id needs clean session, else CONNACK 0x02', () => {
  assert.deepEqual(refused(decode(rawConnect('MQTT', 4, Buffer.alloc(0), 0x00))), { version: 4, code: 0x02 });
  const ok = decode(connect({ clientId: '', clean: true }));
  assert.ok(ok.ok);
  assert.equal(ok.packet.clientId, '');
});

test('a will topic with a wildcard is refused', () => {
  for (const topic of ['a/+/b', 'devices/#', '+']) {
    const v4 = refused(decode(connect({ will: { topic, payload: Buffer.from('x'), qos: 0, retain: false } })));
    assert.equal(v4.version, 0, `${topic}: 3.1.1 has no code for it, the connection is closed`);
    const v5 = refused(decode(connect({ protocolVersion: 5, will: { topic, payload: Buffer.from('x'), qos: 0, retain: false } })));
    assert.deepEqual(v5, { version: 5, code: 0x90 }, topic);
  }
});

test('a will topic or user name that is not valid UTF-8 is refused', () => {
  // flags: will (0x04) + clean (0x02); will topic "a" FF, empty will payload.
  const v4 = rawConnect('MQTT', 4, Buffer.from('id'), 0x06, Buffer.from([0, 2, 0x61, 0xff, 0, 0]));
  assert.equal(refused(decode(v4)).version, 0);
  const user = rawConnect('MQTT', 4, Buffer.from('id'), 0x82, Buffer.from([0, 2, 0xc3, 0x28]));
  assert.equal(refused(decode(user)).version, 0);
});

test('a will topic containing the (valid) character U+FFFD is accepted', () => {
  // U+FFFD is encoded as EF BF BD, well-formed UTF-8 and allowed in an MQTT string.
  const r = decode(connect({ will: { topic: 'status/\ufffd', payload: Buffer.from('x'), qos: 0, retain: false } }));
  assert.ok(r.ok, `refused: ${JSON.stringify(r)}`);
  const u = decode(connect({ username: 'name\ufffd', password: Buffer.from('p') }));
  assert.ok(u.ok, `refused: ${JSON.stringify(u)}`);
});

test('will QoS 3, and a will QoS or retain flag without a will, are malformed [MQTT-3.1.2-11, -13 to -15]', () => {
  // flags: clean (0x02) + will (0x04) + will QoS 3 (0x18); will topic "w", empty will payload.
  const will = Buffer.from([0, 1, 0x77, 0, 0]);
  assert.equal(refused(decode(rawConnect('MQTT', 4, Buffer.from('id'), 0x1e, will))).version, 0);
  const v5 = rawConnect('MQTT', 5, Buffer.from('id'), 0x1e, Buffer.concat([Buffer.from([0]), will]));
  assert.deepEqual(refused(decode(v5)), { version: 5, code: 0x81 });
  for (const flags of [0x0a, 0x12, 0x22]) {
    assert.equal(refused(decode(rawConnect('MQTT', 4, Buffer.from('id'), flags))).version, 0, `flags ${flags.toString(16)}`);
  }
  assert.ok(decode(rawConnect('MQTT', 4, Buffer.from('id'), 0x36, will)).ok, 'will QoS 2 with retain is fine');
});

test('a client id, will topic or user name with a control character is refused', () => {
  assert.equal(refused(decode(rawConnect('MQTT', 4, Buffer.from('id\u0007')))).version, 0);
  assert.equal(refused(decode(rawConnect('MQTT', 4, Buffer.from('id'), 0x06, Buffer.from([0, 2, 0x61, 0x0a, 0, 0])))).version, 0);
  assert.equal(refused(decode(connect({ username: 'name\uffff', password: Buffer.from('p') }))).version, 0);
});

/** An MQTT 5 CONNECT with hand-written CONNECT properties and, optionally, a will with its own. */
function v5Connect(props: number[], willProps: number[] | null = null): Buffer {
  const str = (b: Buffer): Buffer => Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
  const parts = [str(Buffer.from('MQTT')), Buffer.from([5, 0x02 | (willProps ? 0x04 : 0), 0, 30]), Buffer.from(varint(props.length)), Buffer.from(props), str(Buffer.from('id'))];
  if (willProps) parts.push(Buffer.from(varint(willProps.length)), Buffer.from(willProps), str(Buffer.from('w/t')), str(Buffer.from('x')));
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([0x10, ...varint(body.length)]), body]);
}

test('MQTT 5.0: a CONNECT or will property string (user property, content type) that is not valid UTF-8 or holds U+0000 gets CONNACK 0x81', () => {
  const bad = [0xc3, 0x28];
  const userProp = (k: number[], v: number[]): number[] => [0x26, 0, k.length, ...k, 0, v.length, ...v];
  const cases: [string, Buffer][] = [
    ['CONNECT user property name', v5Connect(userProp(bad, [0x76]))],
    ['CONNECT user property value U+0000', v5Connect(userProp([0x6b], [0x00]))],
    ['will content type', v5Connect([], [0x03, 0, 2, ...bad])],
    ['will user property value U+0000', v5Connect([], userProp([0x6b], [0x61, 0x00]))],
    ['will response topic', v5Connect([], [0x08, 0, 3, 0x61, ...bad])],
  ];
  for (const [what, bytes] of cases) assert.deepEqual(refused(decode(bytes)), { version: 5, code: 0x81 }, what);
  // The same shapes with good strings are accepted.
  assert.ok(decode(v5Connect(userProp([0x6b], [0x76]))).ok);
  assert.ok(decode(v5Connect([0x11, 0, 0, 0, 10], [0x03, 0, 4, 0x74, 0x65, 0x78, 0x74, ...userProp([0x6b], [0xc3, 0xa9])])).ok);
});

test('bytes after the last field the flags announce are malformed [MQTT-3.1.4-1]: closed for 3.1.1, CONNACK 0x81 for 5.0', () => {
  const extra = Buffer.from([0xaa, 0xbb]);
  assert.equal(refused(decode(rawConnect('MQTT', 4, Buffer.from('id'), 0x02, extra))).version, 0);
  assert.deepEqual(refused(decode(rawConnect('MQTT', 5, Buffer.from('id'), 0x02, extra))), { version: 5, code: 0x81 });
  // After a user name and password, and after a will.
  const withAuth = Buffer.concat([connect({ username: 'u', password: Buffer.from('p') }).subarray(2), extra]);
  assert.equal(refused(decode(Buffer.concat([Buffer.from([0x10, withAuth.length]), withAuth]))).version, 0);
  const full = v5Connect([], [0x18, 0, 0, 0, 1]);
  const longer = Buffer.concat([Buffer.from([0x10, full[1] + 1]), full.subarray(2), Buffer.from([0])]);
  assert.deepEqual(refused(decode(longer)), { version: 5, code: 0x81 });
  assert.ok(decode(full).ok);
  assert.ok(decode(connect({ username: 'u', password: Buffer.from('p') })).ok);
});

test('MQTT 3.1.1: a password without a user name is malformed [MQTT-3.1.2-22]; MQTT 5 allows it', () => {
  const pw = Buffer.from([0, 2, 0x70, 0x77]);
  assert.equal(refused(decode(rawConnect('MQTT', 4, Buffer.from('id'), 0x42, pw))).version, 0);
  assert.ok(decode(rawConnect('MQTT', 5, Buffer.from('id'), 0x42, pw)).ok);
});

test('MQTT 5.0: a property not allowed in CONNECT or in a will gets CONNACK 0x81; values the spec calls a protocol error 0x82; a will Response Topic with a wildcard 0x90', () => {
  // Topic Alias, Payload Format Indicator, Reason String in CONNECT; Session Expiry, Topic Alias in a will.
  for (const props of [[0x23, 0, 1], [0x01, 0], [0x1f, 0, 1, 0x61]]) assert.deepEqual(refused(decode(v5Connect(props))), { version: 5, code: 0x81 }, `CONNECT ${props}`);
  for (const props of [[0x11, 0, 0, 0, 1], [0x23, 0, 1]]) assert.deepEqual(refused(decode(v5Connect([], props))), { version: 5, code: 0x81 }, `will ${props}`);
  for (const props of [[0x21, 0, 0], [0x27, 0, 0, 0, 0], [0x17, 2], [0x19, 5], [0x16, 0, 1, 0x61]]) {
    assert.deepEqual(refused(decode(v5Connect(props))), { version: 5, code: 0x82 }, `CONNECT ${props}`);
  }
  assert.deepEqual(refused(decode(v5Connect([], [0x01, 2]))), { version: 5, code: 0x82 }, 'will Payload Format Indicator 2');
  assert.deepEqual(refused(decode(v5Connect([], [0x08, 0, 3, 0x61, 0x2f, 0x23]))), { version: 5, code: 0x90 }, 'will Response Topic a/#');
  assert.ok(decode(v5Connect([0x17, 1, 0x19, 0, 0x21, 0, 1, 0x27, 0, 0, 0, 1], [0x08, 0, 3, 0x61, 0x2f, 0x62])).ok);
});

test('a CONNECT mqtt-packet cannot parse is refused (reserved flag, truncated)', () => {
  const reserved = rawConnect('MQTT', 4, Buffer.from('id'), 0x03);
  assert.equal(refused(decode(reserved)).version, 0);
  const reserved5 = rawConnect('MQTT', 5, Buffer.from('id'), 0x03);
  assert.deepEqual(refused(decode(reserved5)), { version: 5, code: 0x81 });
  const truncated = Buffer.from([0x10, 0x08, 0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 2]);
  assert.equal(refused(decode(truncated)).version, 0);
});

test('encodeConnack for 3.1.1: the exact 4 bytes, parsed back by mqtt-packet', () => {
  assert.deepEqual(encodeConnack(4, 0), Buffer.from([0x20, 0x02, 0x00, 0x00]));
  assert.deepEqual(encodeConnack(3, 0x02), Buffer.from([0x20, 0x02, 0x00, 0x02]));
  const opts = { sessionPresent: true, receiveMaximum: 10, maximumPacketSize: 1000, topicAliasMaximum: 5 };
  assert.deepEqual(encodeConnack(4, 0, opts), Buffer.from([0x20, 0x02, 0x01, 0x00]));
  for (const code of [0, 1, 2, 3, 4, 5]) {
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    let got: mqttPacket.IConnackPacket | undefined;
    parser.on('packet', (p: mqttPacket.Packet) => { got = p as mqttPacket.IConnackPacket; });
    parser.on('error', (e: Error) => assert.fail(e.message));
    parser.parse(encodeConnack(4, code, { ...opts, sessionPresent: code === 0 }));
    assert.equal(got?.cmd, 'connack');
    assert.equal(got?.returnCode, code);
    assert.equal(got?.sessionPresent, code === 0);
  }
});

function parseConnackV5(b: Buffer): mqttPacket.IConnackPacket {
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  let got: mqttPacket.IConnackPacket | undefined;
  parser.on('packet', (p: mqttPacket.Packet) => { got = p as mqttPacket.IConnackPacket; });
  parser.on('error', (e: Error) => assert.fail(e.message));
  assert.equal(parser.parse(b), 0);
  assert.ok(got);
  return got;
}

test('encodeConnack for 5.0: properties parse back with mqtt-packet', () => {
  const p = parseConnackV5(encodeConnack(5, 0, {
    sessionPresent: false, receiveMaximum: 100, maximumPacketSize: 262144, topicAliasMaximum: 16, assignedClientIdentifier: 'fanout-abc',
    sessionExpiryInterval: 600,
  }));
  assert.equal(p.reasonCode, 0);
  assert.equal(p.sessionPresent, false);
  assert.deepEqual({ ...p.properties }, {
    receiveMaximum: 100, maximumPacketSize: 262144, topicAliasMaximum: 16, retainAvailable: true,
    assignedClientIdentifier: 'fanout-abc', sessionExpiryInterval: 600,
  });
  const noId = parseConnackV5(encodeConnack(5, 0, { sessionPresent: true, receiveMaximum: 1, maximumPacketSize: 64, topicAliasMaximum: 0 }));
  assert.equal(noId.sessionPresent, true);
  assert.equal(noId.properties?.assignedClientIdentifier, undefined);
  assert.equal(noId.properties?.topicAliasMaximum, 0);
  assert.equal(noId.properties?.sessionExpiryInterval, undefined);
});

test('encodeConnack for 5.0 refusals carries the reason code and no properties', () => {
  for (const code of [0x81, 0x84, 0x85, 0x8c, 0x90]) {
    const b = encodeConnack(5, code, { sessionPresent: false, receiveMaximum: 1, maximumPacketSize: 64, topicAliasMaximum: 0 });
    const p = parseConnackV5(b);
    assert.equal(p.reasonCode, code);
    assert.equal(p.properties, undefined);
    assert.deepEqual(encodeConnack(5, code), b, 'same bytes with or without options');
    assert.deepEqual(b, Buffer.from([0x20, 0x03, 0x00, code, 0x00]));
  }
});

test('decoding works at any offset inside a chunk (3.1.1 and 5.0)', () => {
  const v5 = decode(connect({ protocolVersion: 5, clientId: 'abc', properties: { sessionExpiryInterval: 10, userProperties: { x: 'y' } } }), true);
  assert.ok(v5.ok);
  assert.equal(v5.packet.clientId, 'abc');
  assert.deepEqual(refused(decode(rawConnect('MQTT', 5, Buffer.from([0x61, 0xff])), true)), { version: 5, code: 0x81 });
  assert.equal(refused(decode(rawConnect('MQTT', 4, Buffer.from([0x61, 0xff])), true)).version, 0);
  assert.deepEqual(refused(decode(rawConnect('MQTT', 6, Buffer.from('id')), true)), { version: 4, code: 0x01 });
});
