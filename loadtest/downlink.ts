// Scenario "downlink": one publisher on the first upstream mosquitto, N devices
// subscribed through the target, every device must receive every message.
// Devices live in worker threads (downlink.worker.ts) and count each sequence
// number in a bitmap of their own, so missing and duplicate deliveries are
// exact per device; the publisher is the uplink's publisher worker with one
// device, connected straight to b1.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { checkFileLimits } from './connect-storm';
import { LatencySummary, mergeEncoded, newHistogram, summarize } from './latency';
import type { ProtocolLevel } from './mqtt-wire';
import { share } from './pacing';
import { ResourceReport, resourceReport, UsageMeter } from './proc-usage';
import { sleep } from './procs';
import { PublisherPool, PublisherResult } from './publisher';
import type { Target } from './targets';

export interface DownlinkJob {
  devices: number;
  /** Published in all, by the one publisher. */
  messages: number;
  payload: number;
  /** Of the device subscriptions and of the publishes. */
  qos: 0 | 1;
  /** The publisher's QoS 1 window. */
  inflight: number;
  /** Publisher msg/s; 0 = as fast as the window (QoS 1) or the socket (QoS 0) allows. */
  rate: number;
  threads: number;
  idleTimeoutS: number;
  runTag: string;
  protocol: ProtocolLevel;
  keepalive: number;
  /** Device connections per second while connecting; 0 = as fast as `concurrency` allows. */
  ramp: number;
  concurrency: number;
}

export interface DeviceWorkerConfig {
  host: string;
  port: number;
  ids: number[];
  clientPrefix: string;
  filter: string;
  qos: 0 | 1;
  /** Sequence numbers per device the bitmap has room for. */
  messages: number;
  protocol: ProtocolLevel;
  keepalive: number;
  concurrency: number;
  ramp: number;
  /** CONNACK and SUBACK each must come within this. */
  timeoutMs: number;
}

export type ToDeviceWorker = { type: 'close'; expectedPerDevice: number };

export interface SubscribeStats {
  ok: number;
  failed: number;
  /** Wall-clock ms of the first SUBSCRIBE written and of the last SUBACK read. */
  firstAt: number;
  lastAt: number;
  /** SUBSCRIBE to SUBACK, encoded HdrHistogram (µs). */
  histogram: string;
  errors: string[];
}

export interface DeviceStats {
  devices: number;
  /** PUBLISH packets with a load payload, duplicates included. */
  received: number;
  distinct: number;
  duplicates: number;
  /** PUBLISH packets that are not ours (unparseable, other publisher, sequence out of range). */
  foreign: number;
  /** Deliveries at another QoS than subscribed (and published) at. */
  qosMismatch: number;
  /** Devices that lack at least one of the expected sequence numbers. */
  incomplete: number;
  /** Lowest and highest sequence number missing at any device; -1 when none is. */
  firstMissing: number;
  lastMissing: number;
  firstReceiveAt: number;
  lastReceiveAt: number;
  /** Connections the target closed. */
  dropped: number;
  errors: string[];
  /** Publish to arrival at the device, encoded HdrHistogram (µs). */
  histogram: string;
}

export type FromDeviceWorker =
  | { type: 'subscribed'; stats: SubscribeStats }
  | { type: 'progress'; received: number; distinct: number }
  | { type: 'closed'; stats: DeviceStats }
  | { type: 'fatal'; message: string };

export interface DownlinkProgress {
  elapsedS: number;
  published: number;
  acked: number;
  delivered: number;
  expected: number;
}

export interface DownlinkResult {
  devices: number;
  qos: 0 | 1;
  endedBy: 'complete' | 'idle-timeout';
  /** Messages the publisher sent, and the deliveries they call for (× devices). */
  published: number;
  expected: number;
  delivered: number;
  missing: number;
  duplicates: number;
  /** Distinct deliveries over first publish..last delivery. */
  deliveriesPerSec: number;
  /** QoS 1: publisher acks over first publish..last ack; QoS 0: sent over first..last write. */
  publishedPerSec: number;
  durationMs: number;
  subscribe: { ok: number; durationMs: number; suback: LatencySummary };
  devicesStats: Omit<DeviceStats, 'histogram'>;
  publisher: PublisherResult;
  e2e: LatencySummary;
  /** CPU per distinct delivery and peak RSS, first publish..end of the run. */
  resources: ResourceReport;
  /** Warnings and errors the target's and b1's logs wrote during the run, counted by message. */
  logFindings: string[];
}

const SUBACK_TIMEOUT_MS = 30_000;

export function downlinkTopic(runTag: string): { topic: string; filter: string } {
  return { topic: `dl/${runTag}/t`, filter: `dl/${runTag}/#` };
}

interface Slot {
  worker: Worker;
  received: number;
  distinct: number;
  subscribed: Promise<SubscribeStats>;
  closed: Promise<DeviceStats>;
}

/** The devices: worker threads that connect, subscribe, then count what arrives. */
export class DevicePool {
  private constructor(
    private readonly slots: Slot[],
    readonly subscribe: SubscribeStats,
  ) {}

