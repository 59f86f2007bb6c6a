// Unit tests for the MQTT stream framer and the variable byte integer helpers
// (src/protocol/framer.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as mqttPacket from 'mqtt-packet';
import {
  Framer, FRAME_BAD_LENGTH, FRAME_INCOMPLETE, FRAME_READY, FRAME_TOO_LARGE, readVarint, varintSize, writeVarint,
} from '../../src/protocol/framer';
import * as framer from '../../src/protocol/framer';

interface Frame {
  header: number;
  /** The whole packet, taken through (buf, end - size, end) the way the shard reads it. */
  packet: Buffer;
  body: Buffer;
  size: number;
}

/** Feeds `chunks` one by one, taking every ready frame after each push. */
function frames(chunks: Buffer[], maxPacketSize = 1 << 28): { frames: Frame[]; last: number; left: number } {
  const f = new Framer(maxPacketSize);
  const out: Frame[] = [];
  let last = FRAME_INCOMPLETE;
  for (const c of chunks) {
    f.push(c);
    for (;;) {
      last = f.next();
      if (last !== FRAME_READY) break;
      assert.ok(f.start <= f.end && f.end <= f.buf.length);
      out.push({
        header: f.header,
        packet: Buffer.from(f.buf.subarray(f.end - f.size, f.end)),
        body: Buffer.from(f.buf.subarray(f.start, f.end)),
        size: f.size,
      });
    }
    if (last !== FRAME_INCOMPLETE) break;
  }
  return { frames: out, last, left: f.buffered };
}

/** A packet with an arbitrary first byte and a body of `len` bytes of derived content. */
function rawPacket(first: number, len: number): Buffer {
  const head = Buffer.alloc(5);
  head[0] = first;
  const n = writeVarint(head, 1, len);
  const body = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) body[i] = (i * 13 + len) & 0xff;
  return Buffer.concat([head.subarray(0, n), body]);
}

function expectFrames(stream: Buffer[], packets: Buffer[], ctx: string): void {
  const r = frames(stream);
  assert.equal(r.last, FRAME_INCOMPLETE, ctx);
  assert.equal(r.left, 0, `${ctx}: nothing left over`);
  assert.equal(r.frames.length, packets.length, ctx);
  for (let i = 0; i < packets.length; i++) {
    const got = r.frames[i];
    const want = packets[i];
    assert.equal(got.header, want[0], `${ctx}: packet ${i} header`);
    assert.equal(got.size, want.length, `${ctx}: packet ${i} size`);
    assert.ok(got.packet.equals(want), `${ctx}: packet ${i} bytes`);
    const headerLen = want.length - got.body.length;
    assert.ok(headerLen >= 2 && headerLen <= 5, `${ctx}: packet ${i} header length ${headerLen}`);
  }
}

const SAMPLE: Buffer[] = [
  mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'dev-1', clean: true, keepalive: 30 }),
  mqttPacket.generate({ cmd: 'publish', topic: 'a/b', payload: Buffer.from('hello'), qos: 1, messageId: 7, retain: false, dup: false }),
  mqttPacket.generate({ cmd: 'pingreq' }),
  mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(200, 1), qos: 0, retain: true, dup: false }),
  mqttPacket.generate({ cmd: 'puback', messageId: 0x1234 }),
  mqttPacket.generate({ cmd: 'disconnect' }),
];

test('a stream split at every byte boundary (two chunks) yields the same frames', () => {
  const stream = Buffer.concat(SAMPLE);
  for (let k = 0; k <= stream.length; k++) {
    expectFrames([stream.subarray(0, k), stream.subarray(k)], SAMPLE, `split at ${k}`);
  }
});

test('a stream split at every pair of byte boundaries (three chunks) yields the same frames', () => {
  const packets = SAMPLE.slice(0, 3).concat(SAMPLE.slice(4));
  const stream = Buffer.concat(packets);
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j++) {
      expectFrames([stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)], packets, `split at ${i}, ${j}`);
    }
  }
});

