// Single-producer / single-consumer ring of variable-length records in a SharedArrayBuffer.
//
// Layout: a control block of Int32 words (producer and consumer counters 64 bytes apart so the
// two threads never write the same cache line) followed by a power-of-two data area. Each
// record is a u32 length followed by its bytes, padded to 4. A record never wraps: when it does
// not fit before the end, the producer writes a WRAP marker and starts again at offset 0, so the
// consumer can always hand out a zero-copy view of one record.
//
// Counters are free-running u32 byte positions; (head - tail) >>> 0 is the fill level.

const HEAD = 0; // producer-owned: bytes committed
const TAIL = 16; // consumer-owned: bytes released
const PRODUCER_WAITING = 32; // set by a producer that found the ring full
const CONTROL_BYTES = 192;
const WRAP = 0xffffffff;

export interface RingBuffers {
  readonly sab: SharedArrayBuffer;
  readonly capacity: number;
}

export function createRing(capacity: number): RingBuffers {
  if (capacity < 1024 || (capacity & (capacity - 1)) !== 0) {
    throw new RangeError(`ring capacity must be a power of two >= 1024, got ${capacity}`);
  }
  return { sab: new SharedArrayBuffer(CONTROL_BYTES + capacity), capacity };
}

abstract class RingSide {
  protected readonly ctrl: Int32Array;
  protected readonly data: Buffer;
  protected readonly view: DataView;
  protected readonly mask: number;
  readonly capacity: number;

  constructor(ring: RingBuffers) {
    this.ctrl = new Int32Array(ring.sab, 0, CONTROL_BYTES / 4);
    this.data = Buffer.from(ring.sab, CONTROL_BYTES, ring.capacity);
    this.view = new DataView(ring.sab, CONTROL_BYTES, ring.capacity);
    this.mask = ring.capacity - 1;
    this.capacity = ring.capacity;
  }

  /** Bytes currently held (committed and not yet released). */
  used(): number {
    return (Atomics.load(this.ctrl, HEAD) - Atomics.load(this.ctrl, TAIL)) >>> 0;
  }
}

export class RingProducer extends RingSide {
  private head: number;
  private committed: number;

  constructor(ring: RingBuffers) {
    super(ring);
    this.head = Atomics.load(this.ctrl, HEAD) >>> 0;
    this.committed = this.head;
  }

  /** Reserves room for a record of `len` bytes and returns the offset in `data` where its body
   *  goes, or -1 when the ring is full. The record becomes visible at the next commit(). */
  reserve(len: number): number {
    const at = this.tryReserve(len);
    if (at !== -2) return at;
    Atomics.store(this.ctrl, PRODUCER_WAITING, 1);
    // As in canFit(): room released before the flag was set would wake nobody.
    const again = this.tryReserve(len);
    return again === -2 ? -1 : again;
  }

  /** reserve() without the waiting flag: -2 when the ring is full. */
  private tryReserve(len: number): number {
    const need = 4 + ((len + 3) & ~3);
    if (need > this.capacity) return -1;
    const tail = Atomics.load(this.ctrl, TAIL) >>> 0;
    let head = this.head;
    let pos = head & this.mask;
    const contiguous = this.capacity - pos;
    const used = (head - tail) >>> 0;
    if (need > contiguous) {
      if (used + contiguous + need > this.capacity) return -2;
      this.view.setUint32(pos, WRAP, true);
      head = (head + contiguous) >>> 0;
      pos = 0;
    } else if (used + need > this.capacity) {
      return -2;
    }
    this.view.setUint32(pos, len, true);
    this.head = (head + need) >>> 0;
    return pos + 4;
  }

  /** Bytes canFit() lets the ring hold (at most the capacity): a shorter queue than the ring
   *  can take, so that what waits in it waits less. An empty ring takes any record that fits. */
  queueLimit = this.capacity;