  /** Resolves once every device holds its SUBACK. */
  static async start(job: DownlinkJob, host: string, port: number, filter: string): Promise<DevicePool> {
    const threads = Math.max(1, Math.min(job.threads, job.devices));
    const entry = path.join(__dirname, 'downlink.worker.js');
    const slots: Slot[] = [];
    for (let t = 0; t < threads; t++) {
      const ids: number[] = [];
      for (let id = t; id < job.devices; id += threads) ids.push(id);
      const cfg: DeviceWorkerConfig = {
        host,
        port,
        ids,
        clientPrefix: `${job.runTag}sub-`,
        filter,
        qos: job.qos,
        messages: job.messages,
        protocol: job.protocol,
        keepalive: job.keepalive,
        concurrency: Math.max(1, share(job.concurrency, threads, t)),
        ramp: job.ramp / threads,
        timeoutMs: SUBACK_TIMEOUT_MS,
      };
      const worker = new Worker(entry, { workerData: cfg });
      let failed: (err: Error) => void = () => undefined;
      const failure = new Promise<never>((_, reject) => (failed = reject));
      // Whatever is waiting on the worker fails with it.
      const reply = <T>(pick: (m: FromDeviceWorker) => T | undefined): Promise<T> => {
        const p = Promise.race([
          new Promise<T>((resolve) =>
            worker.on('message', (m: FromDeviceWorker) => {
              const v = pick(m);
              if (v !== undefined) resolve(v);
            }),
          ),
          failure,
        ]);
        // Nobody awaits `closed` when subscribing fails.
        p.catch(() => undefined);
        return p;
      };
      const slot: Slot = {
        worker,
        received: 0,
        distinct: 0,
        subscribed: reply((m) => (m.type === 'subscribed' ? m.stats : undefined)),
        closed: reply((m) => (m.type === 'closed' ? m.stats : undefined)),
      };
      worker.on('message', (m: FromDeviceWorker) => {
        if (m.type === 'progress') {
          slot.received = m.received;
          slot.distinct = m.distinct;
        } else if (m.type === 'fatal') failed(new Error(`device worker ${t}: ${m.message}`));
      });
      worker.once('error', failed);
      worker.once('exit', (code) => failed(new Error(`device worker ${t} exited with code ${code}`)));
      slots.push(slot);
    }
    let parts: SubscribeStats[];
    try {
      parts = await Promise.all(slots.map((s) => s.subscribed));
    } catch (err) {
      await Promise.all(slots.map((s) => s.worker.terminate()));
      throw err;
    }
    const hist = newHistogram();
    for (const p of parts) if (p.histogram) mergeEncoded(hist, p.histogram);
    const merged: SubscribeStats = {
      ok: parts.reduce((n, p) => n + p.ok, 0),
      failed: parts.reduce((n, p) => n + p.failed, 0),
      firstAt: Math.min(...parts.map((p) => p.firstAt)),
      lastAt: Math.max(...parts.map((p) => p.lastAt)),
      histogram: summarize(hist).hdr,
      errors: parts.flatMap((p) => p.errors).slice(0, 10),
    };
    hist.destroy();
    return new DevicePool(slots, merged);
  }

  get received(): number {
    return this.slots.reduce((n, s) => n + s.received, 0);
  }

  get distinct(): number {
    return this.slots.reduce((n, s) => n + s.distinct, 0);
  }

  /** Disconnects every device; `expectedPerDevice` decides which devices count as incomplete. */
  async close(expectedPerDevice: number): Promise<DeviceStats> {
    for (const s of this.slots) s.worker.postMessage({ type: 'close', expectedPerDevice } satisfies ToDeviceWorker);
    const all = await Promise.all(this.slots.map((s) => s.closed));
    const sum = (f: (d: DeviceStats) => number): number => all.reduce((n, d) => n + f(d), 0);
    const missing = all.filter((d) => d.firstMissing >= 0);
    const hist = newHistogram();
    for (const d of all) if (d.histogram) mergeEncoded(hist, d.histogram);
    const firstReceived = all.map((d) => d.firstReceiveAt).filter((x) => x > 0);
    const stats: DeviceStats = {
      devices: sum((d) => d.devices),
      received: sum((d) => d.received),
      distinct: sum((d) => d.distinct),
      duplicates: sum((d) => d.duplicates),
      foreign: sum((d) => d.foreign),
      qosMismatch: sum((d) => d.qosMismatch),
      incomplete: sum((d) => d.incomplete),
      firstMissing: missing.length ? Math.min(...missing.map((d) => d.firstMissing)) : -1,
      lastMissing: missing.length ? Math.max(...missing.map((d) => d.lastMissing)) : -1,
      firstReceiveAt: firstReceived.length ? Math.min(...firstReceived) : 0,
      lastReceiveAt: Math.max(0, ...all.map((d) => d.lastReceiveAt)),
      dropped: sum((d) => d.dropped),
      errors: all.flatMap((d) => d.errors).slice(0, 20),
      histogram: summarize(hist).hdr,
    };
    hist.destroy();
    return stats;
  }

