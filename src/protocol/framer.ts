// Splits a device's byte stream into MQTT packets without copying: a packet that lies inside one
// chunk is handed out as (buf, start, end) over that chunk; only a packet that spans chunks is
// copied into one buffer. next() allocates nothing on the common path.

export const FRAME_INCOMPLETE = 0;
export const FRAME_READY = 1;
export const FRAME_BAD_LENGTH = -1;
export const FRAME_TOO_LARGE = -2;

export class Framer {
  private chunks: Buffer[] = [];
  private offset = 0;
  private available = 0;

  /** First byte of the current packet (type << 4 | flags). */
  header = 0;
  /** The current packet's variable header and payload are buf[start, end). */
  buf: Buffer = Buffer.alloc(0);
  start = 0;
  end = 0;
  /** Whole packet size in bytes (fixed header included). */
  size = 0;

  constructor(public maxPacketSize: number) {}

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
  }

  get buffered(): number {
    return this.available;
  }

  next(): number {
    if (this.available < 2) return FRAME_INCOMPLETE;
    const first = this.chunks[0];
    let remaining = 0;
    let multiplier = 1;
    let headerLen = 1;
    // The length field is at most 4 bytes; it may straddle chunks, so read through byteAt.
    for (;;) {
      if (headerLen > this.available - 1) return FRAME_INCOMPLETE;
      const b = this.offset + headerLen < first.length ? first[this.offset + headerLen] : this.byteAt(headerLen);
      remaining += (b & 0x7f) * multiplier;
      headerLen++;
      if ((b & 0x80) === 0) {
        // A last byte 0 after others: a shorter encoding existed [MQTT-1.5.5-1].
        if (b === 0 && headerLen > 2) return FRAME_BAD_LENGTH;
        break;
      }
      if (headerLen > 4) return FRAME_BAD_LENGTH;
      multiplier *= 128;
    }
    const size = headerLen + remaining;
    if (size > this.maxPacketSize) return FRAME_TOO_LARGE;
    if (size > this.available) return FRAME_INCOMPLETE;
    this.size = size;
    this.header = first[this.offset];
    if (this.offset + size <= first.length) {
      this.buf = first;
      this.start = this.offset + headerLen;
      this.end = this.offset + size;
      this.consume(size);
    } else {
      const joined = Buffer.allocUnsafe(size);
      this.copyOut(joined, size);
      this.buf = joined;
      this.start = headerLen;
      this.end = size;
    }
    return FRAME_READY;
  }

  /** The first byte buffered (a packet's type and flags), -1 when there is none. */
  peek(): number {
    return this.available > 0 ? this.chunks[0][this.offset] : -1;
  }

  /** Drops everything buffered (the connection is closing). */
  reset(): void {
    this.chunks = [];
    this.offset = 0;
    this.available = 0;
  }

  private byteAt(index: number): number {
    let i = this.offset + index;
    for (const c of this.chunks) {
      if (i < c.length) return c[i];
      i -= c.length;
    }
    return 0;
  }

  private consume(n: number): void {
    this.available -= n;
    this.offset += n;
    while (this.chunks.length > 0 && this.offset >= this.chunks[0].length) {
      this.offset -= this.chunks[0].length;
      this.chunks.shift();
    }
  }

  private copyOut(target: Buffer, n: number): void {
    let written = 0;
    while (written < n) {
      const c = this.chunks[0];
      const take = Math.min(c.length - this.offset, n - written);
      c.copy(target, written, this.offset, this.offset + take);
      written += take;
      this.consume(take);
    }
  }
}

/** Bytes needed to encode `n` as an MQTT variable byte integer. */
export function varintSize(n: number): number {
  return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

/** Writes `n` as a variable byte integer at `pos`; returns the position after it. */
export function writeVarint(buf: Buffer, pos: number, n: number): number {
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    buf[pos++] = b;
  } while (n > 0);
  return pos;
}

/** Reads a variable byte integer at buf[pos]; returns value and sets varintEnd, or -1 if bad
 *  (longer than 4 bytes, beyond `end`, or not in its shortest encoding [MQTT-1.5.5-1]). */
export let varintEnd = 0;
export function readVarint(buf: Buffer, pos: number, end: number): number {
  let value = 0;
  let mul = 1;
  for (let i = 0; i < 4; i++) {
    if (pos >= end) return -1;
    const b = buf[pos++];
    value += (b & 0x7f) * mul;
    if ((b & 0x80) === 0) {
      if (b === 0 && i > 0) return -1;
      varintEnd = pos;
      return value;
    }
    mul *= 128;
  }
  return -1;
}
