// Main-thread side of the load generator: spreads devices over worker threads
// so that framing and timestamping never compete with the receivers (which
// live on the main thread) for one event loop.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { LatencySummary, mergeEncoded, newHistogram, summarize } from './latency';
import type { ProtocolLevel, Qos } from './mqtt-wire';
import type { DeviceEndpoint, Transport } from './mqtt-ws';
import { share } from './pacing';

/** QoS of every device, or 'mixed': device id modulo 3 is its QoS. */
export type QosMode = Qos | 'mixed';

export interface PublisherWorkerConfig {
  endpoint: DeviceEndpoint;
  ids: number[];
  /** Per device; an upper bound when durationMs is set. */
  messages: number;
  payload: number;
  qos: QosMode;
  inflight: number;
  topicPattern: string;
  clientPrefix: string;
  protocol: ProtocolLevel;
  /** CONNECT keep-alive in seconds; idle devices send PINGREQ. 0 = off. */
  keepalive: number;
  /** msg/s per device; 0 = as fast as the inflight window allows. */
  ratePerDevice: number;
  /** Stop sending this long after start; 0 = send `messages`. */
  durationMs: number;
  /** Connections per second this worker opens; 0 = as fast as `concurrency` allows. */
  ramp: number;
  /** Handshakes this worker has in flight at once while connecting. */
  concurrency: number;
  /** Each device gives its user name and password (deviceCredentials). */
  auth: boolean;
}

export type ToWorker = { type: 'start' } | { type: 'close' };

export interface QosStats {
  qos: Qos;
  devices: number;
  sent: number;
  /** PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received; 0 at QoS 0. */
  acked: number;
  refused: number;
  /** Wall-clock ms; 0 when nothing was sent. */
  firstSendAt: number;
  lastAckAt: number;
  lastWriteAt: number;
  histogram: string;
}

export interface PublisherStats {
  devices: number;
  sent: number;
  acked: number;
  refused: number;
  finishedDevices: number;
  firstSendAt: number;
  lastAckAt: number;
  lastWriteAt: number;
  unexpectedAcks: number;
  errors: string[];
  byQos: QosStats[];
}

export type FromWorker =
  | { type: 'connected' }
  | { type: 'progress'; sent: number; acked: number }
  | { type: 'done'; sent: number }
  | { type: 'closed'; stats: PublisherStats }
  | { type: 'fatal'; message: string };

export interface PublisherOptions {
  host: string;
  port: number;
  /** tcp (the default), ws: `port` is then a WebSocket port serving `wsPath`, or tls, verified against `ca`. */
  transport?: Transport;
  wsPath?: string;
  ca?: string;
  /** Devices authenticate: each gives its user name and password (deviceCredentials). */
  auth?: boolean;
  devices: number;
  messages: number;
  payload: number;
  qos: QosMode;
  inflight: number;
  topicPattern: string;
  threads: number;
  clientPrefix: string;
  protocol: ProtocolLevel;
  keepalive: number;
  /** Total msg/s over all devices; 0 = unpaced. */
  rate: number;
  durationMs: number;
  /** Total connections per second while connecting; 0 = unpaced. */
  ramp: number;
  /** Total handshakes in flight while connecting. */
  concurrency: number;
}

/** A QosStats with its histogram decoded into percentiles. */
export interface QosResult extends Omit<QosStats, 'histogram'> {
  ack: LatencySummary;
}

export interface PublisherResult {
  /** Messages the devices were to send: devices x messages, or what they sent when the run was time-bound. */
  expected: number;
  sent: number;
  /** PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received; 0 at QoS 0. */
  acked: number;
  /** MQTT 5 acks carrying a failure reason code. */
  refused: number;
  finishedDevices: number;
  firstSendAt: number;
  lastAckAt: number;
  lastWriteAt: number;
  unexpectedAcks: number;
  errors: string[];
  ack: LatencySummary;
  byQos: QosResult[];
}

interface Slot {
  worker: Worker;
  sent: number;
  acked: number;
  done: boolean;
  finalSent: number;
  closed: Promise<PublisherStats>;
}

export class PublisherPool {
  private constructor(
    private readonly opts: PublisherOptions,
    private readonly slots: Slot[],
  ) {}