test('a stream fed one byte at a time yields the same frames, with 1- to 4-byte lengths', () => {
  const packets = [
    rawPacket(0x30, 0), rawPacket(0xc0, 0), rawPacket(0x32, 127), rawPacket(0x30, 128), rawPacket(0x31, 16383),
    rawPacket(0x30, 16384), rawPacket(0x3d, 20000),
  ];
  const stream = Buffer.concat(packets);
  const bytes: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1));
  expectFrames(bytes, packets, 'byte by byte');
});

test('several packets in one chunk are handed out zero-copy over that chunk', () => {
  const chunk = Buffer.concat(SAMPLE);
  const f = new Framer(1 << 20);
  f.push(chunk);
  let at = 0;
  for (const p of SAMPLE) {
    assert.equal(f.next(), FRAME_READY);
    assert.equal(f.buf, chunk, 'no copy for a packet inside one chunk');
    assert.equal(f.end - f.size, at);
    assert.equal(f.end, at + p.length);
    assert.equal(f.header, p[0]);
    at += p.length;
  }
  assert.equal(f.next(), FRAME_INCOMPLETE);
  assert.equal(f.buffered, 0);
});

test('a packet spanning chunks is joined into one buffer that starts with the fixed header', () => {
  const p = SAMPLE[1];
  const f = new Framer(1 << 20);
  f.push(p.subarray(0, 3));
  assert.equal(f.next(), FRAME_INCOMPLETE);
  assert.equal(f.buffered, 3);
  f.push(p.subarray(3));
  assert.equal(f.next(), FRAME_READY);
  assert.equal(f.end - f.size, 0);
  assert.ok(f.buf.subarray(0, f.end).equals(p));
  assert.equal(f.buffered, 0);
});

test('remaining length of 1, 2, 3 and 4 bytes at every boundary value', () => {
  // 2097152 (4 bytes) takes a 2 MiB body; the largest value is checked without its body below.
  for (const len of [0, 1, 127, 128, 129, 16383, 16384, 2097151, 2097152]) {
    const p = rawPacket(0x30, len);
    const headerLen = 1 + varintSize(len);
    const { frames: got, left } = frames([p]);
    assert.equal(got.length, 1, `length ${len}`);
    assert.equal(got[0].size, headerLen + len);
    assert.equal(got[0].body.length, len);
    assert.equal(left, 0);
    // One byte short stays incomplete.
    assert.equal(frames([p.subarray(0, p.length - 1)]).frames.length, 0, `length ${len} minus one byte`);
  }
  // 268435455 (0xff 0xff 0xff 0x7f): complete length field, body still to come.
  const f = new Framer(1 << 30);
  f.push(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3]));
  assert.equal(f.next(), FRAME_INCOMPLETE);
});

test('a length field with a continuation bit on its 4th byte is FRAME_BAD_LENGTH', () => {
  const bad = Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0]);
  const f = new Framer(1 << 30);
  f.push(bad);
  assert.equal(f.next(), FRAME_BAD_LENGTH);
  // Also when the length bytes arrive one by one: incomplete until the 5th byte shows up.
  const g = new Framer(1 << 30);
  for (let i = 0; i < 5; i++) {
    g.push(bad.subarray(i, i + 1));
    assert.equal(g.next(), i < 4 ? FRAME_INCOMPLETE : FRAME_BAD_LENGTH, `after ${i + 1} bytes`);
  }
  for (const first of [0x10, 0x82, 0xe0]) {
    const h = new Framer(1 << 30);
    h.push(Buffer.from([first, 0x80, 0x80, 0x80, 0x80]));
    assert.equal(h.next(), FRAME_BAD_LENGTH);
  }
});

