// A broker's durable spool (FANOUT_SPOOL_DIR): its writer appends every record it takes from
// the shards' rings to a log of segment files before the ring lets go of it, and feeds the
// broker connections from the log. The broker drains at its own pace, a broker that is away
// does not hold the devices back (until the bound), and what a crash or kill -9 interrupts is
// read again from the cursor: the position of the oldest message the broker has not finished.
//
// Entry: u32 body length, u32 CRC-32 of the body, body = u32 run id, u8 shard, 3 bytes zero, the
// ring record (src/ring/records.ts). Segment files are named by the log position of their first
// byte; positions only grow. The cursor file holds the oldest unfinished position.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';

const HEADER = 8;
const PREFIX = 8;
/** Bytes an entry adds to its ring record. */
export const SPOOL_OVERHEAD = HEADER + PREFIX;
const SEGMENT_RE = /^([0-9a-f]{16})\.seg$/;
const CURSOR_FILE = 'cursor';
const READ_AHEAD = 1 << 20;

export interface SpoolLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface SpoolOptions {
  /** This broker's folder (created when missing). */
  dir: string;
  /** Bound of the bytes held on disk (FANOUT_SPOOL_MAX_BYTES). */
  maxBytes: number;
  /** Size after which appends go to a new segment file. */
  segmentBytes: number;
  /** This daemon run: tokens in entries of earlier runs mean nothing any more. */
  runId: number;
  log: SpoolLog;
}

interface Segment {
  base: number;
  size: number;
}

/** The entry at the read position: the ring record is `buf[at, at + len)`. */
export interface SpoolEntry {
  pos: number;
  buf: Buffer;
  at: number;
  len: number;
  shard: number;
  runId: number;
}

const name = (base: number): string => `${base.toString(16).padStart(16, '0')}.seg`;

export class Spool {
  private readonly segments: Segment[] = [];
  private appendFd = -1;
  /** Descriptors of segments appended to since the last sync(): closed once synced. */
  private unsynced: number[] = [];
  private pend: Buffer = Buffer.allocUnsafe(256 * 1024);
  private pendLen = 0;
  /** Next entry to hand out. */
  private readPos = 0;
  private readFd = -1;
  private readSegBase = -1;
  private rbuf: Buffer = Buffer.allocUnsafe(READ_AHEAD);
  private rbase = 0;
  private rlen = 0;
  // Entries handed out and not finished, by sequence number: their positions and done flags.
  private dpos = new Float64Array(1024);
  private ddone = new Uint8Array(1024);
  private base = 0;
  private next = 0;
  private cursorFd = -1;
  private savedCursor = -1;
  /** Corrupt or truncated stretches skipped so far. */
  corrupt = 0;
  private readonly entry: SpoolEntry = { pos: 0, buf: this.rbuf, at: 0, len: 0, shard: 0, runId: 0 };

  constructor(private readonly opts: SpoolOptions) {}

