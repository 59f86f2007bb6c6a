// Report of the per-device scenario: the connect storm and the QoS 1 stream of each run, medians
// per device count and target, and what per-device mode costs: fanout-per-device over fanout per
// device count, as a ratio of medians and round by round (each fanout-per-device run against the
// fanout run of its round and device count, just before it).
import { fixed, int, latencyCells, latencyHead, machineLine, median, perBroker, table } from './format';
import type { RunRecord } from './output';
import type { PerDeviceResult } from './per-device';
import { problems } from './report';

const FIGURES = {
  'conn/s': (r: PerDeviceResult) => r.storm.connPerSec,
  'connect p50 ms': (r: PerDeviceResult) => r.storm.connect.p50Ms,
  'connect p99 ms': (r: PerDeviceResult) => r.storm.connect.p99Ms,
  'cpu µs/conn': (r: PerDeviceResult) => r.storm.resources.targetCpuUs,
  'RSS KB/device': (r: PerDeviceResult) => r.rssPerDeviceKB,
  'msg/s': (r: PerDeviceResult) => r.uplink.msgPerSec,
  'ack p50 ms': (r: PerDeviceResult) => r.uplink.publisher.ack.p50Ms,
  'ack p99 ms': (r: PerDeviceResult) => r.uplink.publisher.ack.p99Ms,
  'cpu µs/msg': (r: PerDeviceResult) => r.uplink.resources.targetCpuUs,
  'upstreams µs/msg': (r: PerDeviceResult) => r.uplink.resources.upstreamCpuUs,
  'peak RSS MB': (r: PerDeviceResult) => r.uplink.resources.targetPeakRssKB / 1024,
} as const;
type Figure = keyof typeof FIGURES;
const FIGURE_NAMES = Object.keys(FIGURES) as Figure[];

export interface PerDeviceSummary {
  devices: number;
  target: string;
  runs: number;
  failed: number;
  medians: Record<Figure, number>;
}

const countsOf = (records: RunRecord<PerDeviceResult>[]): number[] => [...new Set(records.map((r) => r.devices ?? 0))];

export function summarizePerDevice(records: RunRecord<PerDeviceResult>[]): PerDeviceSummary[] {
  return countsOf(records).flatMap((devices) => [...new Set(records.map((r) => r.target))].map((target) => {
    const group = records.filter((r) => r.target === target && (r.devices ?? 0) === devices);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    const medians = Object.fromEntries(FIGURE_NAMES.map((f) => [f, median(ok.map(FIGURES[f]))])) as Record<Figure, number>;
    return { devices, target, runs: group.length, failed: group.length - ok.length, medians };
  }));
}

/** fanout-per-device / fanout per device count and figure: of the medians, and per round. */
export function perDeviceRatios(records: RunRecord<PerDeviceResult>[]): { devices: number; figure: Figure; ofMedians: number; perRound: number[]; median: number }[] {
  const sums = summarizePerDevice(records);
  return countsOf(records).flatMap((devices) => {
    const on = sums.find((s) => s.devices === devices && s.target === 'fanout-per-device');
    const off = sums.find((s) => s.devices === devices && s.target === 'fanout');
    if (!on || !off) return [];
    const pairs = records.flatMap((a) => {
      if (a.target !== 'fanout-per-device' || !a.result || a.devices !== devices) return [];
      const b = records.find((r) => r.target === 'fanout' && r.round === a.round && r.devices === devices && r.result);
      return b?.result ? [{ on: a.result, off: b.result }] : [];
    });
    return FIGURE_NAMES.map((figure) => {
      const perRound = pairs.map((p) => FIGURES[figure](p.on) / FIGURES[figure](p.off));
      return { devices, figure, ofMedians: on.medians[figure] / off.medians[figure], perRound, median: median(perRound) };
    });
  });
}

