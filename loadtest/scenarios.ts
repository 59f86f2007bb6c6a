// Scenario registry: how the options become a job for each scenario, which
// target set-up it needs, how one run is summed up on the terminal and which
// report renders its records. cli.ts only loops rounds and targets.
import { AuthResult, runAuth } from './auth';
import { PerDeviceResult, runPerDevice } from './per-device';
import { perDeviceRatios, renderPerDevice, summarizePerDevice } from './report-per-device';
import { runBrokerOutage, OutageResult, VICTIM } from './broker-outage';
import { runConnectStorm, StormResult, ConnectionJob } from './connect-storm';
import { DownlinkJob, DownlinkResult, runDownlink } from './downlink';
import { int, fixed } from './format';
import { HttpJob, HttpResult, runHttp } from './http';
import { runIdle, IdleResult } from './idle';
import type { Qos } from './mqtt-wire';
import type { Transport } from './mqtt-ws';
import { MAX_HTTP_REQUESTS, Options, ScenarioName } from './options';
import type { ProgressLine, RunRecord } from './output';
import { pairedRatios, renderReport, ratios, summarize } from './report';
import { authRatios, renderAuth, summarizeAuth } from './report-auth';
import { renderHttp, summarizeHttp } from './report-http';
import { renderIdle, renderStorm } from './report-connections';
import { downlinkRatios, renderDownlink, summarizeDownlink } from './report-downlink';
import { renderMixed } from './report-mixed';
import { renderOutage } from './report-outage';
import { isFanout, Target, TargetKind, UpstreamKind } from './targets';
import { Progress, runUplink, ScenarioResult, UplinkJob } from './uplink';

/** Connection attempts without CONNACK after this long count as timeouts. */
const CONNECT_TIMEOUT_MS = 10_000;

export interface RunContext {
  runTag: string;
  label: string;
  progress: ProgressLine;
  /** How the devices connect (uplink --transport); tcp everywhere else. */
  transport: Transport;
}

export interface TargetSetup {
  /** QoS the bridge forwards at. */
  qos: Qos;
  /** The upstream that will be killed (broker-outage). */
  recoverable: string | null;
  /** Start the target's WebSocket listener for devices. */
  ws?: boolean;
  /** Start mqtt-fanout's HTTP listener. */
  http?: boolean;
  /** Start the target's TLS listener for devices. */
  tls?: boolean;
  /** fanout-auth's users and the topics its ACL lets them publish on. */
  auth?: { users: number; topicPattern: string } | null;
  /** What the upstreams are (--upstream); mosquitto when absent. */
  upstream?: UpstreamKind;
}

export interface ScenarioDef<R> {
  /**
   * Run once per entry per round, target and transport: the QoS of uplink runs,
   * of http's POST /publish runs (null: its GET /metrics run), [null] otherwise.
   */
  variants(opts: Options): (Qos | null)[];
  targetSetup(opts: Options, qos: Qos | null, kind: TargetKind): TargetSetup;
  run(target: Target, opts: Options, qos: Qos | null, ctx: RunContext): Promise<R>;
  /** Keep the logs of such a run: something was lost or failed. */
  suspicious(r: R): boolean;
  /** One line per finished run on a terminal. */
  line(r: R): string;
  render(records: RunRecord<R>[]): string;
  /** Aggregates for the JSON file. */
  summary(records: RunRecord<R>[]): unknown;
}

/** Upstream mosquittos every target forwards to. */
export const UPSTREAM_COUNT = 2;

export function uplinkJob(opts: Options, qos: UplinkJob['qos'], runTag: string): UplinkJob {
  return {
    devices: opts.devices,
    messages: opts.messages,
    payload: opts.payload,
    qos,
    inflight: opts.inflight,
    threads: opts.threads,
    topicPattern: opts.topic,
    idleTimeoutS: opts.idleTimeoutS,
    runTag,
    protocol: opts.protocol,
    keepalive: opts.keepalive,
    rate: opts.rate,
    durationS: opts.timeBound ? (opts.durationS ?? 0) : 0,
    ramp: opts.ramp,
    concurrency: opts.concurrency,
    transport: 'tcp',
  };
}

