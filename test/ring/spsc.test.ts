// Unit tests for the single-producer / single-consumer ring (src/ring/spsc.ts).
//
// The last test runs the producer in a worker thread: this same file is the worker's script (the
// isMainThread branch at the bottom), so no helper .js lands in dist/test/ where `node --test`
// would pick it up as a test file of its own.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { createRing, RingConsumer, RingProducer, type RingBuffers } from '../../src/ring/spsc';
import { createDoorbell, Doorbell } from '../../src/ring/doorbell';
import { mulberry32 } from '../helpers/prng';
import { alive } from '../helpers/wait';

// Layout facts from src/ring/spsc.ts, used only to start the free-running counters near 2^32.
const CTRL_HEAD = 0; // Int32 index of the producer counter
const CTRL_TAIL = 16; // Int32 index of the consumer counter
const WRAP = 0xffffffff;


/** Bytes a record of `len` body bytes takes in the ring: u32 length + body padded to 4. */
function footprint(len: number): number {
  return 4 + Math.ceil(len / 4) * 4;
}

/** Deterministic record body: byte j of record `seq` with length `len`. */
function contentByte(seq: number, len: number, j: number): number {
  return (seq * 31 + j * 7 + len) & 0xff;
}

function fill(buf: Buffer, at: number, seq: number, len: number): void {
  for (let j = 0; j < len; j++) buf[at + j] = contentByte(seq, len, j);
}

function body(seq: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  fill(b, 0, seq, len);
  return b;
}

function ringAt(capacity: number, start: number): RingBuffers {
  const ring = createRing(capacity);
  const ctrl = new Int32Array(ring.sab, 0, 48);
  ctrl[CTRL_HEAD] = start | 0;
  ctrl[CTRL_TAIL] = start | 0;
  return ring;
}

function write(p: RingProducer, seq: number, len: number): number {
  const at = p.reserve(len);
  if (at >= 0) fill(p.buffer, at, seq, len);
  return at;
}

function readBody(c: RingConsumer): Buffer | null {
  const at = c.next();
  if (at < 0) return null;
  return Buffer.from(c.buffer.subarray(at, at + c.lastLength));
}

