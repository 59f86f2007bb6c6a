// Report of the uplink scenario (and the shared part of mixed and
// broker-outage): per run, then medians over rounds and the fanout/mosquitto
// ratio (per transport, and WebSocket over TCP per target when both ran), in
// three tables: throughput and loss, latency, resources.
import * as os from 'node:os';
import {
  int,
  latencyCells,
  latencyHead,
  machineLine,
  median,
  medianLatency,
  medianResources,

  perBroker,
  RESOURCE_LEGEND,
  resourceCells,
  resourceHead,
  table,
} from './format';
import type { LatencySummary } from './latency';
import type { Transport } from './mqtt-ws';
import type { RunRecord } from './output';
import type { ResourceReport } from './proc-usage';
import type { TargetKind } from './targets';
import type { ScenarioResult } from './uplink';
import { goalLines, uplinkGoals } from './goals';
import { sweepLines } from './report-sweep';

export interface UplinkSummary {
  target: TargetKind;
  transport: Transport;
  qos: number | null;
  shards: number | null;
  /** Offered msg/s (0: as fast as it goes). */
  rate: number;
  runs: number;
  failed: number;
  msgPerSec: number;
  deliveredPerSec: number;
  ack: LatencySummary | null;
  e2e: LatencySummary | null;
  resources: ResourceReport | null;
  missing: Record<string, number>;
  duplicates: Record<string, number>;
  /** Largest GC pause on a shard or writer thread (median over runs); NaN where not read (the bridge). */
  gcMaxMs: number;
  /** What the upstreams were. */
  upstream: 'sink' | 'mosquitto';
}

const qosCell = (q: number | null): string => (q === null ? 'mix' : String(q));
const shardCell = (s: number | null): string => (s === null ? '-' : String(s));

export function summarize(records: RunRecord<ScenarioResult>[]): UplinkSummary[] {
  const out: UplinkSummary[] = [];
  const keyOf = (r: RunRecord<ScenarioResult>): string => `${r.rate ?? 0}|${r.target}|${r.transport}|${r.qos}|${r.shards}`;
  const keys = [...new Set(records.map(keyOf))];
  for (const key of keys) {
    const group = records.filter((r) => keyOf(r) === key);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    const brokers = [...new Set(ok.flatMap((r) => r.brokers.map((b) => b.broker)))];
    const byBroker = (f: 'missing' | 'duplicates'): Record<string, number> =>
      Object.fromEntries(brokers.map((b) => [b, median(ok.map((r) => r.brokers.find((x) => x.broker === b)?.[f] ?? NaN))]));
    const qos = group[0].qos;
    out.push({
      target: group[0].target,
      transport: group[0].transport,
      qos,
      shards: group[0].shards,
      rate: group[0].rate ?? 0,
      runs: group.length,
      failed: group.length - ok.length,
      msgPerSec: median(ok.map((r) => r.msgPerSec)),
      deliveredPerSec: median(ok.map((r) => r.deliveredPerSec)),
      ack: qos !== 0 ? medianLatency(ok.map((r) => r.publisher.ack)) : null,
      e2e: medianLatency(ok.map((r) => r.e2e)),
      resources: medianResources(ok.map((r) => r.resources)),
      missing: byBroker('missing'),
      duplicates: byBroker('duplicates'),
      gcMaxMs: median(ok.map((r) => (r.gcPauseMaxMs ? Math.max(...Object.values(r.gcPauseMaxMs)) : NaN))),
      upstream: ok[0]?.upstream ?? 'mosquitto',
    });
  }
  return out;
}

const cpuOf = (s: UplinkSummary): number => s.resources?.targetCpuUs ?? NaN;

/**
 * From the medians. fanout over mosquitto per QoS: over TCP `qos1` (msg/s) and
 * `qos1 deliv` (deliv/s), over WebSocket `ws qos1` and `ws qos1 deliv` (over TLS
 * `tls qos1`, ...). WebSocket or TLS over TCP per target: `fanout ws/tcp qos1`,
 * `... deliv` and `... cpu` (CPU per message).
 */