export function downlinkJob(opts: Options, qos: DownlinkJob['qos'], runTag: string): DownlinkJob {
  return {
    devices: opts.devices,
    messages: opts.messages,
    payload: opts.payload,
    qos,
    inflight: opts.inflight,
    rate: opts.rate,
    threads: opts.threads,
    idleTimeoutS: opts.idleTimeoutS,
    runTag,
    protocol: opts.protocol,
    keepalive: opts.keepalive,
    ramp: opts.ramp,
    concurrency: opts.concurrency,
  };
}

export function connectionJob(opts: Options, runTag: string): ConnectionJob {
  return {
    connections: opts.connections,
    threads: opts.threads,
    protocol: opts.protocol,
    keepalive: opts.keepalive,
    ramp: opts.ramp,
    concurrency: opts.concurrency,
    timeoutMs: CONNECT_TIMEOUT_MS,
    runTag,
  };
}

function streamProgress(ctx: RunContext): (p: Progress) => void {
  return (p) => {
    const recv = p.received.map((n, i) => `b${i + 1} ${int(n)}`).join(' ');
    ctx.progress.update(`${ctx.label} ${p.elapsedS.toFixed(1)}s sent ${int(p.sent)} acked ${int(p.acked)} recv ${recv}`);
  };
}

const missingOf = (r: ScenarioResult): string => r.brokers.map((b) => `${b.broker}=${b.missing}`).join(' ');
const streamSuspicious = (r: ScenarioResult): boolean =>
  r.endedBy !== 'complete' || r.publisher.errors.length > 0 || r.brokers.some((b) => b.missing > 0);

const uplink: ScenarioDef<ScenarioResult> = {
  variants: (opts) => opts.qos,
  // With several transports, every run's target has all their listeners, the unused ones idle: the runs differ only in the devices' transport.
  // mqtt-fanout with its HTTP listener: the run reads its threads' GC pauses from /metrics at the end.
  targetSetup: (opts, qos, kind) => ({
    qos: qos ?? 1,
    recoverable: null,
    ws: opts.transports.includes('ws'),
    tls: opts.transports.includes('tls'),
    http: isFanout(kind),
    upstream: opts.upstream,
  }),
  run: (target, opts, qos, ctx) => runUplink(target, { ...uplinkJob(opts, qos ?? 1, ctx.runTag), transport: ctx.transport }, streamProgress(ctx)),
  suspicious: streamSuspicious,
  line: (r) => `${int(r.msgPerSec)} msg/s, missing ${missingOf(r)}, cpu ${fixed(r.resources.targetCpuUs, 1)} µs/msg`,
  render: renderReport,
  summary: (records) => {
    const medians = summarize(records);
    return { medians, ratios: ratios(medians), overTcpByRound: pairedRatios(records) };
  },
};

const mixed: ScenarioDef<ScenarioResult> = {
  variants: () => [null],
  // The bridge must forward QoS 2 as QoS 2: its topic QoS caps what passes.
  targetSetup: (opts) => ({ qos: 2, recoverable: null, upstream: opts.upstream }),
  run: (target, opts, _qos, ctx) => runUplink(target, uplinkJob(opts, 'mixed', ctx.runTag), streamProgress(ctx)),
  suspicious: streamSuspicious,
  line: (r) => (r.byQos ?? []).map((q) => `qos${q.qos} ${int(q.msgPerSec)} msg/s`).join(', ') + `, missing ${missingOf(r)}`,
  render: renderMixed,
  summary: (records) => ({ medians: summarize(records) }),
};