  async terminate(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}

/**
 * Warning and error lines of the target's and b1's logs, counted by message:
 * pino JSON lines at warn (40) or above, mosquitto lines saying warning, error
 * or dropped (client ids and numbers folded so equal causes count together).
 */
export function logFindings(dir: string): string[] {
  const counts = new Map<string, number>();
  for (const name of ['mqtt-fanout.log', 'upstream-b1.log']) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) continue;
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      let key: string | null = null;
      if (line.startsWith('{')) {
        try {
          const j = JSON.parse(line) as { level?: number; msg?: string };
          if ((j.level ?? 0) >= 40) key = `${name}: ${j.msg ?? line}`;
        } catch {
          // A truncated last line: nothing to count.
        }
      } else if (/warn|error|dropp/i.test(line)) {
        key = `${name}: ${line.replace(/^\d+: /, '').replace(/\blt\S+/g, '<client>').replace(/\d+/g, 'N')}`;
      }
      if (key !== null) counts.set(key, (counts.get(key) ?? 0) + 1);
    }
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, n]) => `${n}x ${k}`);
}

function decode(encoded: string): LatencySummary {
  const h = newHistogram();
  if (encoded) mergeEncoded(h, encoded);
  const s = summarize(h);
  h.destroy();
  return s;
}

export async function runDownlink(target: Target, job: DownlinkJob, onProgress?: (p: DownlinkProgress) => void): Promise<DownlinkResult> {
  checkFileLimits(target, job.devices);
  // The publisher always talks to b1: the broker that serves the proxy's subscriptions, or the target itself.
  const broker = target.upstreams[0];
  const { topic, filter } = downlinkTopic(job.runTag);
  let devices: DevicePool | null = null;
  let pub: PublisherPool | null = null;
  let meter: UsageMeter | null = null;
  try {
    devices = await DevicePool.start(job, '127.0.0.1', target.devicePort, filter);
    pub = await PublisherPool.connect({
      host: '127.0.0.1',
      port: broker.port,
      devices: 1,
      messages: job.messages,
      payload: job.payload,
      qos: job.qos,
      inflight: job.inflight,
      topicPattern: topic,
      threads: 1,
      clientPrefix: `${job.runTag}pub-`,
      protocol: 4,
      keepalive: 0,
      rate: job.rate,
      durationMs: 0,
      ramp: 0,
      concurrency: 1,
    });
    meter = new UsageMeter(target.watched()).start();
    const started = Date.now();
    pub.begin();
    let endedBy: DownlinkResult['endedBy'] = 'complete';
    let lastTotal = -1;
    let lastProgressAt = Date.now();
    for (;;) {
      await sleep(100);
      const published = pub.allDone ? pub.finalSent : job.messages;
      const expected = published * job.devices;
      const delivered = devices.distinct;
      const total = pub.sent + pub.acked + devices.received;
      if (total !== lastTotal) {
        lastTotal = total;
        lastProgressAt = Date.now();
      }
      onProgress?.({ elapsedS: (Date.now() - started) / 1000, published: pub.sent, acked: pub.acked, delivered, expected });
      if (pub.allDone && delivered >= expected) break;
      const dead = target.casualties();
      if (dead.length) throw new Error(dead.join('; '));
      if (Date.now() - lastProgressAt > job.idleTimeoutS * 1000) {
        endedBy = 'idle-timeout';
        break;
      }
    }
    const procs = meter.stop();
    meter = null;
    const windowS = (Date.now() - started) / 1000;
    const publisher = await pub.close();
    pub = null;
    const subscribed = devices.subscribe;
    const d = await devices.close(publisher.sent);
    devices = null;
    const { histogram, ...devicesStats } = d;
    const expected = publisher.sent * job.devices;
    const durationMs = publisher.firstSendAt > 0 && d.lastReceiveAt > 0 ? d.lastReceiveAt - publisher.firstSendAt : 0;
    const pubEnd = job.qos === 1 ? publisher.lastAckAt : publisher.lastWriteAt;
    const pubCount = job.qos === 1 ? publisher.acked : publisher.sent;
    return {
      devices: job.devices,
      qos: job.qos,
      endedBy,
      published: publisher.sent,
      expected,
      delivered: d.distinct,
      missing: expected - d.distinct,
      duplicates: d.duplicates,
      deliveriesPerSec: durationMs > 0 ? (d.distinct * 1000) / durationMs : 0,
      publishedPerSec: pubEnd > publisher.firstSendAt ? (pubCount * 1000) / (pubEnd - publisher.firstSendAt) : 0,
      durationMs,
      subscribe: { ok: subscribed.ok, durationMs: subscribed.lastAt - subscribed.firstAt, suback: decode(subscribed.histogram) },
      devicesStats,
      publisher,
      e2e: decode(histogram),
      resources: resourceReport(procs, 'msg', d.distinct, windowS),
      logFindings: logFindings(target.dir),
    };
  } finally {
    meter?.stop();
    if (pub) await pub.terminate();
    if (devices) await devices.terminate();
  }
}
