// Scenario "uplink": devices publish, every upstream broker must receive
// everything. "mixed" (QoS 0/1/2 devices at once) and "broker-outage" (an
// upstream killed mid-stream) are this same stream with other settings and
// hooks; connect-storm and idle sit beside it with the same shape: take a
// started Target and a job, return a result.
import * as tls from 'node:tls';
import { deviceCredentials } from './auth-files';
import { LatencySummary, mergeEncoded, newHistogram, summarize } from './latency';
import { disconnect, filterFor, PROBE_ID, ProtocolLevel, publishLayout, Qos, topicFor } from './mqtt-wire';
import { connectLink, DeviceEndpoint, Transport } from './mqtt-ws';
import { PublisherPool, PublisherResult, QosMode } from './publisher';
import { ResourceReport, resourceReport, UsageMeter } from './proc-usage';
import { Receiver } from './receiver';
import { sleep } from './procs';
import { SinkCounter } from './sink';
import type { BrokerTally, UpstreamCounter } from './tally';
import type { Target } from './targets';

export interface UplinkJob {
  devices: number;
  /** Per device; the bitmap capacity when durationS bounds the run instead. */
  messages: number;
  payload: number;
  qos: QosMode;
  inflight: number;
  threads: number;
  topicPattern: string;
  idleTimeoutS: number;
  /** Distinguishes client ids between runs against long-lived brokers. */
  runTag: string;
  protocol?: ProtocolLevel;
  keepalive?: number;
  /** Total msg/s, paced per device; 0 = as fast as the window allows. */
  rate?: number;
  /** Unpaced time-bound run: devices stop sending after this many seconds. 0 = send `messages`. */
  durationS?: number;
  /** Connections per second while connecting the devices; 0 = as fast as possible. */
  ramp?: number;
  /** Handshakes in flight while connecting the devices. */
  concurrency?: number;
  /** How the devices (and the probe) connect to the target; tcp by default. */
  transport?: Transport;
  /** The devices (and the probe) give user names and passwords (deviceCredentials): the target is fanout-auth. */
  auth?: boolean;
}

export interface Progress {
  elapsedS: number;
  sent: number;
  acked: number;
  received: number[];
}

/** A run in progress, for hooks that act on it (broker-outage). */
export interface RunningUplink {
  target: Target;
  /** What each upstream received: a subscriber on a mosquitto, or the sink's own tally. */
  receivers: UpstreamCounter[];
  meter: UsageMeter | null;
  /** Wall-clock ms when the devices were told to start. */
  startedAt: number;
}

export interface UplinkHooks {
  onProgress?: (p: Progress) => void;
  /** Upstreams whose subscriber keeps a persistent session and reconnects (they will be killed). */
  survivors?: string[];
  /** After the probe proved the path, before the devices connect. */
  beforeStart?: (run: RunningUplink) => Promise<void>;
  /** Runs beside the stream from its start; the run does not end before it resolves. */
  during?: (run: RunningUplink) => Promise<void>;
}

export interface QosBreakdown {
  qos: Qos;
  devices: number;
  msgPerSec: number;
  deliveredPerSec: number;
  sent: number;
  acked: number;
  ack: LatencySummary;
  e2e: LatencySummary;
  brokers: { broker: string; expected: number; distinct: number; missing: number; duplicates: number }[];
}

export interface ScenarioResult {
  /** How the devices connected. */
  transport: Transport;
  /** What the upstreams were: sinks (sink.ts) or mosquittos. */
  upstream?: 'sink' | 'mosquitto';
  /** The target's WebSocket server (ws runs): uWebSockets.js, ws or mosquitto; null otherwise. */
  wsServer: string | null;
  /** tls runs: the protocol and cipher suite the devices' sessions use, e.g. `TLSv1.3 TLS_AES_256_GCM_SHA384`; null otherwise. */
  tlsSession: string | null;
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
  /** CPU per device message delivered (mean distinct over upstreams) and peak RSS, from first publish to the end. */
  resources: ResourceReport;
  /** Per QoS, when devices published at different QoS (mixed). */
  byQos?: QosBreakdown[];
  /** mqtt-fanout with its HTTP port: the longest GC pause of each shard and writer thread since start, ms (/metrics). */
  gcPauseMaxMs?: Record<string, number> | null;
}

/** The threads' samples reach /metrics once a second: wait that long for the last one. */
const VITALS_EVERY_MS = 1100;

/** fanout_thread_gc_pause_max_seconds of the shard and writer threads, ms by thread; null if unreadable. */
export async function readGcPauses(httpPort: number): Promise<Record<string, number> | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
    const text = await res.text();
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/^fanout_thread_gc_pause_max_seconds\{thread="((?:shard|writer)-[^"]*)"\} (\S+)$/gm)) out[m[1]] = Number(m[2]) * 1000;
    return Object.keys(out).length > 0 ? out : null;
  } catch {
    return null;
  }
}

/**
 * Publishes a probe through the target until every receiver saw it. This proves
 * the whole path (device listener, forwarding, each upstream, each subscription)
 * is live before the clock starts; a bridge still connecting upstream would
 * otherwise drop the first messages and look lossy.
 */
