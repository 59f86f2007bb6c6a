// One subscriber per upstream broker. Every (publisher, sequence) pair gets a
// bit, so missing and duplicate counts are exact rather than inferred from
// totals (a duplicate would otherwise hide a loss).
import type * as net from 'node:net';
import { LatencySummary, newHistogram, recordMs, summarize, Histogram } from './latency';
import { ackFrame, connectRaw, disconnect, encodeSubscribe, PACKET, PAYLOAD_HEADER_BYTES, PROBE_ID } from './mqtt-wire';
import { sleep } from './procs';

const ACK_BATCH = 256;
const ACK_DELAY_MS = 2;
const RECONNECT_EVERY_MS = 20;

function popcount8(b: number): number {
  let n = b & 0xff;
  n = n - ((n >> 1) & 0x55);
  n = (n & 0x33) + ((n >> 2) & 0x33);
  return (n + (n >> 4)) & 0x0f;
}

export interface GroupTally {
  group: number;
  expected: number;
  distinct: number;
  missing: number;
  duplicates: number;
  /** Wall-clock ms of the group's last new message; 0 if none. */
  lastReceiveAt: number;
  e2e: LatencySummary;
}

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
  /** Times the subscriber lost its broker and connected again (broker-outage). */
  reconnects: number;
  e2e: LatencySummary;
  /** Per publisher group (mixed: group = QoS); absent with a single group. */
  groups?: GroupTally[];
}

export interface ReceiverOptions {
  broker: string;
  port: number;
  filter: string;
  devices: number;
  /** Sequence numbers per publisher the bitmap has room for. */
  messages: number;
  clientId: string;
  /** Publishers fall into `groups` groups by id modulo groups (mixed: 3, the QoS). Default 1. */
  groups?: number;
  /**
   * Persistent session and reconnecting when the broker goes away, for an
   * upstream that is killed on purpose; otherwise a lost connection is an error.
   */
  survive?: boolean;
}

export class Receiver {
  received = 0;
  distinct = 0;
  duplicates = 0;
  foreign = 0;
  lastReceiveAt = 0;
  probeSeen = false;
  reconnects = 0;
  /** Wall-clock arrival of the first message sent at or after watchFrom (see watchSentAfter); 0 if none yet. */
  firstAfterAt = 0;
  readonly hist: Histogram = newHistogram();
  private readonly groupCount: number;
  private readonly groupDistinct: number[];
  private readonly groupDuplicates: number[];
  private readonly groupLast: number[];
  private readonly groupHists: Histogram[];
  private readonly seen: Uint8Array;
  private socket: net.Socket | null = null;
  private pendingAcks: number[] = [];
  private pendingRel: number[] = [];
  private ackTimer: NodeJS.Timeout | null = null;
  private onSuback: ((ok: boolean) => void) | null = null;
  private closing = false;
  private watchFrom = Infinity;
  error: string | null = null;

  private constructor(readonly opts: ReceiverOptions) {
    this.seen = new Uint8Array(Math.ceil((opts.devices * opts.messages) / 8));
    this.groupCount = opts.groups ?? 1;
    this.groupDistinct = new Array<number>(this.groupCount).fill(0);
    this.groupDuplicates = new Array<number>(this.groupCount).fill(0);
    this.groupLast = new Array<number>(this.groupCount).fill(0);
    this.groupHists = this.groupCount > 1 ? Array.from({ length: this.groupCount }, newHistogram) : [];
  }

  /** Connects and resolves once the subscription is acknowledged. */
  static async connect(opts: ReceiverOptions): Promise<Receiver> {
    const r = new Receiver(opts);
    await r.open();
    return r;
  }

