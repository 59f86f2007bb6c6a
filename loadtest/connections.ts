// Main-thread side of connect-storm and idle: many MQTT connections that do
// nothing but connect, keep alive and disconnect, spread over worker threads so
// handshakes are not serialised behind one event loop. All threads share this
// process's open-file limit, so the total is capped by it, not per thread.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { LatencySummary, mergeEncoded, newHistogram, summarize } from './latency';
import type { ProtocolLevel } from './mqtt-wire';
import { share } from './pacing';

export interface ConnWorkerConfig {
  host: string;
  port: number;
  clientPrefix: string;
  /** Global connection numbers this worker owns, opened in order. */
  ids: number[];
  protocol: ProtocolLevel;
  /** CONNECT keep-alive in seconds; each connection sends PINGREQ every `keepalive` s. 0 = off. */
  keepalive: number;
  timeoutMs: number;
  concurrency: number;
  /** Attempts per second this worker starts; 0 = as fast as `concurrency` allows. */
  ramp: number;
  /** Each connection gives its user name and password (deviceCredentials of its number). */
  auth: boolean;
}

export type ToConnWorker = { type: 'open'; count: number } | { type: 'close' };

export interface StepStats {
  attempted: number;
  ok: number;
  /** ECONNREFUSED or a CONNACK with a failure code. */
  refused: number;
  /** No CONNACK within the timeout. */
  timeouts: number;
  /** Anything else (reset, closed before CONNACK, EMFILE, EADDRNOTAVAIL, ...). */
  errors: number;
  /** Wall-clock ms of the first attempt and of the last attempt's outcome. */
  firstStartAt: number;
  lastDoneAt: number;
  /** Connect latency (TCP connect to CONNACK), encoded HdrHistogram. */
  histogram: string;
  errorSamples: string[];
}

export interface HoldStats {
  /** Connections still open when closing began. */
  open: number;
  /** PINGREQs sent and PINGRESPs received since the last step finished connecting. */
  pingsSent: number;
  pongs: number;
  /** Established connections the target closed. */
  dropped: number;
  errorSamples: string[];
}

export type FromConnWorker =
  | { type: 'ready' }
  | { type: 'opened'; step: StepStats }
  | { type: 'closed'; hold: HoldStats }
  | { type: 'fatal'; message: string };

export interface ConnectionOptions {
  host: string;
  port: number;
  clientPrefix: string;
  connections: number;
  threads: number;
  protocol: ProtocolLevel;
  keepalive: number;
  timeoutMs: number;
  /** Total handshakes in flight. */
  concurrency: number;
  /** Total attempts per second; 0 = unpaced. */
  ramp: number;
  /** Connections authenticate (the auth scenario). */
  auth?: boolean;
}

export interface StepResult extends Omit<StepStats, 'histogram'> {
  durationMs: number;
  connPerSec: number;
  connect: LatencySummary;
}

interface Slot {
  worker: Worker;
  /** Resolvers of the reply the main thread is waiting for, in order. */
  waiting: ((msg: FromConnWorker) => void)[];
  failure: Error | null;
}

export class ConnectionPool {
  private opened = 0;

  private constructor(
    private readonly opts: ConnectionOptions,
    private readonly slots: Slot[],
  ) {}