async function probe(endpoint: DeviceEndpoint, job: UplinkJob, receivers: UpstreamCounter[], timeoutMs = 20_000): Promise<string | null> {
  const socket = await connectLink(endpoint, `${job.runTag}probe`, () => undefined, job.auth ? deviceCredentials('probe') : {});
  socket.on('error', () => undefined);
  // What the devices' TLS sessions are (they all make the same offer): protocol and cipher suite.
  const session = socket instanceof tls.TLSSocket ? `${socket.getProtocol()} ${socket.getCipher().standardName ?? socket.getCipher().name}` : null;
  const { template } = publishLayout(topicFor(job.topicPattern, 'probe'), 0, job.payload, PROBE_ID);
  const deadline = Date.now() + timeoutMs;
  try {
    while (!receivers.every((r) => r.probeSeen)) {
      if (Date.now() > deadline) {
        const missing = receivers.filter((r) => !r.probeSeen).map((r) => r.broker);
        throw new Error(`probe did not reach ${missing.join(', ')} within ${timeoutMs} ms`);
      }
      socket.write(template);
      await sleep(100);
    }
  } finally {
    void disconnect(socket);
  }
  return session;
}

export async function runUplink(target: Target, job: UplinkJob, hooks: UplinkHooks | ((p: Progress) => void) = {}): Promise<ScenarioResult> {
  const h: UplinkHooks = typeof hooks === 'function' ? { onProgress: hooks } : hooks;
  const groups = job.qos === 'mixed' ? 3 : 1;
  const timeBound = (job.durationS ?? 0) > 0;
  const receivers: UpstreamCounter[] = [];
  let pool: PublisherPool | null = null;
  let meter: UsageMeter | null = null;
  try {
    for (const up of target.upstreams) {
      const sink = target.sink(up.name);
      if (sink !== null) {
        receivers.push(await SinkCounter.attach(up.name, sink, { devices: job.devices, messages: job.messages, groups }));
        continue;
      }
      receivers.push(
        await Receiver.connect({
          broker: up.name,
          port: up.port,
          filter: filterFor(job.topicPattern),
          devices: job.devices,
          messages: job.messages,
          clientId: `${job.runTag}recv-${up.name}`,
          groups,
          survive: h.survivors?.includes(up.name) ?? false,
        }),
      );
    }
    const transport = job.transport ?? 'tcp';
    const endpoint = target.endpoint(transport);
    // Over the devices' transport: a WebSocket listener that does not forward must fail here, not look lossy.
    const tlsSession = await probe(endpoint, job, receivers);
    const running: RunningUplink = { target, receivers, meter: null, startedAt: 0 };
    await h.beforeStart?.(running);
    pool = await PublisherPool.connect({
      host: endpoint.host,
      port: endpoint.port,
      transport,
      wsPath: endpoint.path,
      ca: endpoint.ca,
      auth: job.auth ?? false,
      devices: job.devices,
      messages: job.messages,
      payload: job.payload,
      qos: job.qos,
      inflight: job.inflight,
      topicPattern: job.topicPattern,
      threads: job.threads,
      clientPrefix: `${job.runTag}dev-`,
      protocol: job.protocol ?? 4,
      keepalive: job.keepalive ?? 0,
      rate: job.rate ?? 0,
      durationMs: (job.durationS ?? 0) * 1000,
      ramp: job.ramp ?? 0,
      concurrency: job.concurrency ?? 128,
    });
    meter = running.meter = new UsageMeter(target.watched()).start();
    const started = Date.now();
    running.startedAt = performance.timeOrigin + performance.now();
    pool.begin();
    let duringDone = h.during === undefined;
    let duringError: unknown = null;
    h.during?.(running).then(
      () => (duringDone = true),
      (err: unknown) => {
        duringError = err ?? new Error('broker-outage hook failed');
        duringDone = true;
      },
    );
    const expectedTotal = (): number => (timeBound ? (pool?.allDone ? pool.finalSent : Infinity) : job.devices * job.messages);
    let endedBy: ScenarioResult['endedBy'] = 'complete';
    let lastTotal = -1;
    let lastProgressAt = Date.now();
    for (;;) {
      await sleep(100);
      if (duringError) throw duringError;
      const total = pool.sent + pool.acked + receivers.reduce((n, r) => n + r.received + r.foreign, 0);
      if (total !== lastTotal) {
        lastTotal = total;
        lastProgressAt = Date.now();
      }
      h.onProgress?.({
        elapsedS: (Date.now() - started) / 1000,
        sent: pool.sent,
        acked: pool.acked,
        received: receivers.map((r) => r.distinct),
      });
      if (duringDone && pool.allDone && receivers.every((r) => r.distinct >= expectedTotal())) break;
      const dead = target.casualties();
      if (dead.length) throw new Error(dead.join('; '));
      const broken = receivers.find((r) => r.error !== null);
      if (broken) {
        // A dead broker usually shows as a closed socket first; give its exit event a moment to name the cause.
        await sleep(300);
        throw new Error([`receiver ${broken.broker}: ${broken.error}`, ...target.casualties()].join('; '));
      }
      if (duringDone && Date.now() - lastProgressAt > job.idleTimeoutS * 1000) {
        endedBy = 'idle-timeout';
        break;
      }
    }
    const procs = meter.stop();
    const windowS = (Date.now() - started) / 1000;
    meter = null;
    const publisher = await pool.close();
    pool = null;
    const expectedFor = (qos: Qos): number => {
      const q = publisher.byQos.find((x) => x.qos === qos);
      if (!q) return 0;
      return timeBound ? q.sent : q.devices * job.messages;
    };
    const expected = groups === 3 ? [expectedFor(0), expectedFor(1), expectedFor(2)] : [publisher.expected];
    const brokers = await Promise.all(receivers.map((r) => r.tally(expected)));
    const e2eHist = newHistogram();
    for (const b of brokers) if (b.e2e.hdr) mergeEncoded(e2eHist, b.e2e.hdr);
    const e2e = summarize(e2eHist);
    e2eHist.destroy();
    const deliveredPerSec = throughput(0, 0, publisher.firstSendAt, 0, brokers).msgPerSec;
    // A mixed run's headline is everything delivered, whatever its QoS.
    const { msgPerSec, durationMs } =
      job.qos === 'mixed'
        ? throughput(0, 0, publisher.firstSendAt, 0, brokers)
        : throughput(job.qos, publisher.acked, publisher.firstSendAt, publisher.lastAckAt, brokers);
    const delivered = brokers.reduce((n, b) => n + b.distinct, 0) / Math.max(1, brokers.length);
    const resources = resourceReport(procs, 'msg', delivered, windowS);
    const wsServer = transport === 'ws' ? target.wsServer : null;
    const result: ScenarioResult = { upstream: target.upstreamKind, transport, wsServer, tlsSession, msgPerSec, deliveredPerSec, endedBy, durationMs, publisher, brokers, e2e, resources };
    if (job.qos === 'mixed') result.byQos = publisher.byQos.map((q) => breakdown(q, brokers));
    if (target.httpPort !== null) {
      await sleep(VITALS_EVERY_MS);
      result.gcPauseMaxMs = await readGcPauses(target.httpPort);
    }
    return result;
  } finally {
    meter?.stop();
    if (pool) await pool.terminate();
    await Promise.all(receivers.map((r) => r.close()));
    for (const r of receivers) r.destroy();
  }
}

