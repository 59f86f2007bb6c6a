// The stand-in upstream ("sink"): a minimal MQTT 3.1.1/5.0 server that only
// acknowledges and counts, so that the upstreams of a speed run take a sliver
// of the cores instead of most of them (two mosquittos do). It answers CONNECT
// (any of levels 3, 4, 5, with or without the 0x80 bridge bit of mosquitto's
// bridges), SUBSCRIBE (granting what was asked), UNSUBSCRIBE and PINGREQ,
// acknowledges QoS 1 (PUBACK) and QoS 2 (PUBREC, PUBCOMP on PUBREL; a QoS 2
// PUBLISH resent before its PUBREL is the same message, as at a broker), never
// sends a PUBLISH, and counts every load payload in a SeenTally (tally.ts).
//
// Cheap by construction: frames are cut by hand (Framer), the clock is read once
// per read, every ack a read owes goes out in one write from a per-connection
// slab, and nothing is allocated per message. It runs in a child process of its
// own (sink.child.ts) so /proc measures its CPU apart from everything else; the
// harness reads its tally over the IPC channel (SinkCounter, an UpstreamCounter).
import type { ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { Framer, PACKET, readVarint, wallNow } from './mqtt-wire';
import { logTail, Managed, spawnManaged } from './procs';
import { BrokerTally, LiveCounts, SeenTally, TallyShape, UpstreamCounter } from './tally';

const CONNECT = 1;
const SUBSCRIBE = 8;
const UNSUBSCRIBE = 10;
const SUBACK = 0x90;
const UNSUBACK = 0xb0;
/** Ack bytes a connection writes from before it takes a fresh slab. */
const SLAB_BYTES = 16 * 1024;
/** How often the child reports its live counts to the harness. */
export const LIVE_EVERY_MS = 50;

class SinkConnection {
  /** 5 once the CONNECT said MQTT 5 (acks and SUBACKs then carry a property length). */
  private level = 0;
  private slab = Buffer.allocUnsafe(SLAB_BYTES);
  /** Written up to `start`; acks of the current read stand in [start, end). */
  private start = 0;
  private end = 0;
  private now = 0;
  /** QoS 2 packet ids received and not yet released (allocated on the first QoS 2 PUBLISH). */
  private qos2: Uint8Array | null = null;
  private readonly framer = new Framer((h, b, s, l) => this.onFrame(h, b, s, l));

  constructor(
    private readonly socket: net.Socket,
    private readonly sink: SinkServer,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.now = wallNow();
      try {
        this.framer.push(chunk);
      } catch {
        socket.destroy();
        return;
      }
      this.flush();
    });
    // A peer that goes away (DISCONNECT, reset) is no concern of a sink.
    socket.on('error', () => undefined);
  }

  private reserve(n: number): void {
    if (this.end + n <= this.slab.length) return;
    // The written part stays with the socket until sent; the unwritten part moves to a fresh slab.
    const pending = this.end - this.start;
    const next = Buffer.allocUnsafe(Math.max(SLAB_BYTES, pending + n));
    this.slab.copy(next, 0, this.start, this.end);
    this.slab = next;
    this.start = 0;
    this.end = pending;
  }

  private ack(type: number, pid: number): void {
    this.reserve(4);
    const s = this.slab;
    const o = this.end;
    s[o] = type << 4;
    s[o + 1] = 2;
    s[o + 2] = pid >> 8;
    s[o + 3] = pid & 0xff;
    this.end = o + 4;
  }

  private flush(): void {
    if (this.end === this.start || this.socket.destroyed) return;
    this.socket.write(this.slab.subarray(this.start, this.end));
    this.start = this.end;
  }

  private onFrame(header: number, buf: Buffer, start: number, length: number): void {
    const type = header >> 4;
    if (type === PACKET.PUBLISH) this.onPublish(header, buf, start, length);
    else if (type === PACKET.PUBREL) {
      const pid = buf.readUInt16BE(start);
      if (this.qos2 !== null) this.qos2[pid] = 0;
      this.ack(PACKET.PUBCOMP, pid);
    } else if (type === CONNECT) this.onConnect(buf, start);
    else if (type === SUBSCRIBE || type === UNSUBSCRIBE) this.onSubscribe(type, buf, start, length);
    else if (type === PACKET.PINGREQ) {
      this.reserve(2);
      this.slab[this.end++] = PACKET.PINGRESP << 4;
      this.slab[this.end++] = 0;
    }
    // DISCONNECT, acks of publishes it never sent, AUTH: nothing to answer.
  }

  private onConnect(buf: Buffer, start: number): void {
    const nameLen = buf.readUInt16BE(start);
    // Bit 7 is mosquitto's bridge flag (try_private): a bridge is a client like any other here.
    const level = buf[start + 2 + nameLen] & 0x7f;
    const ok = level >= 3 && level <= 5;
    this.level = level;
    const v5 = level === 5;
    this.reserve(5);
    const s = this.slab;
    s[this.end++] = PACKET.CONNACK << 4;
    s[this.end++] = v5 ? 3 : 2;
    s[this.end++] = 0; // no session present
    // 0x01 (3.1.1) / 0x84 (5): unsupported protocol version.
    s[this.end++] = ok ? 0 : v5 ? 0x84 : 0x01;
    if (v5) s[this.end++] = 0; // no properties
    if (!ok) {
      this.flush();
      this.socket.end();
    }
  }

  /** SUBACK granting every filter the QoS it asked for; UNSUBACK with success for each (MQTT 5). */
  private onSubscribe(type: number, buf: Buffer, start: number, length: number): void {
    const end = start + length;
    const pid = buf.readUInt16BE(start);
    const v5 = this.level === 5;
    let p = start + 2;
    if (v5) {
      const props = readVarint(buf, p);
      p = props.next + props.value;
    }
    // First pass: how many filters (no array per SUBSCRIBE).
    let n = 0;
    for (let q = p; q + 2 <= end; n++) q += 2 + buf.readUInt16BE(q) + (type === SUBSCRIBE ? 1 : 0);
    const codes = type === SUBSCRIBE || v5 ? n : 0;
    const remaining = 2 + (v5 ? 1 : 0) + codes;
    this.reserve(1 + 4 + remaining);
    const s = this.slab;
    s[this.end++] = type === SUBSCRIBE ? SUBACK : UNSUBACK;
    // Remaining length below 128 unless a SUBSCRIBE carries over 120 filters: varint by hand.
    let r = remaining;
    do {
      s[this.end++] = (r & 0x7f) | (r > 0x7f ? 0x80 : 0);
      r >>= 7;
    } while (r > 0);
    s[this.end++] = pid >> 8;
    s[this.end++] = pid & 0xff;
    if (v5) s[this.end++] = 0;
    for (let i = 0; i < codes; i++) {
      const len = buf.readUInt16BE(p);
      p += 2 + len;
      s[this.end++] = type === SUBSCRIBE ? buf[p++] & 3 : 0;
    }
  }

  private onPublish(header: number, buf: Buffer, start: number, length: number): void {
    const qos = (header >> 1) & 3;
    const end = start + length;
    let p = start + 2 + buf.readUInt16BE(start);
    if (qos > 0) {
      const pid = buf.readUInt16BE(p);
      p += 2;
      if (qos === 1) this.ack(PACKET.PUBACK, pid);
      else {
        this.ack(PACKET.PUBREC, pid);
        this.qos2 ??= new Uint8Array(65536);
        // Received again before its PUBREL: the sender did not see our PUBREC; not a second message.
        if (this.qos2[pid] === 1) return;
        this.qos2[pid] = 1;
      }
    }
    if (this.level === 5) {
      const props = readVarint(buf, p);
      p = props.next + props.value;
    }
    this.sink.tally.count(buf, p, end, this.now);
  }
}

