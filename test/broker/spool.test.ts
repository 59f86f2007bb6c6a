// The spool's log on its own: order across segments, the cursor across reopenings, finished
// segments deleted, the bound, drop-oldest, and corrupt or torn entries skipped with a warning.

import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Spool, SPOOL_OVERHEAD, lockSpoolDir, type SpoolOptions } from '../../src/broker/spool';

const dirs: string[] = [];
afterEach(() => {
  while (dirs.length > 0) fs.rmSync(dirs.pop()!, { recursive: true, force: true });
});

function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-spool-unit-'));
  dirs.push(d);
  return d;
}

interface Logged { level: string; obj: Record<string, unknown>; msg: string }

function open(dir: string, opts: Partial<SpoolOptions> = {}): { spool: Spool; logged: Logged[] } {
  const logged: Logged[] = [];
  const spool = new Spool({
    dir, maxBytes: 1 << 20, segmentBytes: 4096, runId: 7,
    log: {
      warn: (obj, msg) => logged.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
      info: (obj, msg) => logged.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    },
    ...opts,
  });
  spool.open();
  return { spool, logged };
}

/** A stand-in ring record: `text` as its bytes. */
function rec(text: string): Buffer {
  return Buffer.from(text);
}

/** Appends in batches of 10, as a writer flushes once per turn. */
function appendAll(spool: Spool, texts: string[], shard = 0): void {
  texts.forEach((t, i) => {
    const b = rec(t);
    spool.append(b, 0, b.length, shard);
    if (i % 10 === 9) spool.flush();
  });
  spool.flush();
}

/** Reads every entry left, finishing each when `finish` says so; returns the texts. */
function drain(spool: Spool, finish: (text: string) => boolean = () => true): string[] {
  const out: string[] = [];
  for (let e = spool.peek(); e !== null; e = spool.peek()) {
    const text = e.buf.toString('utf8', e.at, e.at + e.len);
    out.push(text);
    const seq = spool.advance();
    if (finish(text)) spool.done(seq);
  }
  return out;
}

const texts = (n: number, tag = 'm'): string[] => Array.from({ length: n }, (_, i) => `${tag}${i}-${'x'.repeat(i % 37)}`);

