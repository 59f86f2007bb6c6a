// Scenario "uplink": devices publish, every upstream broker must receive
// everything. Other scenarios (downlink, connect-storm, idle, broker-outage)
// are meant to sit beside this file with the same shape: take a started
// Target and a job, return a ScenarioResult.
import { LatencySummary, newHistogram, summarize } from './latency';
import { connectRaw, filterFor, PROBE_ID, publishLayout, Qos, topicFor } from './mqtt-wire';
import { PublisherPool, PublisherResult } from './publisher';
import { BrokerTally, Receiver } from './receiver';
import { sleep } from './procs';
import type { Target } from './targets';

export interface UplinkJob {
  devices: number;
  messages: number;
  payload: number;
  qos: Qos;
  inflight: number;
  threads: number;
  topicPattern: string;
  idleTimeoutS: number;
  /** Distinguishes client ids between runs against long-lived brokers. */
  runTag: string;
}

export interface Progress {
  elapsedS: number;
  sent: number;
  acked: number;
  received: number[];
}

export interface ScenarioResult {
  /** The headline figure; see throughput() for its definition per QoS. */
  msgPerSec: number;
  /**
   * Slowest broker's distinct deliveries over first send to its last delivery,
   * at every QoS: a bridge that acks devices before forwarding can show a high
   * msg/s while its upstreams fall behind.
   */
  deliveredPerSec: number;
  endedBy: 'complete' | 'idle-timeout';
  /** From the first PUBLISH to the event that ends the measurement, ms. */
  durationMs: number;
  publisher: PublisherResult;
  brokers: BrokerTally[];
  /** End-to-end latency over every broker's deliveries. */
  e2e: LatencySummary;
}

/**
 * Publishes a probe through the target until every receiver saw it. This proves
 * the whole path (device listener, forwarding, each upstream, each subscription)
 * is live before the clock starts; a bridge still connecting upstream would
 * otherwise drop the first messages and look lossy.
 */
async function probe(target: Target, job: UplinkJob, receivers: Receiver[], timeoutMs = 20_000): Promise<void> {
  const socket = await connectRaw('127.0.0.1', target.devicePort, `${job.runTag}probe`, () => undefined);
  socket.on('error', () => undefined);
  const { template } = publishLayout(topicFor(job.topicPattern, 'probe'), 0, job.payload, PROBE_ID);
  const deadline = Date.now() + timeoutMs;
  try {
    while (!receivers.every((r) => r.probeSeen)) {
      if (Date.now() > deadline) {
        const missing = receivers.filter((r) => !r.probeSeen).map((r) => r.opts.broker);
        throw new Error(`probe did not reach ${missing.join(', ')} within ${timeoutMs} ms`);
      }
      socket.write(template);
      await sleep(100);
    }
  } finally {
    socket.end();
  }
}

export async function runUplink(target: Target, job: UplinkJob, onProgress?: (p: Progress) => void): Promise<ScenarioResult> {
  const receivers: Receiver[] = [];
  let pool: PublisherPool | null = null;
  try {
    for (const up of target.upstreams) {
      receivers.push(
        await Receiver.connect({
          broker: up.name,
          port: up.port,
          filter: filterFor(job.topicPattern),
          devices: job.devices,
          messages: job.messages,
          clientId: `${job.runTag}recv-${up.name}`,
        }),
      );
    }
    await probe(target, job, receivers);
    pool = await PublisherPool.connect({
      host: '127.0.0.1',
      port: target.devicePort,
      devices: job.devices,
      messages: job.messages,
      payload: job.payload,
      qos: job.qos,
      inflight: job.inflight,
      topicPattern: job.topicPattern,
      threads: job.threads,
      clientPrefix: `${job.runTag}dev-`,
    });
    const started = Date.now();
    pool.begin();
    let endedBy: ScenarioResult['endedBy'] = 'complete';
    let lastTotal = -1;
    let lastProgressAt = Date.now();
    for (;;) {
      await sleep(100);
      const total = pool.sent + pool.acked + receivers.reduce((n, r) => n + r.received + r.foreign, 0);
      if (total !== lastTotal) {
        lastTotal = total;
        lastProgressAt = Date.now();
      }
      onProgress?.({
        elapsedS: (Date.now() - started) / 1000,
        sent: pool.sent,
        acked: pool.acked,
        received: receivers.map((r) => r.distinct),
      });
      if (pool.allDone && receivers.every((r) => r.complete)) break;
      const dead = target.casualties();
      if (dead.length) throw new Error(dead.join('; '));
      const broken = receivers.find((r) => r.error !== null);
      if (broken) {
        // A dead broker usually shows as a closed socket first; give its exit event a moment to name the cause.
        await sleep(300);
        throw new Error([`receiver ${broken.opts.broker}: ${broken.error}`, ...target.casualties()].join('; '));
      }
      if (Date.now() - lastProgressAt > job.idleTimeoutS * 1000) {
        endedBy = 'idle-timeout';
        break;
      }
    }
    const publisher = await pool.close();
    pool = null;
    const brokers = receivers.map((r) => r.tally());
    const e2eHist = newHistogram();
    for (const r of receivers) e2eHist.add(r.hist);
    const e2e = summarize(e2eHist);
    e2eHist.destroy();
    const { msgPerSec, durationMs } = throughput(job.qos, publisher, brokers);
    const deliveredPerSec = throughput(0, publisher, brokers).msgPerSec;
    return { msgPerSec, deliveredPerSec, endedBy, durationMs, publisher, brokers, e2e };
  } finally {
    if (pool) await pool.terminate();
    await Promise.all(receivers.map((r) => r.close()));
    for (const r of receivers) r.hist.destroy();
  }
}

/**
 * QoS 1/2: device-side acknowledgements over first send to last ack, i.e. what
 * a device experiences. QoS 0 has no acks, so the slowest broker's deliveries
 * over first send to its last delivery.
 */
function throughput(qos: Qos, pub: PublisherResult, brokers: BrokerTally[]): { msgPerSec: number; durationMs: number } {
  if (pub.firstSendAt === 0) return { msgPerSec: 0, durationMs: 0 };
  if (qos > 0) {
    const durationMs = pub.lastAckAt - pub.firstSendAt;
    return { msgPerSec: durationMs > 0 ? (pub.acked * 1000) / durationMs : 0, durationMs };
  }
  let worst = { msgPerSec: Infinity, durationMs: 0 };
  for (const b of brokers) {
    const durationMs = b.lastReceiveAt > 0 ? b.lastReceiveAt - pub.firstSendAt : 0;
    const rate = durationMs > 0 ? (b.distinct * 1000) / durationMs : 0;
    if (rate < worst.msgPerSec) worst = { msgPerSec: rate, durationMs };
  }
  return Number.isFinite(worst.msgPerSec) ? worst : { msgPerSec: 0, durationMs: 0 };
}
