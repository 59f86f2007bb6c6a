// Main-thread side of the load generator: spreads devices over worker threads
// so that framing and timestamping never compete with the receivers (which
// live on the main thread) for one event loop.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { LatencySummary, mergeEncoded, newHistogram, summarize } from './latency';
import type { Qos } from './mqtt-wire';

export interface PublisherWorkerConfig {
  host: string;
  port: number;
  ids: number[];
  messages: number;
  payload: number;
  qos: Qos;
  inflight: number;
  topicPattern: string;
  clientPrefix: string;
}

export type ToWorker = { type: 'start' } | { type: 'close' };

export interface PublisherStats {
  devices: number;
  sent: number;
  acked: number;
  finishedDevices: number;
  /** Wall-clock ms; 0 when nothing was sent. */
  firstSendAt: number;
  lastAckAt: number;
  lastWriteAt: number;
  unexpectedAcks: number;
  errors: string[];
  histogram: string;
}

export type FromWorker =
  | { type: 'connected' }
  | { type: 'progress'; sent: number; acked: number }
  | { type: 'done' }
  | { type: 'closed'; stats: PublisherStats }
  | { type: 'fatal'; message: string };

export interface PublisherOptions {
  host: string;
  port: number;
  devices: number;
  messages: number;
  payload: number;
  qos: Qos;
  inflight: number;
  topicPattern: string;
  threads: number;
  clientPrefix: string;
}

export interface PublisherResult {
  expected: number;
  sent: number;
  /** PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received; 0 at QoS 0. */
  acked: number;
  finishedDevices: number;
  firstSendAt: number;
  lastAckAt: number;
  lastWriteAt: number;
  unexpectedAcks: number;
  errors: string[];
  ack: LatencySummary;
}

interface Slot {
  worker: Worker;
  sent: number;
  acked: number;
  done: boolean;
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
      const cfg: PublisherWorkerConfig = { ...opts, ids };
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
        closed: new Promise<PublisherStats>((resolve, reject) => {
          worker.on('message', (msg: FromWorker) => {
            if (msg.type === 'connected') onConnected();
            else if (msg.type === 'fatal') onFailed(new Error(`publisher worker ${t}: ${msg.message}`));
            else if (msg.type === 'progress') {
              slot.sent = msg.sent;
              slot.acked = msg.acked;
            } else if (msg.type === 'done') slot.done = true;
            else if (msg.type === 'closed') {
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

  /** Disconnects every device and merges the workers' figures. */
  async close(): Promise<PublisherResult> {
    for (const s of this.slots) s.worker.postMessage({ type: 'close' } satisfies ToWorker);
    const all = await Promise.all(this.slots.map((s) => s.closed));
    const hist = newHistogram();
    for (const st of all) mergeEncoded(hist, st.histogram);
    const nonZero = (xs: number[]): number[] => xs.filter((x) => x > 0);
    const result: PublisherResult = {
      expected: this.opts.devices * this.opts.messages,
      sent: all.reduce((n, s) => n + s.sent, 0),
      acked: all.reduce((n, s) => n + s.acked, 0),
      finishedDevices: all.reduce((n, s) => n + s.finishedDevices, 0),
      firstSendAt: Math.min(...nonZero(all.map((s) => s.firstSendAt)), Infinity),
      lastAckAt: Math.max(0, ...all.map((s) => s.lastAckAt)),
      lastWriteAt: Math.max(0, ...all.map((s) => s.lastWriteAt)),
      unexpectedAcks: all.reduce((n, s) => n + s.unexpectedAcks, 0),
      errors: all.flatMap((s) => s.errors).slice(0, 20),
      ack: summarize(hist),
    };
    hist.destroy();
    if (!Number.isFinite(result.firstSendAt)) result.firstSendAt = 0;
    return result;
  }

  async terminate(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