  private async open(): Promise<void> {
    const { opts } = this;
    const socket = await connectRaw('127.0.0.1', opts.port, opts.clientId, (h, b, s, l) => this.onFrame(h, b, s, l), { clean: !opts.survive });
    this.socket = socket;
    // Acks owed to an earlier connection mean nothing to this one.
    this.pendingAcks = [];
    this.pendingRel = [];
    // Registered after connectRaw's own 'data' listener, so it runs once the chunk is framed.
    socket.on('data', () => this.scheduleAcks());
    socket.on('error', (err) => {
      if (!opts.survive) this.error ??= err.message;
    });
    socket.on('close', () => {
      if (this.closing || this.socket !== socket) return;
      if (opts.survive) void this.reconnect();
      else this.error ??= `connection to ${opts.broker} closed`;
    });
    const ok = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      this.onSuback = (granted) => {
        clearTimeout(timer);
        resolve(granted);
      };
      // Also after a reconnect: a broker that lost the session still gets the subscription back.
      socket.write(encodeSubscribe(opts.filter, 1));
    });
    if (!ok) {
      socket.destroy();
      throw new Error(`subscription to ${opts.filter} on ${opts.broker} failed`);
    }
  }

  private async reconnect(): Promise<void> {
    this.socket = null;
    while (!this.closing) {
      try {
        await this.open();
        this.reconnects++;
        return;
      } catch {
        await sleep(RECONNECT_EVERY_MS);
      }
    }
  }

  /** From now on, note when the first message sent at or after `wallMs` arrives (firstAfterAt). */
  watchSentAfter(wallMs: number): void {
    this.watchFrom = wallMs;
    this.firstAfterAt = 0;
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
    const group = pub % this.groupCount;
    const bit = pub * this.opts.messages + seq;
    const byte = bit >>> 3;
    const mask = 1 << (bit & 7);
    if (this.seen[byte] & mask) {
      this.duplicates++;
      this.groupDuplicates[group]++;
      return;
    }
    this.seen[byte] |= mask;
    this.distinct++;
    this.groupDistinct[group]++;
    const now = performance.timeOrigin + performance.now();
    this.lastReceiveAt = now;
    this.groupLast[group] = now;
    const sentAt = buf.readDoubleBE(p + 8);
    if (sentAt >= this.watchFrom && this.firstAfterAt === 0) this.firstAfterAt = now;
    recordMs(this.hist, now - sentAt);
    if (this.groupCount > 1) recordMs(this.groupHists[group], now - sentAt);
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

  /** `expected` per group: messages the publishers sent (or were to send). */
  tally(expected: number[]): BrokerTally {
    const total = expected.reduce((a, b) => a + b, 0);
    const t: BrokerTally = {
      broker: this.opts.broker,
      expected: total,
      received: this.received,
      distinct: this.distinct,
      missing: total - this.distinct,
      duplicates: this.duplicates,
      foreign: this.foreign,
      lastReceiveAt: this.lastReceiveAt,
      reconnects: this.reconnects,
      e2e: summarize(this.hist),
    };
    if (this.groupCount > 1) {
      t.groups = this.groupHists.map((h, g) => ({
        group: g,
        expected: expected[g] ?? 0,
        distinct: this.groupDistinct[g],
        missing: (expected[g] ?? 0) - this.groupDistinct[g],
        duplicates: this.groupDuplicates[g],
        lastReceiveAt: this.groupLast[g],
        e2e: summarize(h),
      }));
    }
    return t;
  }

  /**
   * Publisher 0's sequence numbers below `count` against the bitmap `expected`
   * (same layout: bit n = sequence n): how many set there did not arrive, and
   * how many arrived that it lacks.
   */
  compare(expected: Uint8Array, count: number): { missing: number; extra: number } {
    let missing = 0;
    let extra = 0;
    const bytes = Math.min(Math.ceil(count / 8), this.seen.length, expected.length);
    for (let i = 0; i < bytes; i++) {
      const valid = i === bytes - 1 && count % 8 !== 0 ? (1 << count % 8) - 1 : 0xff;
      const want = expected[i] & valid;
      const got = this.seen[i] & valid;
      missing += popcount8(want & ~got);
      extra += popcount8(got & ~want);
    }
    return { missing, extra };
  }

  destroy(): void {
    this.hist.destroy();
    for (const h of this.groupHists) h.destroy();
  }

  async close(): Promise<void> {
    this.closing = true;
    this.flushAcks();
    await disconnect(this.socket);
  }
}