export function ratios(summaries: UplinkSummary[]): Record<string, number> {
  const out: Record<string, number> = {};
  const put = (key: string, a: number, b: number): void => {
    if (b > 0 && Number.isFinite(a)) out[key] = a / b;
  };
  // With several shard counts (--shards 1,2) the one with the most shards stands for mqtt-fanout.
  const most = Math.max(0, ...summaries.map((x) => x.shards ?? 0));
  for (const s of summaries.filter((x) => x.target === 'fanout' && x.shards === most)) {
    const base = summaries.find((x) => x.target === 'mosquitto' && x.transport === s.transport && x.qos === s.qos && x.rate === s.rate);
    const key = `${s.rate > 0 ? `rate ${s.rate} ` : ''}${s.transport === 'tcp' ? '' : `${s.transport} `}qos${qosCell(s.qos)}`;
    if (!base) continue;
    put(key, s.msgPerSec, base.msgPerSec);
    put(`${key} deliv`, s.deliveredPerSec, base.deliveredPerSec);
  }
  for (const s of summaries.filter((x) => x.transport !== 'tcp')) {
    const base = summaries.find((x) => x.target === s.target && x.transport === 'tcp' && x.qos === s.qos && x.shards === s.shards && x.rate === s.rate);
    const key = `${s.target} ${s.transport}/tcp qos${qosCell(s.qos)}`;
    if (!base) continue;
    put(key, s.msgPerSec, base.msgPerSec);
    put(`${key} deliv`, s.deliveredPerSec, base.deliveredPerSec);
    put(`${key} cpu`, cpuOf(s), cpuOf(base));
  }
  return out;
}

const OTHER_TRANSPORTS = ['ws', 'tls'] as const;

function ratioLines(rat: Record<string, number>): string[] {
  const pick = (re: RegExp): string =>
    Object.entries(rat)
      .flatMap(([k, v]) => {
        const m = re.exec(k);
        return m ? [`${m.slice(1).join(' ')} ${v.toFixed(2)}x`] : [];
      })
      .join(', ');
  const lines = [
    ['fanout/mosquitto msg/s:', pick(/^(qos\w+)$/)],
    ['fanout/mosquitto deliv/s:', pick(/^(qos\w+) deliv$/)],
    ...OTHER_TRANSPORTS.flatMap((t) => [
      [`fanout/mosquitto over ${t} msg/s:`, pick(new RegExp(`^${t} (qos\\w+)$`))],
      [`fanout/mosquitto over ${t} deliv/s:`, pick(new RegExp(`^${t} (qos\\w+) deliv$`))],
    ]),
    ...OTHER_TRANSPORTS.flatMap((t) => [
      [`${t}/tcp msg/s:`, pick(new RegExp(`^(\\S+) ${t}/tcp (qos\\w+)$`))],
      [`${t}/tcp deliv/s:`, pick(new RegExp(`^(\\S+) ${t}/tcp (qos\\w+) deliv$`))],
      [`${t}/tcp cpu µs/msg:`, pick(new RegExp(`^(\\S+) ${t}/tcp (qos\\w+) cpu$`))],
    ]),
  ].filter(([, text]) => text !== '');
  const width = Math.max(0, ...lines.map(([head]) => head.length));
  return lines.length ? ['', ...lines.map(([head, text]) => `${head.padEnd(width)} ${text}`)] : [];
}

export interface PairedRatio {
  /** The transport measured against TCP. */
  transport: Transport;
  /** Target and QoS, e.g. `fanout qos1`. */
  key: string;
  what: 'deliv/s' | 'cpu µs/msg';
  perRound: number[];
  median: number;
}

/**
 * WebSocket (or TLS) over TCP round by round: each ws or tls run against the tcp
 * run of the same target, QoS and round, which ran shortly before it. Under drift
 * (a shared machine) these pairs hold steadier than a ratio of medians taken over
 * different moments.
 */
export function pairedRatios(records: RunRecord<ScenarioResult>[]): PairedRatio[] {
  const out: PairedRatio[] = [];
  for (const transport of OTHER_TRANSPORTS) {
    const groups = [...new Set(records.filter((r) => r.transport === transport).map((r) => `${r.target}|${r.qos}`))];
    for (const g of groups) {
      const pairs = records.flatMap((other) => {
        if (other.transport !== transport || `${other.target}|${other.qos}` !== g || !other.result) return [];
        const tcp = records.find((r) => r.transport === 'tcp' && r.target === other.target && r.qos === other.qos && r.round === other.round);
        return tcp?.result ? [{ other: other.result, tcp: tcp.result }] : [];
      });
      if (pairs.length === 0) continue;
      const [target, qos] = g.split('|');
      const key = `${target} qos${qos === 'null' ? 'mix' : qos}`;
      const deliv = pairs.map((p) => p.other.deliveredPerSec / p.tcp.deliveredPerSec);
      const cpu = pairs.map((p) => p.other.resources.targetCpuUs / p.tcp.resources.targetCpuUs);
      out.push({ transport, key, what: 'deliv/s', perRound: deliv, median: median(deliv) }, { transport, key, what: 'cpu µs/msg', perRound: cpu, median: median(cpu) });
    }
  }
  return out;
}