  /** Whether a record of `len` bytes would fit now (worst case, counting a wrap) within the
   *  queue limit. */
  canFit(len: number): boolean {
    if (this.fitsNow(len)) return true;
    Atomics.store(this.ctrl, PRODUCER_WAITING, 1);
    // The consumer may have released room between the look above and the flag, and seen no
    // flag: look again now that it is set (at worst the consumer wakes us for nothing).
    return this.fitsNow(len);
  }

  private fitsNow(len: number): boolean {
    const need = 4 + ((len + 3) & ~3);
    const tail = Atomics.load(this.ctrl, TAIL) >>> 0;
    const used = (this.head - tail) >>> 0;
    const contiguous = this.capacity - (this.head & this.mask);
    const total = need > contiguous ? contiguous + need : need;
    return used + total <= (used === 0 ? this.capacity : this.queueLimit);
  }

  get buffer(): Buffer {
    return this.data;
  }

  get dataView(): DataView {
    return this.view;
  }

  /** Publishes every reserved record to the consumer. Returns true when anything was new. */
  commit(): boolean {
    if (this.head === this.committed) return false;
    this.committed = this.head;
    Atomics.store(this.ctrl, HEAD, this.head | 0);
    return true;
  }
}

export class RingConsumer extends RingSide {
  private tail: number;
  private limit: number;

  constructor(ring: RingBuffers) {
    super(ring);
    this.tail = Atomics.load(this.ctrl, TAIL) >>> 0;
    this.limit = this.tail;
  }

  /** Returns the offset of the next record's body (its length via lastLength), or -1 when empty.
   *  The body stays valid until release(). */
  next(): number {
    if (this.tail === this.limit) {
      this.limit = Atomics.load(this.ctrl, HEAD) >>> 0;
      if (this.tail === this.limit) return -1;
    }
    this.previous = this.tail;
    let pos = this.tail & this.mask;
    let len = this.view.getUint32(pos, true);
    if (len === WRAP) {
      this.tail = (this.tail + (this.capacity - pos)) >>> 0;
      pos = 0;
      len = this.view.getUint32(0, true);
    }
    this.lastLength = len;
    this.tail = (this.tail + 4 + ((len + 3) & ~3)) >>> 0;
    return pos + 4;
  }

  lastLength = 0;
  private previous = 0;

  /** Puts back the record returned by the last next(): it is returned again next time. */
  unreadLast(): void {
    this.tail = this.previous;
  }

  /** Free-running byte position of the next record to read (compare with (a - b) | 0). */
  get position(): number {
    return this.tail;
  }

  /** Free-running byte position the producer has committed up to. */
  committedPosition(): number {
    return Atomics.load(this.ctrl, HEAD) >>> 0;
  }

  /** Drops everything committed so far unread (a restarted thread's stale records). */
  skipAll(): void {
    this.tail = this.limit = Atomics.load(this.ctrl, HEAD) >>> 0;
    this.release();
  }

  /** Whether a record is waiting, without consuming it. */
  hasData(): boolean {
    if (this.tail !== this.limit) return true;
    this.limit = Atomics.load(this.ctrl, HEAD) >>> 0;
    return this.tail !== this.limit;
  }

  /** Frees the space of every record returned by next() so far. Returns true when the producer
   *  had found the ring full and should be woken. */
  release(): boolean {
    Atomics.store(this.ctrl, TAIL, this.tail | 0);
    if (Atomics.load(this.ctrl, PRODUCER_WAITING) !== 0) {
      Atomics.store(this.ctrl, PRODUCER_WAITING, 0);
      return true;
    }
    return false;
  }

  get buffer(): Buffer {
    return this.data;
  }

  get dataView(): DataView {
    return this.view;
  }
}

/** Bytes held in a ring, read from outside both threads (metrics). */
export function ringUsed(ring: RingBuffers): number {
  const ctrl = new Int32Array(ring.sab, 0, CONTROL_BYTES / 4);
  return (Atomics.load(ctrl, HEAD) - Atomics.load(ctrl, TAIL)) >>> 0;
}