function breakdown(q: PublisherResult['byQos'][number], brokers: BrokerTally[]): QosBreakdown {
  const per = brokers.map((b) => ({ broker: b.broker, group: b.groups?.find((x) => x.group === q.qos) }));
  // The brokers' histograms of this QoS, merged from their encoded form.
  const hist = newHistogram();
  for (const p of per) if (p.group?.e2e.hdr) mergeEncoded(hist, p.group.e2e.hdr);
  const e2e = summarize(hist);
  hist.destroy();
  const rates = per.map((p) => ({ distinct: p.group?.distinct ?? 0, lastReceiveAt: p.group?.lastReceiveAt ?? 0 }));
  return {
    qos: q.qos,
    devices: q.devices,
    msgPerSec: throughput(q.qos, q.acked, q.firstSendAt, q.lastAckAt, rates).msgPerSec,
    deliveredPerSec: throughput(0, 0, q.firstSendAt, 0, rates).msgPerSec,
    sent: q.sent,
    acked: q.acked,
    ack: q.ack,
    e2e,
    brokers: per.map(({ broker, group }) => ({
      broker,
      expected: group?.expected ?? 0,
      distinct: group?.distinct ?? 0,
      missing: group?.missing ?? 0,
      duplicates: group?.duplicates ?? 0,
    })),
  };
}

/**
 * QoS 1/2: device-side acknowledgements over first send to last ack, i.e. what
 * a device experiences. QoS 0 has no acks, so the slowest broker's deliveries
 * over first send to its last delivery.
 */
function throughput(
  qos: Qos,
  acked: number,
  firstSendAt: number,
  lastAckAt: number,
  brokers: { distinct: number; lastReceiveAt: number }[],
): { msgPerSec: number; durationMs: number } {
  if (firstSendAt === 0) return { msgPerSec: 0, durationMs: 0 };
  if (qos > 0) {
    const durationMs = lastAckAt - firstSendAt;
    return { msgPerSec: durationMs > 0 ? (acked * 1000) / durationMs : 0, durationMs };
  }
  let worst = { msgPerSec: Infinity, durationMs: 0 };
  for (const b of brokers) {
    const durationMs = b.lastReceiveAt > 0 ? b.lastReceiveAt - firstSendAt : 0;
    const rate = durationMs > 0 ? (b.distinct * 1000) / durationMs : 0;
    if (rate < worst.msgPerSec) worst = { msgPerSec: rate, durationMs };
  }
  return Number.isFinite(worst.msgPerSec) ? worst : { msgPerSec: 0, durationMs: 0 };
}