describe('spool', () => {
  test('entries come back in order across segment files, with their shard and run id', () => {
    const { spool } = open(tmp());
    const all = texts(500);
    appendAll(spool, all.slice(0, 250), 3);
    appendAll(spool, all.slice(250), 1);
    assert.ok(fs.readdirSync(spool['opts'].dir).filter((f) => f.endsWith('.seg')).length > 3, 'several segments were written');
    const e = spool.peek()!;
    assert.equal(e.shard, 3);
    assert.equal(e.runId, 7);
    assert.deepEqual(drain(spool), all);
    assert.equal(spool.peek(), null);
    spool.close();
  });

  test('a reopened spool replays from the oldest unfinished entry; finished segments are deleted', () => {
    const dir = tmp();
    const all = texts(300);
    {
      const { spool } = open(dir);
      appendAll(spool, all);
      // The first 200 finished, 200..209 handed out and not finished, the rest never read.
      let i = 0;
      for (let e = spool.peek(); e !== null && i < 210; e = spool.peek(), i++) {
        const seq = spool.advance();
        if (i < 200) spool.done(seq);
      }
      spool.saveCursor();
      const segs = fs.readdirSync(dir).filter((f) => f.endsWith('.seg'));
      assert.ok(!segs.includes('0000000000000000.seg'), 'the first segment, wholly finished, is gone');
      spool.close();
    }
    const { spool, logged } = open(dir);
    assert.ok(logged.some((l) => l.msg.startsWith('spool: replaying')));
    assert.deepEqual(drain(spool), all.slice(200));
    spool.close();
  });

  test('out-of-order completions hold the cursor at the oldest unfinished entry', () => {
    const dir = tmp();
    const all = texts(10);
    const { spool } = open(dir);
    appendAll(spool, all);
    const seqs: number[] = [];
    for (let e = spool.peek(); e !== null; e = spool.peek()) seqs.push(spool.advance());
    for (const s of seqs) if (s !== 3) spool.done(s);
    assert.equal(spool.outstanding, 7, 'entries 3..9 are held back by entry 3');
    spool.close();
    const again = open(dir).spool;
    assert.deepEqual(drain(again), all.slice(3), 'a restart sends again from entry 3');
    again.close();
  });

  test('the bound counts the bytes on disk; drop-oldest hands over the unsent entries of the oldest segment and deletes it', () => {
    const { spool } = open(tmp(), { maxBytes: 16384, segmentBytes: 4096 });
    const all = texts(800);
    let taken = 0;
    for (const t of all) {
      const b = rec(t);
      if (!spool.hasRoom(b.length)) break;
      spool.append(b, 0, b.length, 0);
      spool.flush();
      taken++;
    }
    assert.ok(taken > 100 && taken < 800, `the bound stopped appends (${taken} taken)`);
    assert.ok(spool.bytes + SPOOL_OVERHEAD + 60 > 16384 - 4096);
    const dropped: string[] = [];
    assert.equal(spool.dropOldest((e) => dropped.push(e.buf.toString('utf8', e.at, e.at + e.len))), true);
    assert.ok(dropped.length > 0);
    assert.deepEqual(dropped, all.slice(0, dropped.length), 'the oldest entries go');
    assert.deepEqual(drain(spool), all.slice(dropped.length, taken), 'the rest is still there, in order');
    spool.close();
  });

  test('a truncated tail and a flipped byte are skipped with a warning; the entries before them and the segments after them are read', () => {
    const dir = tmp();
    const all = texts(120);
    {
      const { spool } = open(dir, { segmentBytes: 1 << 20 });
      appendAll(spool, all.slice(0, 60));
      spool.close();
    }
    {
      const { spool } = open(dir, { segmentBytes: 1 << 20 });
      appendAll(spool, all.slice(60));
      spool.close();
    }
    const segs = fs.readdirSync(dir).filter((f) => f.endsWith('.seg')).sort().map((f) => path.join(dir, f)).filter((f) => fs.statSync(f).size > 0);
    assert.equal(segs.length, 2);
    // First segment: one byte of entry 30's body flipped. Second: its last entry cut short.
    const first = fs.readFileSync(segs[0]);
    const at = first.indexOf(Buffer.from(all[30]));
    first[at + 2] ^= 0xff;
    fs.writeFileSync(segs[0], first);
    fs.truncateSync(segs[1], fs.statSync(segs[1]).size - 3);
    const { spool, logged } = open(dir);
    const got = drain(spool);
    assert.deepEqual(got, [...all.slice(0, 30), ...all.slice(60, 119)]);
    const warnings = logged.filter((l) => l.msg === 'spool: corrupt or truncated entries skipped');
    assert.deepEqual(warnings.map((w) => w.obj.why), ['checksum mismatch', 'entry length past the end of its segment']);
    assert.equal(spool.corrupt, 2);
    spool.close();
  });

  test('a garbage cursor file replays the whole spool', () => {
    const dir = tmp();
    const all = texts(20);
    {
      const { spool } = open(dir);
      appendAll(spool, all);
      spool.close();
    }
    fs.writeFileSync(path.join(dir, 'cursor'), Buffer.alloc(16, 0xab));
    const { spool, logged } = open(dir);
    assert.ok(logged.some((l) => l.msg.startsWith('spool: cursor file unreadable')));
    assert.deepEqual(drain(spool), all);
    spool.close();
  });

  test('the spool folder lock: held by a live process it refuses, left by a dead one it is taken over', () => {
    const dir = tmp();
    fs.writeFileSync(path.join(dir, 'lock'), String(process.ppid));
    const held = lockSpoolDir(dir);
    assert.deepEqual(held, { ok: false, holder: process.ppid });
    fs.writeFileSync(path.join(dir, 'lock'), '999999999');
    const taken = lockSpoolDir(dir);
    assert.equal(taken.ok, true);
    assert.equal(fs.readFileSync(path.join(dir, 'lock'), 'utf8'), String(process.pid));
    if (taken.ok) taken.release();
    assert.equal(fs.existsSync(path.join(dir, 'lock')), false);
  });
});