const brokerOutage: ScenarioDef<OutageResult> = {
  variants: () => [1],
  targetSetup: () => ({ qos: 1, recoverable: VICTIM }),
  run: (target, opts, _qos, ctx) =>
    runBrokerOutage(target, { ...uplinkJob(opts, 1, ctx.runTag), killAtS: opts.killAtS, downForS: opts.downForS }, streamProgress(ctx)),
  suspicious: streamSuspicious,
  line: (r) => `missing ${missingOf(r)}, recovery ${fixed(r.outage.recoveryMs / 1000, 3)} s`,
  render: renderOutage,
  summary: (records) => ({ medians: summarize(records) }),
};

const connectStorm: ScenarioDef<StormResult> = {
  variants: () => [null],
  targetSetup: () => ({ qos: 1, recoverable: null }),
  run: (target, opts, _qos, ctx) =>
    runConnectStorm(target, { ...connectionJob(opts, ctx.runTag), steps: opts.steps }, (text) => ctx.progress.update(`${ctx.label} ${text}`)),
  suspicious: (r) => r.ok < r.connections || r.hold.dropped > 0,
  line: (r) => `${int(r.ok)}/${int(r.connections)} connected, ${int(r.connPerSec)} conn/s, ${fixed(r.timeToAllMs / 1000, 2)} s`,
  render: renderStorm,
  summary: () => null,
};

const idle: ScenarioDef<IdleResult> = {
  variants: () => [null],
  targetSetup: () => ({ qos: 1, recoverable: null }),
  run: (target, opts, _qos, ctx) =>
    runIdle(target, { ...connectionJob(opts, ctx.runTag), holdS: opts.holdS }, (text) => ctx.progress.write(`${ctx.label} ${text}`)),
  suspicious: (r) => r.connected.ok < r.connections || r.hold.dropped > 0,
  line: (r) => `${int(r.connected.ok)} held, ${fixed(r.rssPerConnKB, 2)} KB/conn`,
  render: renderIdle,
  summary: () => null,
};

const downlink: ScenarioDef<DownlinkResult> = {
  variants: (opts) => opts.qos,
  targetSetup: (_opts, qos) => ({ qos: qos ?? 1, recoverable: null }),
  run: (target, opts, qos, ctx) =>
    runDownlink(target, downlinkJob(opts, qos === 0 ? 0 : 1, ctx.runTag), (p) =>
      ctx.progress.update(`${ctx.label} ${p.elapsedS.toFixed(1)}s published ${int(p.published)} acked ${int(p.acked)} delivered ${int(p.delivered)}/${int(p.expected)}`),
    ),
  suspicious: (r) => r.endedBy !== 'complete' || r.missing > 0 || r.duplicates > 0 || r.devicesStats.dropped > 0 || r.logFindings.length > 0,
  line: (r) => `${int(r.deliveriesPerSec)} deliv/s, missing ${int(r.missing)}, duplicates ${int(r.duplicates)}, cpu ${fixed(r.resources.targetCpuUs, 2)} µs/deliv`,
  render: renderDownlink,
  summary: (records) => {
    const medians = summarizeDownlink(records);
    return { medians, ratios: downlinkRatios(medians) };
  },
};

export function httpJob(opts: Options, endpoint: HttpJob['endpoint'], qos: Qos, runTag: string): HttpJob {
  return {
    endpoint,
    qos,
    connections: opts.connections,
    durationS: opts.amount === null ? (opts.durationS ?? 10) : null,
    amount: opts.amount,
    pipelining: opts.pipelining,
    warmupS: opts.warmupS,
    payload: opts.payload,
    idleTimeoutS: opts.idleTimeoutS,
    runTag,
    // Room for every request of an --amount run, with slack for the few a reset connection re-sends.
    capacity: opts.amount === null ? MAX_HTTP_REQUESTS : Math.min(MAX_HTTP_REQUESTS, opts.amount * 2 + 1024),
  };
}