/**
 * What the machine allows at all: the upstream mosquittos alone spend U µs of CPU per message
 * delivered (the least any target's runs measured), so on this machine's cores no front end,
 * however cheap, delivers more than cores × 1e6 / U msg/s, even with nothing else running (the
 * devices and the receivers share the cores too). Next to the bridge's rate, it says how far any
 * ratio target can be met here.
 */
export function ceilingLines(sums: UplinkSummary[], cores = os.availableParallelism()): string[] {
  const lines: string[] = [];
  for (const qos of [...new Set(sums.map((s) => s.qos))]) {
    const mine = sums.filter((s) => s.qos === qos && s.transport === 'tcp' && s.resources !== null && s.resources.upstreamCpuUs > 0);
    if (mine.length === 0) continue;
    const upstreamUs = Math.min(...mine.map((s) => s.resources!.upstreamCpuUs));
    const ceiling = (cores * 1e6) / upstreamUs;
    const bridge = mine.find((s) => s.target === 'mosquitto');
    const vs = bridge && bridge.deliveredPerSec > 0 ? `, ${(ceiling / bridge.deliveredPerSec).toFixed(2)}x the bridge's ${int(bridge.deliveredPerSec)} deliv/s` : '';
    const who = mine.every((s) => s.upstream === 'sink') ? "the sinks (loadtest/sink.ts; the sinks' CPU per message)" : 'the upstreams';
    lines.push(`  ${qosCell(qos)}: ${who} spend ${upstreamUs.toFixed(1)} µs CPU per message; ${cores} cores allow at most ${int(ceiling)} msg/s through any front end${vs}`);
  }
  return lines.length === 0 ? [] : ['', 'Ceiling on this machine (upstream brokers alone, nothing else running):', ...lines];
}

function pairedLines(records: RunRecord<ScenarioResult>[]): string[] {
  const paired = pairedRatios(records);
  return OTHER_TRANSPORTS.flatMap((transport) => {
    const mine = paired.filter((p) => p.transport === transport);
    if (mine.length === 0) return [];
    const line = (what: string): string =>
      mine
        .filter((p) => p.what === what)
        .map((p) => `${p.key} ${p.median.toFixed(2)}x (${p.perRound.map((x) => x.toFixed(2)).join(' ')})`)
        .join(', ');
    return ['', `${transport}/tcp round by round, median (each round):`, `  deliv/s:    ${line('deliv/s')}`, `  cpu µs/msg: ${line('cpu µs/msg')}`];
  });
}

/** Per-run problems worth a line: errors, device errors, unacked or refused publishes, exit notes. */
export function problems(records: RunRecord<ScenarioResult>[]): string[] {
  return records.flatMap((r) => {
    const tag = `round ${r.round} ${r.target}${r.transport === 'tcp' ? '' : `/${r.transport}`}${r.qos === null ? '' : ` qos${r.qos}`}`;
    const lines = r.error ? [`${tag}: ${r.error}`] : [];
    const x = r.result;
    if (x && x.publisher.errors.length) lines.push(`${tag}: ${x.publisher.errors.length} device error(s), first: ${x.publisher.errors[0]}`);
    if (x && x.publisher.unexpectedAcks) lines.push(`${tag}: ${x.publisher.unexpectedAcks} unexpected acks`);
    if (x && x.publisher.refused) lines.push(`${tag}: ${int(x.publisher.refused)} publishes refused (MQTT 5 reason code >= 0x80)`);
    const ackable = x ? x.publisher.byQos.filter((q) => q.qos > 0).reduce((n, q) => n + q.sent, 0) : 0;
    const acked = x ? x.publisher.acked + x.publisher.refused : 0;
    if (x && acked < ackable) lines.push(`${tag}: only ${int(acked)} of ${int(ackable)} QoS 1/2 publishes acked`);
    if (x && x.publisher.expected > x.publisher.sent) lines.push(`${tag}: only ${int(x.publisher.sent)} of ${int(x.publisher.expected)} sent`);
    return [...lines, ...r.notes.map((n) => `${tag}: ${n}`)];
  });
}

