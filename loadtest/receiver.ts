// One subscriber per upstream broker, counting what it receives in a SeenTally
// (tally.ts): exact missing and duplicate counts per (publisher, sequence).
import type * as net from 'node:net';
import type { Histogram } from './latency';
import { ackFrame, connectRaw, disconnect, encodeSubscribe, PACKET } from './mqtt-wire';
import { sleep } from './procs';
import { BrokerTally, SeenTally, UpstreamCounter } from './tally';


const ACK_BATCH = 256;
const ACK_DELAY_MS = 2;
const RECONNECT_EVERY_MS = 20;

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

export class Receiver implements UpstreamCounter {
  reconnects = 0;
  private readonly seen: SeenTally;
  private socket: net.Socket | null = null;
  private pendingAcks: number[] = [];
  private pendingRel: number[] = [];
  private ackTimer: NodeJS.Timeout | null = null;
  private onSuback: ((ok: boolean) => void) | null = null;
  private closing = false;
  error: string | null = null;

  private constructor(readonly opts: ReceiverOptions) {
    this.seen = new SeenTally(opts);
  }

  get broker(): string {
    return this.opts.broker;
  }
  get received(): number {
    return this.seen.received;
  }
  get distinct(): number {
    return this.seen.distinct;
  }
  get duplicates(): number {
    return this.seen.duplicates;
  }
  get foreign(): number {
    return this.seen.foreign;
  }
  get lastReceiveAt(): number {
    return this.seen.lastReceiveAt;
  }
  get probeSeen(): boolean {
    return this.seen.probeSeen;
  }
  /** Wall-clock arrival of the first message sent at or after watchFrom (see watchSentAfter); 0 if none yet. */
  get firstAfterAt(): number {
    return this.seen.firstAfterAt;
  }
  get hist(): Histogram {
    return this.seen.hist;
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
    this.seen.watchSentAfter(wallMs);
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
    this.seen.count(buf, p, end, performance.timeOrigin + performance.now());
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
  tally(expected: number[]): Promise<BrokerTally> {
    return Promise.resolve(this.seen.tally(this.opts.broker, expected, this.reconnects));
  }

  /** See SeenTally.compare. */
  compare(expected: Uint8Array, count: number): { missing: number; extra: number } {
    return this.seen.compare(expected, count);
  }

  destroy(): void {
    this.seen.destroy();
  }

  async close(): Promise<void> {
    this.closing = true;
    this.flushAcks();
    await disconnect(this.socket);
  }
}