export function renderPerDevice(records: RunRecord<PerDeviceResult>[]): string {
  const key = (r: RunRecord<PerDeviceResult>): string[] => [String(r.round), int(r.devices ?? NaN), r.target];
  const stormHead = ['round', 'devices', 'target', 'connected', 'conn/s', ...latencyHead('connect'), 'cpu µs/conn', 'RSS held MB', 'RSS KB/device'];
  const stormRows = records.map((r) => {
    const x = r.result;
    if (!x) return [...key(r), 'FAILED', ...Array<string>(9).fill('-')];
    const s = x.storm;
    return [...key(r), `${int(s.ok)}/${int(s.connections)}`, int(s.connPerSec), ...latencyCells(s.connect), fixed(s.resources.targetCpuUs, 1),
      fixed(x.rssHeldKB / 1024, 1), fixed(x.rssPerDeviceKB, 1)];
  });
  const upHead = ['round', 'devices', 'target', 'msg/s', 'deliv/s', ...latencyHead('ack'), 'cpu µs/msg', 'upstreams µs/msg', 'peak RSS MB', 'missing', 'duplicates', 'end'];
  const upRows = records.map((r) => {
    const u = r.result?.uplink;
    if (!u) return [...key(r), ...Array<string>(14).fill('-')];
    return [
      ...key(r), int(u.msgPerSec), int(u.deliveredPerSec), ...latencyCells(u.publisher.ack), fixed(u.resources.targetCpuUs, 1),
      fixed(u.resources.upstreamCpuUs, 1), fixed(u.resources.targetPeakRssKB / 1024, 1),
      perBroker(Object.fromEntries(u.brokers.map((b) => [b.broker, b.missing]))),
      perBroker(Object.fromEntries(u.brokers.map((b) => [b.broker, b.duplicates]))), u.endedBy,
    ];
  });
  const medRows = summarizePerDevice(records).map((s) => [
    int(s.devices), s.target, s.failed ? `${s.runs - s.failed}/${s.runs}` : String(s.runs),
    ...FIGURE_NAMES.map((f) => (f.startsWith('cpu') || f.startsWith('upstreams') || f.startsWith('RSS') || f.startsWith('peak') ? fixed(s.medians[f], 1)
      : f.endsWith('ms') ? fixed(s.medians[f], 1) : int(s.medians[f]))),
  ]);
  const ratioRows = perDeviceRatios(records).map((x) => [int(x.devices), x.figure, `${fixed(x.ofMedians, 2)}x`, `${fixed(x.median, 2)}x`, x.perRound.map((v) => fixed(v, 2)).join(' ')]);
  const first = records.find((r) => r.result)?.result;
  const stream = first ? `${int(first.uplink.publisher.expected / first.devices)} QoS 1 messages per device` : 'QoS 1 stream';
  const parts = [
    machineLine(records.map((r) => r.shards)),
    'fanout: pooled upstream mode (devices share the daemon\'s pool of connections to each upstream); fanout-per-device: FANOUT_UPSTREAM_MODE=per-device',
    '(each device has a session of its own at both upstreams, opened before its CONNACK, as {clientId}-{broker}).',
    '',
    'Connect storm (--devices connections in one step, held); connect latency in ms: TCP connect to CONNACK. cpu µs/conn: daemon, all threads.',
    'RSS KB/device: daemon VmRSS with every connection held, less before the storm, per connection.',
    table(stormHead, stormRows, 3),
    '',
    `QoS 1 uplink (${stream}, after the storm's connections closed); ack latency in ms. cpu µs/msg: daemon, all threads; upstreams: both mosquittos.`,
    table(upHead, upRows, 3),
    '',
    'Medians over rounds',
    table(['devices', 'target', 'runs', ...FIGURE_NAMES], medRows, 2),
    ...(ratioRows.length ? ['', 'fanout-per-device / fanout', table(['devices', 'figure', 'of medians', 'by round: median', 'each round'], ratioRows, 2)] : []),
  ];
  const notes = [
    ...problems(records.map((r) => ({ ...r, result: r.result?.uplink ?? null }))),
    ...records.flatMap((r) => (r.result?.storm.errorSamples ?? []).map((e) => `round ${r.round} ${r.target} connect storm: ${e}`)),
  ];
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}