export function renderReport(records: RunRecord<ScenarioResult>[]): string {
  const key = (r: RunRecord<ScenarioResult>): string[] => [String(r.round), r.target, r.transport, qosCell(r.qos), shardCell(r.shards)];
  const runHead = ['round', 'target', 'transport', 'qos', 'shards', 'msg/s', 'deliv/s', 'missing', 'duplicates', 'end'];
  const runRows = records.map((r) => {
    const x = r.result;
    if (!x) return [...key(r), '-', '-', '-', '-', 'FAILED'];
    return [
      ...key(r),
      int(x.msgPerSec),
      int(x.deliveredPerSec),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.missing]))),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.duplicates]))),
      x.endedBy,
    ];
  });
  const latHead = ['round', 'target', 'transport', 'qos', 'shards', ...latencyHead('ack'), ...latencyHead('e2e')];
  const latRows = records.map((r) => [...key(r), ...latencyCells(r.qos !== 0 ? r.result?.publisher.ack : null), ...latencyCells(r.result?.e2e)]);
  const resHead = ['round', 'target', 'transport', 'qos', 'shards', ...resourceHead('msg')];
  const resRows = records.map((r) => [...key(r), ...resourceCells(r.result?.resources)]);

  const sums = summarize(records);
  const sumKey = (s: UplinkSummary): string[] => [s.target, s.transport, qosCell(s.qos), s.failed ? `${s.runs - s.failed}/${s.runs}` : String(s.runs), shardCell(s.shards)];
  const medHead = ['target', 'transport', 'qos', 'runs', 'shards', 'msg/s', 'deliv/s', ...resourceHead('msg'), 'missing', 'duplicates'];
  const medRows = sums.map((s) => [
    ...sumKey(s),
    int(s.msgPerSec),
    int(s.deliveredPerSec),
    ...resourceCells(s.resources),
    perBroker(s.missing),
    perBroker(s.duplicates),
  ]);
  const medLatHead = ['target', 'transport', 'qos', 'runs', 'shards', ...latencyHead('ack'), ...latencyHead('e2e')];
  const medLatRows = sums.map((s) => [...sumKey(s), ...latencyCells(s.ack), ...latencyCells(s.e2e)]);
  const wsServers = [...new Set(records.flatMap((r) => (r.result?.wsServer ? [`${r.target} ${r.result.wsServer}`] : [])))];
  const tlsSessions = [...new Set(records.flatMap((r) => (r.result?.tlsSession ? [`${r.target} ${r.result.tlsSession}`] : [])))];
  const parts = [
    machineLine(records.map((r) => r.shards)),
    ...(wsServers.length
      ? [`WebSocket (ws runs): devices send one binary frame per write (subprotocol mqtt, zero masking key); served by ${wsServers.join(', ')}.`]
      : []),
    ...(tlsSessions.length
      ? [`TLS (tls runs): devices verify the target's certificate (ECDSA P-256, made for the run) and keep one session each; ${tlsSessions.join(', ')}.`]
      : []),
    '',
    'Runs. msg/s: QoS 1/2 device acks / first send..last ack; QoS 0 (and mixed) = deliv/s.',
    "      deliv/s: slowest broker's deliveries / first send..its last delivery.",
    table(runHead, runRows, 4),
    '',
    'Latency, ms. ack: publish to PUBACK/PUBCOMP at the device; e2e: publish to arrival at an upstream subscriber.',
    table(latHead, latRows, 4),
    '',
    'Resources. ' + RESOURCE_LEGEND('msg', 'first publish..last delivery, per device message delivered'),
    table(resHead, resRows, 4),
    '',
    'Medians over rounds',
    table(medHead, medRows, 4),
    '',
    table(medLatHead, medLatRows, 4),
    ...ratioLines(ratios(sums)),
    ...ceilingLines(sums),
    // The older targets are of the unpaced run; a sweep's paced steps have their own (issue 15).
    ...goalLines(uplinkGoals(sums.filter((s) => s.rate === 0)), os.availableParallelism()),
    ...pairedLines(records),
  ];
  const notes = problems(records);
  if (notes.length) parts.push('', 'Notes', ...notes);
  parts.push(...sweepLines(sums));
  return parts.join('\n') + '\n';
}

