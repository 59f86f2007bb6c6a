// The load sweep (uplink --rate 5000,20000,50000,0): one table of every offered rate and target,
// from the medians over rounds, with the fanout/bridge ratios per row, the sinks' own CPU per
// message and its check, and issue 15's targets, each met or MISSED with the gap.
import * as os from 'node:os';
import { fixed, int, ms, perBroker, table } from './format';
import { Goal, goalLines } from './goals';
import type { UplinkSummary } from './report';

/** A sink must never limit what it measures: at most this much CPU per message it receives, at 200k msg/s. */
export const SINK_BUDGET_US = 1;
const SINK_RATE = 200_000;

const rateCell = (r: number): string => (r === 0 ? 'max' : int(r));
const ratio = (a: number, b: number): number => (b > 0 && Number.isFinite(a) && Number.isFinite(b) ? a / b : NaN);
const lostOf = (m: Record<string, number>): number => Object.values(m).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
/** The sinks' CPU per message each of them received (the column is both together per device message). */
const perSinkUs = (s: UplinkSummary): number => (s.target === 'sink-direct' ? (s.resources?.targetCpuUs ?? NaN) : (s.resources?.upstreamCpuUs ?? NaN) / Math.max(1, Object.keys(s.missing).length));

function bridgeOf(sums: UplinkSummary[], s: UplinkSummary): UplinkSummary | undefined {
  return sums.find((x) => x.target === 'mosquitto' && x.transport === s.transport && x.qos === s.qos && x.rate === s.rate);
}

export function sweepTable(sums: UplinkSummary[]): string {
  const head = ['rate', 'target', 'qos', 'shards', 'msg/s', 'missing', 'dups', 'ack p50', 'p99', 'p99.9', 'e2e p50', 'p99', 'p99.9',
    'cpu µs/msg', 'sinks µs/msg', 'gc max ms', 'msg/s f/b', 'cpu f/b'];
  const rows = [...sums].sort((a, b) => (a.rate === 0 ? Infinity : a.rate) - (b.rate === 0 ? Infinity : b.rate)).map((s) => {
    const b = s.target === 'fanout' ? bridgeOf(sums, s) : undefined;
    return [rateCell(s.rate), s.target, s.qos === null ? 'mix' : String(s.qos), s.shards === null ? '-' : String(s.shards),
      int(s.msgPerSec), perBroker(s.missing), perBroker(s.duplicates),
      ms(s.ack?.p50Ms ?? NaN), ms(s.ack?.p99Ms ?? NaN), ms(s.ack?.p999Ms ?? NaN), ms(s.e2e?.p50Ms ?? NaN), ms(s.e2e?.p99Ms ?? NaN), ms(s.e2e?.p999Ms ?? NaN),
      fixed(s.resources?.targetCpuUs ?? NaN, 1), s.upstream === 'sink' ? fixed(perSinkUs(s), 2) : '-', fixed(s.gcMaxMs, 1),
      b ? fixed(ratio(s.msgPerSec, b.msgPerSec), 2) : '-', b ? fixed(ratio(s.resources?.targetCpuUs ?? NaN, b.resources?.targetCpuUs ?? NaN), 2) : '-'];
  });
  return table(head, rows, 4);
}

/** The sink's own CPU per message: from a sink-direct run if there is one, else from the sinks behind the fastest run. */
export function sinkGoal(sums: UplinkSummary[]): Goal | null {
  const withSinks = sums.filter((s) => s.upstream === 'sink' && Number.isFinite(perSinkUs(s)));
  if (withSinks.length === 0) return null;
  const direct = withSinks.filter((s) => s.target === 'sink-direct');
  const pick = (direct.length ? direct : withSinks).reduce((a, b) => (b.deliveredPerSec > a.deliveredPerSec ? b : a));
  const us = perSinkUs(pick);
  const at = pick.deliveredPerSec;
  const fast = at >= SINK_RATE * 0.95;
  return {
    what: `sink CPU <= ${SINK_BUDGET_US} µs per message it receives, at ${int(SINK_RATE)} msg/s`,
    measured: `${us.toFixed(2)} µs/msg at ${int(at)} msg/s (${pick.target})`,
    met: us <= SINK_BUDGET_US && fast,
    gap: [us > SINK_BUDGET_US ? `${(us / SINK_BUDGET_US).toFixed(1)}x over` : '', fast ? '' : `not at ${int(SINK_RATE)} msg/s: --target sink-direct --rate ${SINK_RATE}`].filter((x) => x).join('; '),
  };
}

