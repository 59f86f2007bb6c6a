// One subscriber per upstream broker. Every (publisher, sequence) pair gets a
// bit, so missing and duplicate counts are exact rather than inferred from
// totals (a duplicate would otherwise hide a loss).
import type * as net from 'node:net';
import { LatencySummary, newHistogram, recordMs, summarize, Histogram } from './latency';
import {
  ackFrame,
  connectRaw,
  disconnect,
  encodeSubscribe,
  PACKET,
  PAYLOAD_HEADER_BYTES,
  PROBE_ID,
} from './mqtt-wire';

const ACK_BATCH = 256;
const ACK_DELAY_MS = 2;

export interface BrokerTally {
  broker: string;
  expected: number;
  /** PUBLISH packets carrying a load payload, duplicates included. */
  received: number;
  distinct: number;
  missing: number;
  duplicates: number;
  /** Packets on the filter that are not ours (unparseable or out of range). */
  foreign: number;
  /** Wall-clock ms of the last new message; 0 if none. */
  lastReceiveAt: number;
  e2e: LatencySummary;
}

export interface ReceiverOptions {
  broker: string;
  port: number;
  filter: string;
  devices: number;
  messages: number;
  clientId: string;
}

export class Receiver {
  received = 0;
  distinct = 0;
  duplicates = 0;
  foreign = 0;
  lastReceiveAt = 0;
  probeSeen = false;
  readonly hist: Histogram = newHistogram();
  readonly expected: number;
  private readonly seen: Uint8Array;
  private socket: net.Socket | null = null;
  private pendingAcks: number[] = [];
  private pendingRel: number[] = [];
  private ackTimer: NodeJS.Timeout | null = null;
  private onSuback: ((ok: boolean) => void) | null = null;
  private closing = false;
  error: string | null = null;

  private constructor(readonly opts: ReceiverOptions) {
    this.expected = opts.devices * opts.messages;
    this.seen = new Uint8Array(Math.ceil(this.expected / 8));
  }

  /** Connects and resolves once the subscription is acknowledged. */
  static async connect(opts: ReceiverOptions): Promise<Receiver> {
    const r = new Receiver(opts);
    const socket = await connectRaw('127.0.0.1', opts.port, opts.clientId, (h, b, s, l) => r.onFrame(h, b, s, l));
    r.socket = socket;
    // Registered after connectRaw's own 'data' listener, so it runs once the chunk is framed.
    socket.on('data', () => r.scheduleAcks());
    socket.on('error', (err) => (r.error ??= err.message));
    socket.on('close', () => {
      if (!r.closing) r.error ??= `connection to ${opts.broker} closed`;
    });
    const ok = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      r.onSuback = (granted) => {
        clearTimeout(timer);
        resolve(granted);
      };
      socket.write(encodeSubscribe(opts.filter, 1));
    });
    if (!ok) {
      socket.destroy();
      throw new Error(`subscription to ${opts.filter} on ${opts.broker} failed`);
    }
    return r;
  }

  get complete(): boolean {
    return this.distinct === this.expected;
  }

  private onFrame(header: number, buf: Buffer, start: number, length: number): void {
    const type = header >> 4;
    if (type === PACKET.PUBLISH) this.onPublish(header, buf, start, length);
    else if (type === PACKET.SUBACK) this.onSuback?.(length >= 3 && buf[start + 2] < 0x80);
    else if (type === PACKET.PUBREL && length >= 2) this.pendingRel.push(buf.readUInt16BE(start));
  }

  private onPublish(header: number, buf: Buffer, start: number, length: number): void {
    const qos = (header >> 1) & 3;
    const end = start + length;
    let p = start + 2 + buf.readUInt16BE(start);
    if (qos > 0) {
      // The subscription is QoS 1, but a broker granting 2 must still see the handshake complete.
      this.pendingAcks.push(qos === 2 ? -buf.readUInt16BE(p) : buf.readUInt16BE(p));
      p += 2;
    }
    if (end - p < PAYLOAD_HEADER_BYTES) {
      this.foreign++;
      return;
    }
    const pub = buf.readUInt32BE(p);
    if (pub === PROBE_ID) {
      this.probeSeen = true;
      return;
    }
    const seq = buf.readUInt32BE(p + 4);
    if (pub >= this.opts.devices || seq >= this.opts.messages) {
      this.foreign++;
      return;
    }
    this.received++;
    const bit = pub * this.opts.messages + seq;
    const byte = bit >>> 3;
    const mask = 1 << (bit & 7);
    if (this.seen[byte] & mask) {
      this.duplicates++;
      return;
    }
    this.seen[byte] |= mask;
    this.distinct++;
    const now = performance.timeOrigin + performance.now();
    this.lastReceiveAt = now;
    recordMs(this.hist, now - buf.readDoubleBE(p + 8));
  }

  /**
   * Upstreams allow unlimited messages in flight, so a PUBACK that waits a
   * millisecond throttles nothing, while acking every (often one-message) chunk
   * costs the upstream a read per message on the cores the target needs.
   */
  private scheduleAcks(): void {
    if (this.pendingAcks.length + this.pendingRel.length >= ACK_BATCH) this.flushAcks();
    else if (this.ackTimer === null) this.ackTimer = setTimeout(() => this.flushAcks(), ACK_DELAY_MS);
  }

  private flushAcks(): void {
    if (this.ackTimer !== null) {
      clearTimeout(this.ackTimer);
      this.ackTimer = null;
    }
    const n = this.pendingAcks.length + this.pendingRel.length;
    if (n === 0 || !this.socket || this.socket.destroyed) return;
    const out = Buffer.allocUnsafe(n * 4);
    let o = 0;
    for (const a of this.pendingAcks) o = a >= 0 ? ackFrame(PACKET.PUBACK, a, out, o) : ackFrame(PACKET.PUBREC, -a, out, o);
    for (const pid of this.pendingRel) o = ackFrame(PACKET.PUBCOMP, pid, out, o);
    this.pendingAcks = [];
    this.pendingRel = [];
    this.socket.write(out);
  }

  tally(): BrokerTally {
    return {
      broker: this.opts.broker,
      expected: this.expected,
      received: this.received,
      distinct: this.distinct,
      missing: this.expected - this.distinct,
      duplicates: this.duplicates,
      foreign: this.foreign,
      lastReceiveAt: this.lastReceiveAt,
      e2e: summarize(this.hist),
    };
  }

  async close(): Promise<void> {
    this.closing = true;
    this.flushAcks();
    await disconnect(this.socket);
  }
}