  static async start(opts: ConnectionOptions): Promise<ConnectionPool> {
    const threads = Math.max(1, Math.min(opts.threads, opts.connections));
    const entry = path.join(__dirname, 'connections.worker.js');
    const slots: Slot[] = [];
    for (let t = 0; t < threads; t++) {
      const ids: number[] = [];
      for (let id = t; id < opts.connections; id += threads) ids.push(id);
      const cfg: ConnWorkerConfig = {
        host: opts.host,
        port: opts.port,
        clientPrefix: opts.clientPrefix,
        ids,
        protocol: opts.protocol,
        keepalive: opts.keepalive,
        timeoutMs: opts.timeoutMs,
        concurrency: Math.max(1, share(opts.concurrency, threads, t)),
        ramp: opts.ramp / threads,
        auth: opts.auth ?? false,
      };
      const slot: Slot = { worker: new Worker(entry, { workerData: cfg }), waiting: [], failure: null };
      const failAll = (err: Error): void => {
        slot.failure ??= err;
        for (const w of slot.waiting.splice(0)) w({ type: 'fatal', message: err.message });
      };
      slot.worker.on('message', (msg: FromConnWorker) => {
        if (msg.type === 'fatal') failAll(new Error(`connection worker ${t}: ${msg.message}`));
        else slot.waiting.shift()?.(msg);
      });
      slot.worker.once('error', failAll);
      slot.worker.once('exit', (code) => failAll(new Error(`connection worker ${t} exited with code ${code}`)));
      slots.push(slot);
    }
    const pool = new ConnectionPool(opts, slots);
    try {
      await Promise.all(slots.map((s) => pool.reply(s)));
    } catch (err) {
      await pool.terminate();
      throw err;
    }
    return pool;
  }

  private reply(slot: Slot): Promise<FromConnWorker> {
    if (slot.failure) return Promise.reject(slot.failure);
    return new Promise((resolve, reject) => {
      slot.waiting.push((msg) => (msg.type === 'fatal' ? reject(new Error(msg.message)) : resolve(msg)));
    });
  }

  /** Opens the next `count` connections (as fast as the plan allows) and waits for every outcome. */
  async open(count: number): Promise<StepResult> {
    const n = Math.min(count, this.opts.connections - this.opened);
    // Connection k belongs to worker k mod threads, so the next n spread the same way.
    const threads = this.slots.length;
    const replies = this.slots.map((s, t) => {
      const mine = share(n, threads, (t - (this.opened % threads) + threads) % threads);
      s.worker.postMessage({ type: 'open', count: mine } satisfies ToConnWorker);
      return this.reply(s);
    });
    this.opened += n;
    const steps = (await Promise.all(replies)).flatMap((m) => (m.type === 'opened' ? [m.step] : []));
    return mergeSteps(steps);
  }

  async close(): Promise<HoldStats> {
    const replies = this.slots.map((s) => {
      s.worker.postMessage({ type: 'close' } satisfies ToConnWorker);
      return this.reply(s);
    });
    const holds = (await Promise.all(replies)).flatMap((m) => (m.type === 'closed' ? [m.hold] : []));
    return {
      open: holds.reduce((n, h) => n + h.open, 0),
      pingsSent: holds.reduce((n, h) => n + h.pingsSent, 0),
      pongs: holds.reduce((n, h) => n + h.pongs, 0),
      dropped: holds.reduce((n, h) => n + h.dropped, 0),
      errorSamples: holds.flatMap((h) => h.errorSamples).slice(0, 10),
    };
  }

  async terminate(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}

export function mergeSteps(steps: StepStats[]): StepResult {
  const hist = newHistogram();
  for (const s of steps) if (s.histogram) mergeEncoded(hist, s.histogram);
  const starts = steps.map((s) => s.firstStartAt).filter((x) => x > 0);
  const firstStartAt = starts.length ? Math.min(...starts) : 0;
  const lastDoneAt = Math.max(0, ...steps.map((s) => s.lastDoneAt));
  const ok = steps.reduce((n, s) => n + s.ok, 0);
  const durationMs = firstStartAt > 0 ? lastDoneAt - firstStartAt : 0;
  const result: StepResult = {
    attempted: steps.reduce((n, s) => n + s.attempted, 0),
    ok,
    refused: steps.reduce((n, s) => n + s.refused, 0),
    timeouts: steps.reduce((n, s) => n + s.timeouts, 0),
    errors: steps.reduce((n, s) => n + s.errors, 0),
    firstStartAt,
    lastDoneAt,
    durationMs,
    connPerSec: durationMs > 0 ? (ok * 1000) / durationMs : 0,
    connect: summarize(hist),
    errorSamples: steps.flatMap((s) => s.errorSamples).slice(0, 10),
  };
  hist.destroy();
  return result;
}