  /** Opens (or creates) the folder; what an earlier run left from its cursor on is read first. */
  open(): void {
    const dir = this.opts.dir;
    fs.mkdirSync(dir, { recursive: true });
    for (const f of fs.readdirSync(dir)) {
      const m = SEGMENT_RE.exec(f);
      if (m !== null) this.segments.push({ base: parseInt(m[1], 16), size: fs.statSync(path.join(dir, f)).size });
    }
    this.segments.sort((a, b) => a.base - b.base);
    this.cursorFd = fs.openSync(path.join(dir, CURSOR_FILE), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    const cursor = this.readCursor();
    const end = this.segments.length === 0 ? 0 : this.segments[this.segments.length - 1].base + this.segments[this.segments.length - 1].size;
    // Segments wholly before the cursor were finished.
    while (this.segments.length > 0 && this.segments[0].base + this.segments[0].size <= cursor) this.unlinkFirst();
    this.readPos = Math.max(cursor, this.segments[0]?.base ?? end);
    if (this.segments.length === 0) this.readPos = Math.max(cursor, end);
    const left = end - this.readPos;
    if (left > 0) this.opts.log.info({ dir, bytes: left, from: this.readPos }, 'spool: replaying what the previous run left unfinished');
    // Appends always start a fresh segment: a torn tail of the last one stays where it is, and
    // is skipped when read.
    this.startSegment(Math.max(end, this.readPos));
    this.savedCursor = this.readPos;
  }

  private readCursor(): number {
    const b = Buffer.alloc(16);
    const n = fs.readSync(this.cursorFd, b, 0, 16, 0);
    if (n < 16) return 0;
    const pos = b.readDoubleLE(0);
    if (crc32(b.subarray(0, 8)) !== b.readUInt32LE(8) || !Number.isSafeInteger(pos) || pos < 0) {
      this.opts.log.warn({ dir: this.opts.dir }, 'spool: cursor file unreadable; replaying the whole spool');
      return 0;
    }
    return pos;
  }

  private startSegment(base: number): void {
    if (this.appendFd >= 0) this.unsynced.push(this.appendFd);
    this.appendFd = fs.openSync(path.join(this.opts.dir, name(base)), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND, 0o600);
    const last = this.segments[this.segments.length - 1];
    if (last === undefined || last.base !== base) this.segments.push({ base, size: 0 });
  }

  /** Log position after the last appended entry (flushed or not). */
  get appendEnd(): number {
    const last = this.segments[this.segments.length - 1];
    return last.base + last.size + this.pendLen;
  }

  /** Bytes held on disk (and about to be). */
  get bytes(): number {
    return this.appendEnd - this.segments[0].base;
  }

  /** Position of the next entry to hand out. */
  get readPosition(): number {
    return this.readPos;
  }

  /** Bytes appended and not yet handed out. */
  get unread(): number {
    return this.appendEnd - this.readPos;
  }

  /** Whether a ring record of `len` bytes fits under the bound. */
  hasRoom(len: number): boolean {
    return this.bytes + len + SPOOL_OVERHEAD <= this.opts.maxBytes;
  }

  /** Appends one ring record (visible to peek() after flush()); `token`, when given, replaces
   *  the record's ack token. */
  append(src: Buffer, at: number, len: number, shard: number, token = -1): void {
    const need = SPOOL_OVERHEAD + len;
    if (this.pendLen + need > this.pend.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.pend.length * 2, this.pendLen + need));
      this.pend.copy(grown, 0, 0, this.pendLen);
      this.pend = grown;
    }
    const p = this.pend;
    const o = this.pendLen;
    p.writeUInt32LE(PREFIX + len, o);
    p.writeUInt32LE(this.opts.runId, o + HEADER);
    p[o + HEADER + 4] = shard;
    p[o + HEADER + 5] = 0;
    p[o + HEADER + 6] = 0;
    p[o + HEADER + 7] = 0;
    src.copy(p, o + SPOOL_OVERHEAD, at, at + len);
    if (token >= 0 && len >= 12) p.writeUInt32LE(token, o + SPOOL_OVERHEAD + 8);
    p.writeUInt32LE(crc32(p.subarray(o + HEADER, o + need)), o + 4);
    this.pendLen += need;
  }

  /** Writes the appended entries to the segment file (one write). After it returns they survive
   *  the end of this thread or process; the kernel has them, the disk once sync() ran. */
  flush(): void {
    if (this.pendLen === 0) return;
    let off = 0;
    while (off < this.pendLen) off += fs.writeSync(this.appendFd, this.pend, off, this.pendLen - off);
    const last = this.segments[this.segments.length - 1];
    last.size += this.pendLen;
    this.pendLen = 0;
    if (last.size >= this.opts.segmentBytes) this.startSegment(last.base + last.size);
  }

  /** fdatasync of every segment flushed to since the last call, off this thread; `done` runs
   *  when everything flushed before the call is on disk. One call at a time. */
  sync(done: (err: Error | null) => void): void {
    const retired = this.unsynced;
    this.unsynced = [];
    const fds = [...retired, this.appendFd];
    let left = fds.length;
    let failure: Error | null = null;
    for (const fd of fds) {
      fs.fdatasync(fd, (err) => {
        if (err !== null && failure === null) failure = err;
        if (--left > 0) return;
        for (const r of retired) fs.close(r, () => undefined);
        done(failure);
      });
    }
  }

  /** The entry at the read position, or null when everything appended was handed out. Corrupt
   *  or truncated stretches are skipped with a log line. */
  peek(): SpoolEntry | null {
    for (;;) {
      const seg = this.segmentAt(this.readPos);
      if (seg === null) return null;
      if (this.readPos < seg.base) this.readPos = seg.base;
      const segEnd = seg.base + seg.size;
      if (this.readPos >= segEnd) {
        const i = this.segments.indexOf(seg);
        if (i === this.segments.length - 1) return null;
        this.readPos = this.segments[i + 1].base;
        continue;
      }
      if (!this.ensure(seg, this.readPos, HEADER)) return this.skip(seg, 'truncated entry header');
      const h = this.readPos - this.rbase;
      const bodyLen = this.rbuf.readUInt32LE(h);
      if (bodyLen < PREFIX || this.readPos + HEADER + bodyLen > segEnd) return this.skip(seg, 'entry length past the end of its segment');
      if (!this.ensure(seg, this.readPos, HEADER + bodyLen)) return this.skip(seg, 'truncated entry');
      const s = this.readPos - this.rbase;
      if (crc32(this.rbuf.subarray(s + HEADER, s + HEADER + bodyLen)) !== this.rbuf.readUInt32LE(s + 4)) return this.skip(seg, 'checksum mismatch');
      const e = this.entry;
      e.pos = this.readPos;
      e.buf = this.rbuf;
      e.at = s + SPOOL_OVERHEAD;
      e.len = bodyLen - PREFIX;
      e.runId = this.rbuf.readUInt32LE(s + HEADER);
      e.shard = this.rbuf[s + HEADER + 4];
      return e;
    }
  }

  /** Hands out the entry peek() returned and returns its sequence number for done(). */
  advance(): number {
    const e = this.entry;
    const seq = this.next++;
    if (seq - this.base >= this.dpos.length) this.growDone();
    const i = seq & (this.dpos.length - 1);
    this.dpos[i] = e.pos;
    this.ddone[i] = 0;
    this.readPos = e.pos + SPOOL_OVERHEAD + e.len;
    return seq;
  }

  /** The broker finished the entry `seq` (or it was skipped): the cursor may move past it. */
  done(seq: number): void {
    if (seq < this.base || seq >= this.next) return;
    const mask = this.dpos.length - 1;
    this.ddone[seq & mask] = 1;
    while (this.base < this.next && this.ddone[this.base & mask] === 1) this.base++;
  }

  /** Oldest position not finished: where a restart reads again. */
  get watermark(): number {
    return this.base < this.next ? this.dpos[this.base & (this.dpos.length - 1)] : this.readPos;
  }

  /** Entries handed out and not yet finished. */
  get outstanding(): number {
    return this.next - this.base;
  }

  /** Deletes the segments wholly before the oldest unfinished entry. The saved cursor may still
   *  point into them: a restart then starts at the first segment left, losing nothing. */
  reclaim(): void {
    const cursor = this.watermark;
    while (this.segments.length > 1 && this.segments[1].base <= cursor) this.unlinkFirst();
  }

  /** Persists the cursor (and reclaims finished segments). */
  saveCursor(): void {
    this.reclaim();
    const cursor = Math.max(this.watermark, this.segments[0].base);
    if (cursor === this.savedCursor) return;
    const b = Buffer.alloc(16);
    b.writeDoubleLE(cursor, 0);
    b.writeUInt32LE(crc32(b.subarray(0, 8)), 8);
    fs.writeSync(this.cursorFd, b, 0, 16, 0);
    fs.fdatasyncSync(this.cursorFd);
    this.savedCursor = cursor;
  }

  /**
   * Drops the oldest segment to make room (FANOUT_SPOOL_OVERFLOW=drop-oldest). Entries of it not
   * yet handed out are passed to `dropped` (to answer the devices waiting on them) before the
   * file goes; entries handed out are in their broker connection's memory and finish there.
   * Returns false when only the segment being appended to is left.
   */
  dropOldest(dropped: (e: SpoolEntry) => void): boolean {
    if (this.segments.length < 2) {
      this.flush();
      const last = this.segments[this.segments.length - 1];
      if (last.size === 0) return false;
      this.startSegment(last.base + last.size);
    }
    const first = this.segments[0];
    const end = first.base + first.size;
    while (this.readPos < end) {
      const e = this.peek();
      if (e === null || e.pos >= end) break;
      dropped(e);
      this.done(this.advance());
    }
    if (this.readPos < end) this.readPos = end;
    this.unlinkFirst();
    return true;
  }

  private unlinkFirst(): void {
    const seg = this.segments.shift()!;
    if (this.readSegBase === seg.base) this.closeRead();
    try {
      fs.unlinkSync(path.join(this.opts.dir, name(seg.base)));
    } catch {
      // already gone
    }
  }

  private segmentAt(pos: number): Segment | null {
    const segs = this.segments;
    for (let i = segs.length - 1; i >= 0; i--) if (segs[i].base <= pos) return segs[i];
    return segs.length > 0 ? segs[0] : null;
  }

  /** Makes rbuf hold [pos, pos + n) of `seg`; false when the segment ends before. */
  private ensure(seg: Segment, pos: number, n: number): boolean {
    if (pos >= this.rbase && pos + n <= this.rbase + this.rlen) return true;
    if (pos + n > seg.base + seg.size) return false;
    if (n > this.rbuf.length) this.rbuf = Buffer.allocUnsafe(Math.max(n, this.rbuf.length * 2));
    if (this.readSegBase !== seg.base) {
      this.closeRead();
      this.readFd = fs.openSync(path.join(this.opts.dir, name(seg.base)), 'r');
      this.readSegBase = seg.base;
    }
    const want = Math.min(this.rbuf.length, seg.base + seg.size - pos);
    let got = 0;
    while (got < want) {
      const r = fs.readSync(this.readFd, this.rbuf, got, want - got, pos - seg.base + got);
      if (r === 0) break;
      got += r;
    }
    this.rbase = pos;
    this.rlen = got;
    return got >= n;
  }

  private closeRead(): void {
    if (this.readFd >= 0) fs.closeSync(this.readFd);
    this.readFd = -1;
    this.readSegBase = -1;
    this.rlen = 0;
  }

  private skip(seg: Segment, why: string): SpoolEntry | null {
    const end = seg.base + seg.size;
    this.corrupt++;
    this.opts.log.warn({ dir: this.opts.dir, segment: name(seg.base), offset: this.readPos - seg.base, skippedBytes: end - this.readPos, why },
      'spool: corrupt or truncated entries skipped');
    this.readPos = end;
    return this.peek();
  }

  private growDone(): void {
    const n = this.dpos.length * 2;
    const pos = new Float64Array(n);
    const done = new Uint8Array(n);
    const oldMask = this.dpos.length - 1;
    for (let s = this.base; s < this.next; s++) {
      pos[s & (n - 1)] = this.dpos[s & oldMask];
      done[s & (n - 1)] = this.ddone[s & oldMask];
    }
    this.dpos = pos;
    this.ddone = done;
  }

  close(): void {
    this.flush();
    for (const fd of [...this.unsynced, this.appendFd]) {
      if (fd < 0) continue;
      fs.fdatasyncSync(fd);
      fs.closeSync(fd);
    }
    this.unsynced = [];
    this.appendFd = -1;
    this.saveCursor();
    this.closeRead();
    if (this.cursorFd >= 0) fs.closeSync(this.cursorFd);
    this.cursorFd = -1;
  }
}

/**
 * Claims FANOUT_SPOOL_DIR for this process: two daemons appending to one spool would corrupt
 * it. A lock left by a process that is gone (kill -9) is taken over. Returns the release.
 */
export function lockSpoolDir(dir: string): { ok: true; release: () => void } | { ok: false; holder: number } {
  const file = path.join(dir, 'lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o600);
      fs.writeSync(fd, String(process.pid));
      fs.closeSync(fd);
      return { ok: true, release: () => { try { fs.unlinkSync(file); } catch { /* gone */ } } };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number.parseInt(fs.readFileSync(file, 'utf8'), 10);
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) return { ok: false, holder };
      fs.unlinkSync(file);
    }
  }
  return { ok: false, holder: -1 };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