/** The server itself, usable in-process; sink.child.ts runs one per child process. */
export class SinkServer {
  /** Until configure(): room for nothing, so only the probe and foreign packets register. */
  tally = new SeenTally({ devices: 0, messages: 0 });
  private readonly server = net.createServer((socket) => new SinkConnection(socket, this));
  private readonly sockets = new Set<net.Socket>();

  constructor() {
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
  }

  listen(port = 0, host = '127.0.0.1'): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        const addr = this.server.address();
        resolve(addr && typeof addr === 'object' ? addr.port : port);
      });
    });
  }

  /** A fresh tally for a run of this shape (devices x messages bits, groups). */
  configure(shape: TallyShape): void {
    this.tally.destroy();
    this.tally = new SeenTally(shape);
  }

  get connections(): number {
    return this.sockets.size;
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Harness to sink child over IPC. */
export type ToSink =
  | { type: 'configure'; shape: TallyShape }
  | { type: 'watch'; wallMs: number }
  | { type: 'tally'; id: number; broker: string; expected: number[] };

/** Sink child to harness over IPC. */
export type FromSink =
  | { type: 'listening'; port: number }
  | { type: 'configured' }
  | { type: 'live'; counts: LiveCounts; connections: number }
  | { type: 'tally'; id: number; tally: BrokerTally };

export function sinkEntry(): string {
  return path.join(__dirname, 'sink.child.js');
}

/** Starts a sink child process named `name`; resolves with its port once it listens. */
export async function startSink(name: string, dir: string, port = 0, timeoutMs = 10_000): Promise<{ proc: Managed; port: number }> {
  const proc = spawnManaged(name, process.execPath, [sinkEntry(), String(port)], { logPath: path.join(dir, `${name}.log`), ipc: true });
  const listening = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not listen within ${timeoutMs} ms:\n${logTail(proc.logPath)}`)), timeoutMs);
    proc.child.on('message', (msg: FromSink) => {
      if (msg.type !== 'listening') return;
      clearTimeout(timer);
      resolve(msg.port);
    });
    void proc.exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`${name} exited before it listened:\n${logTail(proc.logPath)}`));
    });
  });
  return { proc, port: listening };
}

/** The harness's view of one sink child: live counts as it pushes them, the tally on request. */
export class SinkCounter implements UpstreamCounter {
  private counts: LiveCounts = { received: 0, distinct: 0, foreign: 0, probeSeen: false, lastReceiveAt: 0, firstAfterAt: 0 };
  private nextId = 1;
  private readonly waiting = new Map<number, (t: BrokerTally) => void>();
  private configured: (() => void) | null = null;
  error: string | null = null;
  private readonly onMessage = (msg: FromSink): void => {
    if (msg.type === 'live') this.counts = msg.counts;
    else if (msg.type === 'configured') this.configured?.();
    else if (msg.type === 'tally') {
      this.waiting.get(msg.id)?.(msg.tally);
      this.waiting.delete(msg.id);
    }
  };
  private readonly onExit = (): void => {
    this.error ??= `sink ${this.broker} exited`;
  };

  private constructor(
    readonly broker: string,
    private readonly child: ChildProcess,
  ) {
    child.on('message', this.onMessage);
    child.once('exit', this.onExit);
  }

  /** Gives the sink a fresh tally of this shape; resolves once it counts into it. */
  static async attach(broker: string, proc: Managed, shape: TallyShape, timeoutMs = 10_000): Promise<SinkCounter> {
    const c = new SinkCounter(broker, proc.child);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sink ${broker} did not take its configuration within ${timeoutMs} ms`)), timeoutMs);
      c.configured = () => {
        clearTimeout(timer);
        resolve();
      };
      c.send({ type: 'configure', shape });
    }).catch((err: unknown) => {
      c.detach();
      throw err;
    });
    return c;
  }

  private send(msg: ToSink): void {
    if (!this.child.connected) {
      this.error ??= `sink ${this.broker} is gone`;
      return;
    }
    this.child.send(msg);
  }

  get received(): number {
    return this.counts.received;
  }
  get distinct(): number {
    return this.counts.distinct;
  }
  get foreign(): number {
    return this.counts.foreign;
  }
  get probeSeen(): boolean {
    return this.counts.probeSeen;
  }
  get lastReceiveAt(): number {
    return this.counts.lastReceiveAt;
  }
  get firstAfterAt(): number {
    return this.counts.firstAfterAt;
  }

  watchSentAfter(wallMs: number): void {
    this.counts = { ...this.counts, firstAfterAt: 0 };
    this.send({ type: 'watch', wallMs });
  }

  tally(expected: number[], timeoutMs = 10_000): Promise<BrokerTally> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`sink ${this.broker} sent no tally within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, (t) => {
        clearTimeout(timer);
        resolve(t);
      });
      this.send({ type: 'tally', id, broker: this.broker, expected });
    });
  }

  private detach(): void {
    this.child.off('message', this.onMessage);
    this.child.off('exit', this.onExit);
  }

  close(): Promise<void> {
    this.detach();
    return Promise.resolve();
  }

  destroy(): void {
    this.detach();
  }
}
