// Unit tests for MQTT 5 No Local support (src/shard/no-local.ts): the fingerprint of a publish
// and the bounded memory of a device's recent publishes [MQTT-3.8.3-3].

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fingerprint, OwnPublishes } from '../../src/shard/no-local';
import { mulberry32 } from '../helpers/prng';

/** Publishes remembered per device (REMEMBERED in the source). */
const REMEMBERED = 1024;

function fp(topic: string, payload: string | Buffer): number {
  const t = Buffer.from(topic);
  const p = typeof payload === 'string' ? Buffer.from(payload) : payload;
  return fingerprint(t, 0, t.length, p, 0, p.length);
}

/** FNV-1a 32 over topic | 0xff | payload, as the source comment describes it. */
function fnv1a(bytes: Buffer): number {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193);
  return h >>> 0;
}

test('fingerprint: FNV-1a over topic, a separator and payload, with the payload length above it', () => {
  for (const [topic, payload] of [['a/b', 'hello'], ['', ''], ['x', ''], ['sensors/42/temp', '21.5'], ['é/ü', '\u{1F600}']]) {
    const t = Buffer.from(topic);
    const p = Buffer.from(payload);
    const want = fnv1a(Buffer.concat([t, Buffer.from([0xff]), p])) + p.length * 2 ** 32;
    assert.equal(fp(topic, payload), want, `${topic} | ${payload}`);
  }
});

test('fingerprint: reads only the given ranges, wherever they lie in their buffers', () => {
  const frame = Buffer.from('xxxxa/b/cyyyyPAYLOADzz');
  const got = fingerprint(frame, 4, 9, frame, 13, 20);
  assert.equal(got, fp('a/b/c', 'PAYLOAD'));
  // The topic and payload in one ring record (a SharedArrayBuffer view, as the shard reads them).
  const shared = Buffer.from(new SharedArrayBuffer(64));
  shared.write('a/b/cPAYLOAD', 10);
  assert.equal(fingerprint(shared, 10, 15, shared, 15, 22), fp('a/b/c', 'PAYLOAD'));
});

test('fingerprint: the topic/payload boundary counts ("ab"+"c" is not "a"+"bc")', () => {
  assert.notEqual(fp('ab', 'c'), fp('a', 'bc'));
  assert.notEqual(fp('a', ''), fp('', 'a'));
  assert.notEqual(fp('t', 'x'), fp('t', 'y'));
  assert.notEqual(fp('t', 'x'), fp('u', 'x'));
});

test('fingerprint: a non-negative integer, and distinct for distinct random publishes', () => {
  const r = mulberry32(7);
  const seen = new Map<number, string>();
  for (let i = 0; i < 20_000; i++) {
    const topic = `t/${Math.floor(r() * 1e9)}`;
    const len = Math.floor(r() * 40);
    const payload = Buffer.alloc(len);
    for (let j = 0; j < len; j++) payload[j] = Math.floor(r() * 256);
    const key = `${topic}|${payload.toString('hex')}`;
    const f = fp(topic, payload);
    assert.ok(Number.isSafeInteger(f) && f >= 0, String(f));
    const other = seen.get(f);
    if (other !== undefined && other !== key) assert.fail(`collision: ${other} and ${key}`);
    seen.set(f, key);
  }
});

test('OwnPublishes: a remembered publish is taken once; one never remembered is not', () => {
  const own = new OwnPublishes();
  const a = fp('a', '1');
  const b = fp('b', '1');
  assert.equal(own.take(a), false);
  own.remember(a);
  assert.equal(own.take(b), false);
  assert.equal(own.take(a), true);
  assert.equal(own.take(a), false, 'the copy coming back was consumed');
});

test('OwnPublishes: the same publish twice comes back twice', () => {
  const own = new OwnPublishes();
  const a = fp('status', 'online');
  own.remember(a);
  own.remember(a);
  assert.equal(own.take(a), true);
  assert.equal(own.take(a), true);
  assert.equal(own.take(a), false);
});

test(`OwnPublishes: remembers the last ${REMEMBERED} publishes and forgets older ones`, () => {
  const own = new OwnPublishes();
  for (let i = 0; i <= REMEMBERED; i++) own.remember(fp('t', String(i)));
  assert.equal(own.take(fp('t', '0')), false, 'the oldest of 1025 is forgotten');
  assert.equal(own.take(fp('t', '1')), true, 'the 1024 most recent are kept');
  assert.equal(own.take(fp('t', String(REMEMBERED))), true);
});

test('OwnPublishes: memory stays bounded over a long run and the most recent stay takeable', () => {
  const own = new OwnPublishes();
  const total = 10 * REMEMBERED + 123;
  for (let i = 0; i < total; i++) own.remember(fp('t', String(i)));
  // Peeks at the internals: bounded memory is the point of the class.
  const inner = own as unknown as { counts: Map<number, number>; order: number[] };
  assert.ok(inner.counts.size <= REMEMBERED, `counts ${inner.counts.size}`);
  assert.ok(inner.order.length <= 2 * REMEMBERED + 1, `order ${inner.order.length}`);
  for (let i = total - REMEMBERED; i < total; i++) assert.equal(own.take(fp('t', String(i))), true, String(i));
  for (let i = 0; i < total - REMEMBERED; i += 97) assert.equal(own.take(fp('t', String(i))), false, String(i));
});

test('OwnPublishes: a repeated publish forgotten for age leaves its newer copy remembered', () => {
  const own = new OwnPublishes();
  const a = fp('status', 'online');
  own.remember(a); // published...
  assert.equal(own.take(a), true); // ...and back from the broker: skipped.
  own.remember(a); // published again: its copy is on its way back
  for (let i = 0; i < REMEMBERED - 1; i++) own.remember(fp('other', String(i)));
  // The second copy is among the 1024 most recent publishes.
  assert.equal(own.take(a), true);
});

test('OwnPublishes: random remember/take against a model of the last 1024 publishes', () => {
  // Distinct publishes only: repeated ones are the deterministic tests' business (above).
  const r = mulberry32(99);
  const own = new OwnPublishes();
  const model: { fp: number; at: number; taken: boolean }[] = [];
  for (let step = 0; step < 20_000; step++) {
    if (model.length === 0 || r() < 0.6) {
      const f = fp('t', String(model.length));
      own.remember(f);
      model.push({ fp: f, at: model.length, taken: false });
    } else {
      // Mostly recent ones, sometimes anything ever published.
      const back = r() < 0.8 ? Math.floor(r() * 1200) : Math.floor(r() * model.length);
      const m = model[Math.max(0, model.length - 1 - back)];
      const expected = !m.taken && model.length - m.at <= REMEMBERED;
      assert.equal(own.take(m.fp), expected, `step ${step}: publish ${m.at} of ${model.length}, taken ${m.taken}`);
      if (expected) m.taken = true;
    }
  }
});