test('a packet larger than maxPacketSize (fixed header included) is FRAME_TOO_LARGE before its body arrives', () => {
  const p = rawPacket(0x30, 300); // 3 + 300 bytes
  assert.equal(p.length, 303);
  const exact = frames([p], 303);
  assert.equal(exact.frames.length, 1, 'a packet of exactly maxPacketSize is fine');
  for (const max of [302, 100, 64]) {
    const f = new Framer(max);
    f.push(p.subarray(0, 3)); // only the fixed header
    assert.equal(f.next(), FRAME_TOO_LARGE, `max ${max}`);
  }
  const huge = new Framer(262144);
  huge.push(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]));
  assert.equal(huge.next(), FRAME_TOO_LARGE);
});

test('reset() drops everything buffered', () => {
  const f = new Framer(1 << 20);
  f.push(SAMPLE[0].subarray(0, 5));
  f.reset();
  assert.equal(f.buffered, 0);
  f.push(SAMPLE[2]);
  assert.equal(f.next(), FRAME_READY);
  assert.equal(f.header, SAMPLE[2][0]);
});

test('empty chunks are ignored', () => {
  const p = SAMPLE[1];
  expectFrames([Buffer.alloc(0), p.subarray(0, 1), Buffer.alloc(0), p.subarray(1, 2), Buffer.alloc(0), p.subarray(2)], [p], 'empty chunks');
});

const BOUNDARIES = [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455];

test('varint encode/decode round trip at the boundary values, in the minimal number of bytes', () => {
  const sizes = [1, 1, 1, 2, 2, 3, 3, 4, 4];
  BOUNDARIES.forEach((n, i) => {
    assert.equal(varintSize(n), sizes[i], `varintSize(${n})`);
    const buf = Buffer.alloc(8, 0xaa);
    const end = writeVarint(buf, 2, n);
    assert.equal(end - 2, sizes[i], `writeVarint(${n}) length`);
    assert.equal(buf[1], 0xaa, 'nothing written before pos');
    assert.equal(buf[end], 0xaa, 'nothing written after the returned position');
    assert.equal(readVarint(buf, 2, end), n, `readVarint(${n})`);
    assert.equal(framer.varintEnd, end, `varintEnd after readVarint(${n})`);
    // mqtt-packet writes the same bytes as the remaining length of a PUBLISH of that size.
    if (n >= 3 && n <= 2097152) {
      const pkt = mqttPacket.generate({ cmd: 'publish', topic: 'a', payload: Buffer.alloc(n - 3), qos: 0, retain: false, dup: false });
      assert.ok(pkt.subarray(1, 1 + sizes[i]).equals(buf.subarray(2, end)), `mqtt-packet encodes ${n} the same way`);
    }
  });
});

test('readVarint: truncation, the end bound, a 5th byte and a longer encoding than needed give -1', () => {
  const buf = Buffer.from([0x00, 0xff, 0x7f, 0x99]);
  assert.equal(readVarint(buf, 1, buf.length), 16383);
  assert.equal(framer.varintEnd, 3);
  assert.equal(readVarint(Buffer.from([0x80, 0x80]), 0, 2), -1, 'truncated');
  assert.equal(readVarint(Buffer.from([0x81, 0x01]), 0, 1), -1, 'end bound honoured');
  assert.equal(readVarint(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x01]), 0, 5), -1, 'five bytes');
  // [MQTT-1.5.5-1]: the shortest encoding only.
  assert.equal(readVarint(Buffer.from([0x80, 0x00]), 0, 2), -1, '0 in two bytes');
  assert.equal(readVarint(Buffer.from([0x81, 0x80, 0x00]), 0, 3), -1, '1 in three bytes');
  assert.equal(readVarint(Buffer.from([0x80, 0x01]), 0, 2), 128, 'a last byte other than 0 is minimal');
});

test('writeVarint/readVarint agree for 10,000 pseudo-random values', () => {
  let x = 12345;
  const buf = Buffer.alloc(4);
  for (let i = 0; i < 10000; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const n = x % 268435456;
    const end = writeVarint(buf, 0, n);
    assert.equal(end, varintSize(n));
    assert.equal(readVarint(buf, 0, end), n);
  }
});