  /** Starts the workers and resolves once every device holds a CONNACK. */
  static async connect(opts: PublisherOptions): Promise<PublisherPool> {
    const threads = Math.max(1, Math.min(opts.threads, opts.devices));
    const entry = path.join(__dirname, 'publisher.worker.js');
    const slots: Slot[] = [];
    const connected: Promise<void>[] = [];
    for (let t = 0; t < threads; t++) {
      const ids: number[] = [];
      for (let id = t; id < opts.devices; id += threads) ids.push(id);
      const cfg: PublisherWorkerConfig = {
        endpoint: { transport: opts.transport ?? 'tcp', host: opts.host, port: opts.port, path: opts.wsPath ?? '/mqtt', ca: opts.ca },
        ids,
        messages: opts.messages,
        payload: opts.payload,
        qos: opts.qos,
        inflight: opts.inflight,
        topicPattern: opts.topicPattern,
        clientPrefix: opts.clientPrefix,
        protocol: opts.protocol,
        keepalive: opts.keepalive,
        ratePerDevice: opts.rate / opts.devices,
        durationMs: opts.durationMs,
        ramp: opts.ramp / threads,
        concurrency: Math.max(1, share(opts.concurrency, threads, t)),
        auth: opts.auth ?? false,
      };
      const worker = new Worker(entry, { workerData: cfg });
      let onConnected: () => void = () => undefined;
      let onFailed: (err: Error) => void = () => undefined;
      connected.push(
        new Promise<void>((resolve, reject) => {
          onConnected = resolve;
          onFailed = reject;
        }),
      );
      const slot: Slot = {
        worker,
        sent: 0,
        acked: 0,
        done: false,
        finalSent: 0,
        closed: new Promise<PublisherStats>((resolve, reject) => {
          worker.on('message', (msg: FromWorker) => {
            if (msg.type === 'connected') onConnected();
            else if (msg.type === 'fatal') onFailed(new Error(`publisher worker ${t}: ${msg.message}`));
            else if (msg.type === 'progress') {
              slot.sent = msg.sent;
              slot.acked = msg.acked;
            } else if (msg.type === 'done') {
              slot.done = true;
              slot.finalSent = msg.sent;
            } else if (msg.type === 'closed') {
              slot.sent = msg.stats.sent;
              slot.acked = msg.stats.acked;
              resolve(msg.stats);
            }
          });
          const fail = (err: Error): void => {
            onFailed(err);
            reject(err);
          };
          worker.once('error', fail);
          worker.once('exit', (code) => fail(new Error(`publisher worker ${t} exited with code ${code}`)));
        }),
      };
      // Nobody awaits `closed` when connecting fails; keep that from becoming an unhandled rejection.
      slot.closed.catch(() => undefined);
      slots.push(slot);
    }
    const pool = new PublisherPool(opts, slots);
    try {
      await Promise.all(connected);
    } catch (err) {
      await pool.terminate();
      throw err;
    }
    return pool;
  }

  begin(): void {
    for (const s of this.slots) s.worker.postMessage({ type: 'start' } satisfies ToWorker);
  }

  get sent(): number {
    return this.slots.reduce((n, s) => n + s.sent, 0);
  }

  get acked(): number {
    return this.slots.reduce((n, s) => n + s.acked, 0);
  }

  /** Every device has its last ack (QoS 1/2), has flushed its last frame (QoS 0), or has failed. */
  get allDone(): boolean {
    return this.slots.every((s) => s.done);
  }

  /** Messages sent in all, exact once allDone (a time-bound run only knows it then). */
  get finalSent(): number {
    return this.slots.reduce((n, s) => n + s.finalSent, 0);
  }

  /** Disconnects every device and merges the workers' figures. */
  async close(): Promise<PublisherResult> {
    for (const s of this.slots) s.worker.postMessage({ type: 'close' } satisfies ToWorker);
    const all = await Promise.all(this.slots.map((s) => s.closed));
    const total = newHistogram();
    const byQos: QosResult[] = [];
    for (const qos of [0, 1, 2] as const) {
      const parts = all.flatMap((st) => st.byQos.filter((q) => q.qos === qos));
      if (parts.length === 0) continue;
      const hist = newHistogram();
      for (const p of parts) mergeEncoded(hist, p.histogram);
      total.add(hist);
      const nonZero = parts.map((p) => p.firstSendAt).filter((x) => x > 0);
      byQos.push({
        qos,
        devices: parts.reduce((n, p) => n + p.devices, 0),
        sent: parts.reduce((n, p) => n + p.sent, 0),
        acked: parts.reduce((n, p) => n + p.acked, 0),
        refused: parts.reduce((n, p) => n + p.refused, 0),
        firstSendAt: nonZero.length ? Math.min(...nonZero) : 0,
        lastAckAt: Math.max(0, ...parts.map((p) => p.lastAckAt)),
        lastWriteAt: Math.max(0, ...parts.map((p) => p.lastWriteAt)),
        ack: summarize(hist),
      });
      hist.destroy();
    }
    const sent = all.reduce((n, s) => n + s.sent, 0);
    const nonZero = all.map((s) => s.firstSendAt).filter((x) => x > 0);
    const result: PublisherResult = {
      expected: this.opts.durationMs > 0 ? sent : this.opts.devices * this.opts.messages,
      sent,
      acked: all.reduce((n, s) => n + s.acked, 0),
      refused: all.reduce((n, s) => n + s.refused, 0),
      finishedDevices: all.reduce((n, s) => n + s.finishedDevices, 0),
      firstSendAt: nonZero.length ? Math.min(...nonZero) : 0,
      lastAckAt: Math.max(0, ...all.map((s) => s.lastAckAt)),
      lastWriteAt: Math.max(0, ...all.map((s) => s.lastWriteAt)),
      unexpectedAcks: all.reduce((n, s) => n + s.unexpectedAcks, 0),
      errors: all.flatMap((s) => s.errors).slice(0, 20),
      ack: summarize(total),
      byQos,
    };
    total.destroy();
    return result;
  }

  async terminate(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