if (isMainThread) {
  test('createRing validates the capacity: a power of two of at least 1024', () => {
    for (const bad of [0, 1, 512, 1000, 1023, 1025, 3000, 65535, -1024, 1.5]) {
      assert.throws(() => createRing(bad), RangeError, `capacity ${bad}`);
    }
    for (const good of [1024, 2048, 65536, 1 << 20]) {
      const r = createRing(good);
      assert.equal(r.capacity, good);
      assert.ok(r.sab instanceof SharedArrayBuffer);
      assert.ok(r.sab.byteLength >= good);
      assert.equal(new RingProducer(r).capacity, good);
      assert.equal(new RingConsumer(r).capacity, good);
    }
  });

  test('records of every size 0..300 round-trip in order, with zero-copy views of the data area', () => {
    const ring = createRing(8192);
    const p = new RingProducer(ring);
    const c = new RingConsumer(ring);
    let seq = 0;
    for (let round = 0; round < 20; round++) {
      const lens: number[] = [];
      for (let k = 0; k < 15; k++) {
        const len = (round * 15 + k) % 301;
        assert.ok(write(p, seq + k, len) >= 0, `reserve(${len})`);
        lens.push(len);
      }
      p.commit();
      for (let k = 0; k < lens.length; k++) {
        const at = c.next();
        assert.ok(at >= 0);
        assert.equal(at % 4, 0, 'bodies are 4-aligned');
        assert.equal(c.lastLength, lens[k]);
        assert.ok(c.buffer.subarray(at, at + lens[k]).equals(body(seq + k, lens[k])), `record ${seq + k}`);
        assert.equal(c.buffer.buffer, ring.sab, 'the consumer view is over the shared memory');
      }
      assert.equal(c.next(), -1);
      c.release();
      seq += lens.length;
    }
    assert.equal(p.used(), 0);
  });

  test('a record that does not fit before the end is preceded by a WRAP marker and starts at 0', () => {
    const ring = createRing(1024);
    const p = new RingProducer(ring);
    const c = new RingConsumer(ring);
    // 9 records of 100 bytes take 9 * 104 = 936 bytes; 88 remain before the end.
    for (let i = 0; i < 9; i++) assert.ok(write(p, i, 100) >= 0);
    p.commit();
    assert.equal(p.used(), 936);
    // A 10th needs 104 contiguous bytes: 88 (skipped) + 104 > 1024 - 936, so the ring is full.
    assert.equal(p.canFit(100), false);
    assert.equal(p.reserve(100), -1);
    // A record that fits the 88 bytes left at the end does not wrap.
    assert.equal(p.canFit(84), true);
    // Free one record: now 832 + 88 + 104 = 1024 fits exactly, at offset 0 behind a WRAP marker.
    assert.ok(readBody(c)!.equals(body(0, 100)));
    c.release();
    assert.equal(p.canFit(100), true);
    const at = write(p, 9, 100);
    assert.equal(at, 4, 'the wrapped record body starts right after its length at offset 0');
    assert.equal(p.dataView.getUint32(936, true), WRAP, 'WRAP marker at the old end');
    p.commit();
    assert.equal(p.used(), 1024, 'the skipped tail counts as used until the consumer passes it');
    assert.equal(p.reserve(0), -1, 'completely full');
    for (let i = 1; i <= 9; i++) {
      const b = readBody(c);
      assert.ok(b !== null && b.equals(body(i, 100)), `record ${i}`);
    }
    assert.equal(c.next(), -1);
    c.release();
    assert.equal(c.used(), 0);
  });

  test('a record that ends exactly at the end of the data area does not wrap', () => {
    const ring = createRing(1024);
    const p = new RingProducer(ring);
    const c = new RingConsumer(ring);
    assert.equal(write(p, 0, 508), 4);
    assert.equal(write(p, 1, 508), 516);
    p.commit();
    assert.equal(p.used(), 1024);
    assert.ok(readBody(c)!.equals(body(0, 508)));
    c.release();
    assert.equal(write(p, 2, 508), 4, 'next record at offset 0 without a marker');
    p.commit();
    assert.ok(readBody(c)!.equals(body(1, 508)));
    assert.ok(readBody(c)!.equals(body(2, 508)));
    assert.equal(c.next(), -1);
  });

  test('a full ring returns -1 from reserve() and false from canFit(); release frees the space', () => {
    const ring = createRing(1024);
    const p = new RingProducer(ring);
    const c = new RingConsumer(ring);
    let n = 0;
    while (write(p, n, 60) >= 0) n++;
    assert.equal(n, 1024 / 64, 'exactly capacity / footprint records of 60 bytes fit');
    assert.equal(p.canFit(0), false);
    assert.equal(p.reserve(0), -1);
    assert.equal(p.reserve(60), -1);
    p.commit();
    // Reading without release() frees nothing.
    assert.ok(readBody(c)!.equals(body(0, 60)));
    assert.ok(readBody(c)!.equals(body(1, 60)));
    assert.equal(p.canFit(60), false);
    assert.equal(p.reserve(60), -1);
    assert.equal(c.release(), true, 'release() reports the producer that found the ring full');
    assert.equal(c.release(), false, 'and only once');
    assert.equal(p.canFit(124), true);
    assert.ok(write(p, n, 60) >= 0);
    assert.ok(write(p, n + 1, 60) >= 0);
    assert.equal(p.reserve(0), -1);
    p.commit();
    for (let i = 2; i < n + 2; i++) assert.ok(readBody(c)!.equals(body(i, 60)), `record ${i}`);
    assert.equal(c.next(), -1);
    assert.equal(c.release(), true);
    assert.equal(p.used(), 0);
  });

  test('records larger than the ring are refused outright', () => {
    const ring = createRing(1024);
    const p = new RingProducer(ring);
    assert.equal(p.reserve(1021), -1);
    assert.equal(p.canFit(1021), false);
    assert.equal(p.reserve(1 << 20), -1);
    assert.equal(p.reserve(1020), 4, 'a record of exactly the capacity fits an empty ring at 0');
    p.commit();
    const c = new RingConsumer(ring);
    assert.ok(c.next() === 4 && c.lastLength === 1020);
  });

  test('records become visible only at commit(); commit() reports whether anything was new', () => {
    const ring = createRing(1024);
    const p = new RingProducer(ring);
    const c = new RingConsumer(ring);
    assert.equal(p.commit(), false);
    write(p, 1, 10);
    write(p, 2, 20);
    assert.equal(c.hasData(), false);
    assert.equal(c.next(), -1);
    assert.equal(c.used(), 0);
    assert.equal(p.commit(), true);
    assert.equal(p.commit(), false);
    assert.equal(c.hasData(), true);
    assert.equal(c.hasData(), true, 'hasData() consumes nothing');
    assert.equal(c.used(), footprint(10) + footprint(20));
    write(p, 3, 30); // reserved, not committed
    assert.ok(readBody(c)!.equals(body(1, 10)));
    assert.ok(readBody(c)!.equals(body(2, 20)));
    assert.equal(c.next(), -1, 'the uncommitted record stays invisible');
    assert.equal(c.hasData(), false);
    p.commit();
    assert.ok(readBody(c)!.equals(body(3, 30)));
  });

  test('unreadLast() re-delivers the last record, also across a WRAP marker, and keeps it unreleased', () => {
    const ring = createRing(1024);
    const p = new RingProducer(ring);
    const c = new RingConsumer(ring);
    for (let i = 0; i < 9; i++) write(p, i, 100);
    p.commit();
    for (let i = 0; i < 9; i++) readBody(c);
    c.release();
    write(p, 9, 200); // wraps: 88 bytes skipped at the end
    write(p, 10, 5);
    p.commit();
    const first = readBody(c)!;
    assert.ok(first.equals(body(9, 200)));
    c.unreadLast();
    c.release();
    assert.equal(c.used(), 88 + footprint(200) + footprint(5), 'the put-back record (and the skip) are not released');
    assert.ok(readBody(c)!.equals(body(9, 200)), 're-delivered after the wrap');
    assert.ok(readBody(c)!.equals(body(10, 5)));
    c.unreadLast();
    assert.ok(readBody(c)!.equals(body(10, 5)), 're-delivered again');
    assert.equal(c.next(), -1);
    c.release();
    assert.equal(c.used(), 0);
  });

  test('a consumer created later resumes at the released position', () => {
    const ring = createRing(1024);
    const p = new RingProducer(ring);
    const c1 = new RingConsumer(ring);
    for (let i = 0; i < 4; i++) write(p, i, 33);
    p.commit();
    readBody(c1);
    readBody(c1);
    c1.release();
    readBody(c1); // read, not released
    const c2 = new RingConsumer(ring);
    assert.ok(readBody(c2)!.equals(body(2, 33)));
    assert.ok(readBody(c2)!.equals(body(3, 33)));
  });

  // Model-based: a reference of the documented layout (u32 length + body padded to 4, a record
  // never wraps, free-running counters) decides what must fit; random operations compare.
  for (const [name, start] of [
    ['counters from 0', 0],
    ['counters wrapping past 2^32', 2 ** 32 - 6000],
  ] as const) {
    test(`random reserve/commit/next/unreadLast/release sequences match the reference model (${name})`, () => {
      const seed = 0x5eed;
      const rnd = mulberry32(seed);
      const cap = 2048;
      const ring = ringAt(cap, start);
      const p = new RingProducer(ring);
      const c = new RingConsumer(ring);
      let head = start; // reserved (producer-local)
      let committedHead = start;
      let tail = start; // released
      let pending: { seq: number; len: number; end: number }[] = [];
      const visible: { seq: number; len: number; end: number }[] = [];
      let readEnd = start; // end of the last record handed out
      let seq = 0;
      let wraps = 0;
      const fits = (len: number): boolean => {
        const need = footprint(len);
        if (need > cap) return false;
        const used = head - tail;
        const contiguous = cap - (head % cap);
        return need > contiguous ? used + contiguous + need <= cap : used + need <= cap;
      };
      for (let step = 0; step < 30000; step++) {
        const op = rnd();
        const ctx = `seed ${seed}, step ${step}`;
        if (op < 0.45) {
          const r = rnd();
          const len = r < 0.6 ? Math.floor(rnd() * 40) : r < 0.95 ? Math.floor(rnd() * 400) : Math.floor(rnd() * 1100);
          const expect = fits(len);
          assert.equal(p.canFit(len), expect, `canFit(${len}) ${ctx}`);
          const at = write(p, seq, len);
          assert.equal(at >= 0, expect, `reserve(${len}) ${ctx}`);
          if (at >= 0) {
            const need = footprint(len);
            const contiguous = cap - (head % cap);
            if (need > contiguous) {
              head += contiguous;
              wraps++;
            }
            assert.equal(at, (head % cap) + 4, `offset ${ctx}`);
            head += need;
            pending.push({ seq, len, end: head });
            seq++;
          }
        } else if (op < 0.6) {
          assert.equal(p.commit(), pending.length > 0, ctx);
          visible.push(...pending);
          pending = [];
          committedHead = head;
        } else if (op < 0.85) {
          const n = Math.floor(rnd() * 8);
          for (let k = 0; k < n; k++) {
            const at = c.next();
            if (visible.length === 0) {
              assert.equal(at, -1, ctx);
              break;
            }
            const r = visible.shift()!;
            assert.ok(at >= 0, ctx);
            assert.equal(c.lastLength, r.len, ctx);
            assert.ok(c.buffer.subarray(at, at + r.len).equals(body(r.seq, r.len)), `record ${r.seq} ${ctx}`);
            const prevEnd = readEnd;
            readEnd = r.end;
            if (rnd() < 0.1) {
              c.unreadLast();
              visible.unshift(r);
              readEnd = prevEnd;
              break;
            }
          }
        } else {
          c.release();
          tail = readEnd;
        }
        assert.equal(p.used(), committedHead - tail, `used() ${ctx}`);
      }
      assert.ok(wraps > 50, `the sequence exercised wrapping (${wraps})`);
      assert.ok(seq > 5000, `many records written (${seq})`);
    });
  }

  test('cross-thread: 1,000,000 varied records from a worker arrive in order, complete and intact', { timeout: 120_000 }, async () => {
    const COUNT = 1_000_000;
    const ring = createRing(1 << 16);
    const consumerBell = createDoorbell();
    const producerBell = createDoorbell();
    const worker = new Worker(__filename, { workerData: { ring, consumerBell, producerBell, count: COUNT } });
    const done = new Promise<{ timeouts: number; waits: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`producer exited early with ${code}`)));
    });
    const c = new RingConsumer(ring);
    const cb = new Doorbell(consumerBell);
    const pb = new Doorbell(producerBell);
    let expected = 0;
    let bytes = 0;
    let sinceRelease = 0;
    let timeouts = 0;
    let problem: string | null = null;
    while (expected < COUNT && problem === null) {
      const at = c.next();
      if (at >= 0) {
        problem = verifyRecord(c.buffer, at, c.lastLength, expected);
        bytes += c.lastLength;
        expected++;
        if (++sinceRelease === 256) {
          sinceRelease = 0;
          if (c.release()) pb.ring();
        }
        continue;
      }
      if (c.release()) pb.ring();
      const seen = cb.prepare();
      if (c.hasData()) {
        cb.awake();
        continue;
      }
      if ((await alive(cb.wait(seen, 5000))) === 'timed-out') {
        timeouts++;
        if (!c.hasData()) problem = `stalled after record ${expected - 1}: no doorbell and no data for 5 s`;
      }
      cb.awake();
    }
    if (c.release()) pb.ring();
    const result = problem === null ? await done : { timeouts: -1, waits: -1 };
    await worker.terminate();
    assert.equal(problem, null);
    assert.equal(expected, COUNT);
    assert.equal(c.next(), -1, 'nothing after the last record');
    assert.equal(timeouts, 0, 'the consumer never missed a doorbell');
    assert.equal(result.timeouts, 0, 'the producer never missed a doorbell');
    assert.ok(result.waits > 0, 'the producer did find the ring full (backpressure exercised)');
    assert.ok(bytes > 50_000_000, `wrapped the 64 KiB ring many times (${bytes} bytes)`);
  });
} else {
  void produce();
}