const http: ScenarioDef<HttpResult> = {
  variants: (opts) => [...opts.qos, ...(opts.endpoints.includes('metrics') ? [null] : [])],
  targetSetup: () => ({ qos: 1, recoverable: null, http: true }),
  run: (target, opts, qos, ctx) =>
    runHttp(target, httpJob(opts, qos === null ? 'metrics' : 'publish', qos ?? 0, ctx.runTag), (text) => ctx.progress.update(`${ctx.label} ${text}`)),
  suspicious: (r) =>
    r.non2xx > 0 || r.errors > 0 || (r.delivery !== null && (r.delivery.endedBy !== 'complete' || r.delivery.unmatched > 0 || r.delivery.brokers.some((b) => b.missing > 0 || b.duplicates > 0))),
  line: (r) =>
    `${int(r.reqPerSec)} req/s, non-2xx ${int(r.non2xx)}` +
    (r.delivery ? `, missing ${r.delivery.brokers.map((b) => `${b.broker}=${b.missing}`).join(' ')}` : '') +
    `, cpu ${fixed(r.resources.targetCpuUs, 1)} µs/req`,
  render: renderHttp,
  summary: (records) => ({ medians: summarizeHttp(records) }),
};

const auth: ScenarioDef<AuthResult> = {
  variants: () => [1],
  // A user for every connection of the storm and every device of the stream (the same numbers).
  targetSetup: (opts, _qos, kind) => ({
    qos: 1,
    recoverable: null,
    auth: kind === 'fanout-auth' ? { users: Math.max(opts.devices, opts.connections), topicPattern: opts.topic } : null,
  }),
  run: (target, opts, _qos, ctx) =>
    runAuth(target, { connection: connectionJob(opts, ctx.runTag), uplink: uplinkJob(opts, 1, ctx.runTag) }, (text) => ctx.progress.update(`${ctx.label} ${text}`)),
  suspicious: (r) => r.storm.ok < r.storm.connections || streamSuspicious(r.uplink),
  line: (r) =>
    `${int(r.storm.ok)}/${int(r.storm.connections)} connected at ${int(r.storm.connPerSec)} conn/s (${fixed(r.storm.resources.targetCpuUs, 1)} µs/conn), ` +
    `${int(r.uplink.msgPerSec)} msg/s (${fixed(r.uplink.resources.targetCpuUs, 1)} µs/msg), missing ${missingOf(r.uplink)}`,
  render: renderAuth,
  summary: (records) => ({ medians: summarizeAuth(records), ratios: authRatios(records) }),
};

const perDevice: ScenarioDef<PerDeviceResult> = {
  variants: () => [1],
  targetSetup: () => ({ qos: 1, recoverable: null }),
  run: (target, opts, _qos, ctx) =>
    runPerDevice(target, { connection: connectionJob(opts, ctx.runTag), uplink: uplinkJob(opts, 1, ctx.runTag) }, (text) => ctx.progress.update(`${ctx.label} ${text}`)),
  suspicious: (r) => r.storm.ok < r.storm.connections || streamSuspicious(r.uplink),
  line: (r) =>
    `${int(r.storm.ok)}/${int(r.storm.connections)} connected at ${int(r.storm.connPerSec)} conn/s (${fixed(r.storm.resources.targetCpuUs, 1)} µs/conn, ` +
    `${fixed(r.rssPerDeviceKB, 1)} KB/device), ${int(r.uplink.msgPerSec)} msg/s (${fixed(r.uplink.resources.targetCpuUs, 1)} µs/msg), missing ${missingOf(r.uplink)}`,
  render: renderPerDevice,
  summary: (records) => ({ medians: summarizePerDevice(records), ratios: perDeviceRatios(records) }),
};

function erase<R>(def: ScenarioDef<R>): ScenarioDef<unknown> {
  return def as unknown as ScenarioDef<unknown>;
}

export const SCENARIO_DEFS: Record<ScenarioName, ScenarioDef<unknown>> = {
  uplink: erase(uplink),
  mixed: erase(mixed),
  'broker-outage': erase(brokerOutage),
  'connect-storm': erase(connectStorm),
  idle: erase(idle),
  downlink: erase(downlink),
  http: erase(http),
  auth: erase(auth),
  'per-device': erase(perDevice),
};

