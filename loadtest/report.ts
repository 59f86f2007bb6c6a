// Report of the uplink scenario (and the shared part of mixed and
// broker-outage): per run, then medians over rounds and the fanout/mosquitto
// ratio, in three tables: throughput and loss, latency, resources.
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
import type { RunRecord } from './output';
import type { ResourceReport } from './proc-usage';
import type { TargetKind } from './targets';
import type { ScenarioResult } from './uplink';

export interface UplinkSummary {
  target: TargetKind;
  qos: number | null;
  shards: number | null;
  runs: number;
  failed: number;
  msgPerSec: number;
  deliveredPerSec: number;
  ack: LatencySummary | null;
  e2e: LatencySummary | null;
  resources: ResourceReport | null;
  missing: Record<string, number>;
  duplicates: Record<string, number>;
}

const qosCell = (q: number | null): string => (q === null ? 'mix' : String(q));
const shardCell = (s: number | null): string => (s === null ? '-' : String(s));

export function summarize(records: RunRecord<ScenarioResult>[]): UplinkSummary[] {
  const out: UplinkSummary[] = [];
  const keys = [...new Set(records.map((r) => `${r.target}|${r.qos}`))];
  for (const key of keys) {
    const group = records.filter((r) => `${r.target}|${r.qos}` === key);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    const brokers = [...new Set(ok.flatMap((r) => r.brokers.map((b) => b.broker)))];
    const byBroker = (f: 'missing' | 'duplicates'): Record<string, number> =>
      Object.fromEntries(brokers.map((b) => [b, median(ok.map((r) => r.brokers.find((x) => x.broker === b)?.[f] ?? NaN))]));
    const qos = group[0].qos;
    out.push({
      target: group[0].target,
      qos,
      shards: group[0].shards,
      runs: group.length,
      failed: group.length - ok.length,
      msgPerSec: median(ok.map((r) => r.msgPerSec)),
      deliveredPerSec: median(ok.map((r) => r.deliveredPerSec)),
      ack: qos !== 0 ? medianLatency(ok.map((r) => r.publisher.ack)) : null,
      e2e: medianLatency(ok.map((r) => r.e2e)),
      resources: medianResources(ok.map((r) => r.resources)),
      missing: byBroker('missing'),
      duplicates: byBroker('duplicates'),
    });
  }
  return out;
}

/** fanout over mosquitto per QoS, from the medians (`qos1` for msg/s, `qos1 deliv` for deliv/s). */
export function ratios(summaries: UplinkSummary[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of summaries.filter((x) => x.target === 'fanout')) {
    const base = summaries.find((x) => x.target === 'mosquitto' && x.qos === s.qos);
    const key = `qos${qosCell(s.qos)}`;
    if (base && base.msgPerSec > 0) out[key] = s.msgPerSec / base.msgPerSec;
    if (base && base.deliveredPerSec > 0) out[`${key} deliv`] = s.deliveredPerSec / base.deliveredPerSec;
  }
  return out;
}

function ratioLines(rat: Record<string, number>): string[] {
  if (Object.keys(rat).length === 0) return [];
  const line = (deliv: boolean): string =>
    Object.entries(rat)
      .filter(([k]) => k.endsWith(' deliv') === deliv)
      .map(([k, v]) => `${k.split(' ')[0]} ${v.toFixed(2)}x`)
      .join(', ');
  return ['', `fanout/mosquitto msg/s:   ${line(false)}`, `fanout/mosquitto deliv/s: ${line(true)}`];
}

/** Per-run problems worth a line: errors, device errors, unacked or refused publishes, exit notes. */
export function problems(records: RunRecord<ScenarioResult>[]): string[] {
  return records.flatMap((r) => {
    const tag = `round ${r.round} ${r.target}${r.qos === null ? '' : ` qos${r.qos}`}`;
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
  const key = (r: RunRecord<ScenarioResult>): string[] => [String(r.round), r.target, qosCell(r.qos)];
  const runHead = ['round', 'target', 'qos', 'shards', 'msg/s', 'deliv/s', 'missing', 'duplicates', 'end'];
  const runRows = records.map((r) => {
    const x = r.result;
    if (!x) return [...key(r), shardCell(r.shards), '-', '-', '-', '-', 'FAILED'];
    return [
      ...key(r),
      shardCell(r.shards),
      int(x.msgPerSec),
      int(x.deliveredPerSec),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.missing]))),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.duplicates]))),
      x.endedBy,
    ];
  });
  const latHead = ['round', 'target', 'qos', ...latencyHead('ack'), ...latencyHead('e2e')];
  const latRows = records.map((r) => [...key(r), ...latencyCells(r.qos !== 0 ? r.result?.publisher.ack : null), ...latencyCells(r.result?.e2e)]);
  const resHead = ['round', 'target', 'qos', ...resourceHead('msg')];
  const resRows = records.map((r) => [...key(r), ...resourceCells(r.result?.resources)]);

  const sums = summarize(records);
  const sumKey = (s: UplinkSummary): string[] => [s.target, qosCell(s.qos), s.failed ? `${s.runs - s.failed}/${s.runs}` : String(s.runs)];
  const medHead = ['target', 'qos', 'runs', 'shards', 'msg/s', 'deliv/s', ...resourceHead('msg'), 'missing', 'duplicates'];
  const medRows = sums.map((s) => [
    ...sumKey(s),
    shardCell(s.shards),
    int(s.msgPerSec),
    int(s.deliveredPerSec),
    ...resourceCells(s.resources),
    perBroker(s.missing),
    perBroker(s.duplicates),
  ]);
  const medLatHead = ['target', 'qos', 'runs', ...latencyHead('ack'), ...latencyHead('e2e')];
  const medLatRows = sums.map((s) => [...sumKey(s), ...latencyCells(s.ack), ...latencyCells(s.e2e)]);
  const parts = [
    machineLine(records.map((r) => r.shards)),
    '',
    'Runs. msg/s: QoS 1/2 device acks / first send..last ack; QoS 0 (and mixed) = deliv/s.',
    "      deliv/s: slowest broker's deliveries / first send..its last delivery.",
    table(runHead, runRows, 3),
    '',
    'Latency, ms. ack: publish to PUBACK/PUBCOMP at the device; e2e: publish to arrival at an upstream subscriber.',
    table(latHead, latRows, 3),
    '',
    'Resources. ' + RESOURCE_LEGEND('msg', 'first publish..last delivery, per device message delivered'),
    table(resHead, resRows, 3),
    '',
    'Medians over rounds',
    table(medHead, medRows, 3),
    '',
    table(medLatHead, medLatRows, 3),
    ...ratioLines(ratios(sums)),
  ];
  const notes = problems(records);
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}