/** Record `seq`: 4 + (0..8000) bytes, a u32 sequence number first, then derived content. */
function recordLength(seq: number): number {
  const h = Math.imul(seq ^ (seq >>> 7), 0x9e3779b1) >>> 0;
  const r = h % 1000;
  const x = h >>> 10;
  if (r < 5) return 4 + (x % 8000);
  if (r < 100) return 4 + (x % 1024);
  return 4 + (x % 64);
}

function verifyRecord(buf: Buffer, at: number, len: number, seq: number): string | null {
  const want = recordLength(seq);
  if (len !== want) return `record ${seq}: length ${len}, expected ${want}`;
  const got = buf.readUInt32LE(at);
  if (got !== seq) return `record ${seq}: sequence number ${got}`;
  for (let j = 4; j < len; j++) {
    if (buf[at + j] !== contentByte(seq, len, j)) return `record ${seq}: byte ${j} corrupt`;
  }
  return null;
}

async function produce(): Promise<void> {
  const data = workerData as { ring: RingBuffers; consumerBell: SharedArrayBuffer; producerBell: SharedArrayBuffer; count: number };
  const p = new RingProducer(data.ring);
  const cb = new Doorbell(data.consumerBell);
  const pb = new Doorbell(data.producerBell);
  const buf = p.buffer;
  let timeouts = 0;
  let waits = 0;
  for (let seq = 0; seq < data.count; seq++) {
    const len = recordLength(seq);
    let at = p.reserve(len);
    while (at < 0) {
      if (p.commit()) cb.ring();
      const seen = pb.prepare();
      at = p.reserve(len); // look again after announcing the sleep
      if (at < 0) {
        waits++;
        if ((await alive(pb.wait(seen, 5000))) === 'timed-out') timeouts++;
        at = p.reserve(len);
      }
      pb.awake();
    }
    buf.writeUInt32LE(seq, at);
    for (let j = 4; j < len; j++) buf[at + j] = contentByte(seq, len, j);
    if ((seq & 31) === 31 && p.commit()) cb.ring();
  }
  if (p.commit()) cb.ring();
  parentPort!.postMessage({ timeouts, waits });
}

test('queueLimit: canFit refuses beyond the limit (flagging the producer as waiting), an empty ring takes any record that fits', () => {
  const ring = createRing(4096);
  const p = new RingProducer(ring);
  const c = new RingConsumer(ring);
  p.queueLimit = 256;
  // 60-byte records take 64 bytes with their length word.
  let n = 0;
  while (p.canFit(60)) {
    assert.ok(p.reserve(60) >= 0);
    n++;
  }
  assert.equal(n, 4, '4 × 64 bytes = the limit');
  p.commit();
  assert.ok(p.reserve(60) >= 0, 'reserve itself is bounded by the capacity only');
  p.commit();
  let read = 0;
  for (let at = c.next(); at >= 0; at = c.next()) read++;
  assert.equal(read, 5);
  assert.equal(c.release(), true, 'the producer that found the queue full is to be woken');
  assert.equal(p.canFit(1000), true, 'an empty ring takes a record larger than the limit');
  p.reserve(1000);
  assert.equal(p.canFit(8), false, 'but nothing more until it is taken');
});