/** Issue 15's targets from a sweep's medians (mqtt-fanout with the most shards, TCP, QoS 1 unless said). */
export function sweepGoals(sums: UplinkSummary[]): Goal[] {
  const goals: Goal[] = [];
  const most = Math.max(0, ...sums.filter((s) => s.target === 'fanout').map((s) => s.shards ?? 0));
  const fan = (rate: number, qos = 1, shards = most): UplinkSummary | undefined =>
    sums.find((s) => s.target === 'fanout' && s.transport === 'tcp' && s.qos === qos && s.rate === rate && s.shards === shards);
  const notRun = (what: string, how: string): Goal => ({ what, measured: 'not run', met: false, gap: how });
  const atMost = (what: string, have: number, want: number, unit: string, digits = 1): Goal => ({
    what, measured: `${fixed(have, digits)}${unit}`, met: have <= want, gap: have <= want ? '' : `+${fixed(have - want, digits)}${unit}`,
  });
  const cpuRatio = (f: UplinkSummary, limit: number): Goal => {
    const b = bridgeOf(sums, f);
    const r = ratio(f.resources?.targetCpuUs ?? NaN, b?.resources?.targetCpuUs ?? NaN);
    return { what: `${rateCell(f.rate)} msg/s: CPU per message <= ${limit}x the bridge's`, measured: b ? `${fixed(r, 2)}x (${fixed(f.resources?.targetCpuUs ?? NaN, 1)} / ${fixed(b.resources?.targetCpuUs ?? NaN, 1)} µs)` : 'no bridge run', met: r <= limit, gap: r <= limit ? '' : `${fixed(r / limit, 1)}x over` };
  };
  for (const rate of [5000, 20_000]) {
    const f = fan(rate);
    if (!f) {
      goals.push(notRun(`${int(rate)} msg/s: CPU <= 0.5x bridge, ack p99 <= 5 ms, e2e p99 <= bridge's, 0 missing`, `--rate ${rate}`));
      continue;
    }
    goals.push(cpuRatio(f, 0.5));
    goals.push(atMost(`${int(rate)} msg/s: ack p99 <= 5 ms`, f.ack?.p99Ms ?? NaN, 5, ' ms'));
    const b = bridgeOf(sums, f);
    const be = b?.e2e?.p99Ms ?? NaN;
    const fe = f.e2e?.p99Ms ?? NaN;
    goals.push({ what: `${int(rate)} msg/s: e2e p99 <= the bridge's`, measured: `${fixed(fe, 1)} / ${fixed(be, 1)} ms`, met: fe <= be, gap: fe <= be ? '' : `+${fixed(fe - be, 1)} ms` });
    goals.push({ what: `${int(rate)} msg/s: 0 missing`, measured: `${int(lostOf(f.missing))} missing`, met: lostOf(f.missing) === 0, gap: '' });
  }
  const f50 = fan(50_000);
  if (f50) {
    goals.push(cpuRatio(f50, 0.6));
    goals.push(atMost('50,000 msg/s: ack p99 <= 10 ms', f50.ack?.p99Ms ?? NaN, 10, ' ms'));
  } else goals.push(notRun('50,000 msg/s: CPU <= 0.6x bridge, ack p99 <= 10 ms', '--rate 50000'));
  const fmax = fan(0);
  if (fmax) {
    const b = bridgeOf(sums, fmax);
    const r = ratio(fmax.deliveredPerSec, b?.deliveredPerSec ?? NaN);
    const bridgeLossless = b !== undefined && lostOf(b.missing) === 0;
    goals.push({ what: "max: >= 5x the bridge's lossless deliv/s", measured: b ? `${fixed(r, 2)}x (${int(fmax.deliveredPerSec)} / ${int(b.deliveredPerSec)}${bridgeLossless ? '' : ', the bridge lost messages'})` : 'no bridge run', met: r >= 5, gap: r >= 5 ? '' : `${fixed(5 / r, 1)}x short` });
    const lost = lostOf(fmax.missing);
    const dups = lostOf(fmax.duplicates);
    goals.push({ what: 'max: 0 missing, 0 duplicates', measured: `${int(lost)} missing, ${int(dups)} duplicates`, met: lost === 0 && dups === 0, gap: '' });
  } else goals.push(notRun("max: >= 5x the bridge's lossless rate, 0 missing, 0 duplicates", '--rate 0'));
  const q0 = fan(100_000, 0);
  if (q0) {
    goals.push(atMost('QoS 0 at 100,000 msg/s: e2e p99 <= 5 ms', q0.e2e?.p99Ms ?? NaN, 5, ' ms'));
    goals.push({ what: 'QoS 0 at 100,000 msg/s: 0 missing', measured: `${int(lostOf(q0.missing))} missing`, met: lostOf(q0.missing) === 0, gap: '' });
  } else goals.push(notRun('QoS 0 at 100,000 msg/s: e2e p99 <= 5 ms, 0 missing', '--rate 100000 --qos 0'));
  const f20 = fan(20_000);
  goals.push(f20 && Number.isFinite(f20.gcMaxMs) ? atMost('20,000 msg/s: no GC pause over 2 ms on a shard or writer thread', f20.gcMaxMs, 2, ' ms', 2) : notRun('20,000 msg/s: no GC pause over 2 ms', '--rate 20000 (fanout with its HTTP port)'));
  const fewest = Math.min(...sums.filter((s) => s.target === 'fanout' && s.rate === 0).map((s) => s.shards ?? Infinity));
  const two = fan(0, 1, most);
  const one = Number.isFinite(fewest) && fewest < most ? fan(0, 1, fewest) : undefined;
  if (two && one) {
    const r = ratio(two.deliveredPerSec, one.deliveredPerSec);
    goals.push({ what: `max: FANOUT_SHARDS=${most} >= 1.6x FANOUT_SHARDS=${fewest}`, measured: `${fixed(r, 2)}x (${int(two.deliveredPerSec)} / ${int(one.deliveredPerSec)} deliv/s)`, met: r >= 1.6, gap: r >= 1.6 ? '' : `${fixed(1.6 / r, 1)}x short` });
  } else goals.push(notRun('max: shards 2 vs 1 >= 1.6x', '--shards 1,2 with rate 0'));
  return goals;
}

/** The sweep block at the end of an uplink report: the table, the sink check, the targets. */
export function sweepLines(sums: UplinkSummary[]): string[] {
  if (sums.length === 0) return [];
  const sink = sinkGoal(sums);
  const sinks = sums.some((s) => s.upstream === 'sink');
  return [
    '',
    `Load sweep (medians over rounds; upstreams: ${sinks ? 'sinks, loadtest/sink.ts' : 'mosquittos'}). rate: offered msg/s, max = as fast as it goes.`,
    '  msg/s: acked (QoS 0: delivered); latency ms; cpu µs/msg: the daemon\'s or the bridge\'s process, user+sys over the run;',
    "  sinks µs/msg: the sinks' own CPU per message each received; gc max: the largest pause on a shard or writer thread;",
    '  f/b: mqtt-fanout over the bridge at the same rate.',
    sweepTable(sums),
    ...(sink ? goalLines([sink], os.availableParallelism()).slice(1).map((l, i) => (i === 0 ? 'Sink check:' : l)) : []),
    ...goalLines(sweepGoals(sums), os.availableParallelism()).map((l) => l.replace(/^Targets \(mqtt-fanout;/, 'Issue 15 targets (mqtt-fanout;')),
  ];
}
