// Report of the downlink scenario: per run, then medians over rounds and the
// fanout / mosquitto-direct ratio, in three tables: deliveries and loss,
// latency, resources.
import type { DownlinkResult } from './downlink';
import { fixed, int, latencyCells, latencyHead, machineLine, median, medianLatency, medianResources, ms, table } from './format';
import type { LatencySummary } from './latency';
import type { RunRecord } from './output';
import type { ResourceReport } from './proc-usage';
import type { TargetKind } from './targets';

export interface DownlinkSummary {
  target: TargetKind;
  qos: number | null;
  shards: number | null;
  runs: number;
  failed: number;
  deliveriesPerSec: number;
  publishedPerSec: number;
  missing: number;
  duplicates: number;
  e2e: LatencySummary | null;
  resources: ResourceReport | null;
  /** Upstream b1 serving the proxy (fanout only): CPU µs per delivery and peak RSS KB. */
  b1CpuUs: number;
  b1PeakRssKB: number;
}

const PEER: TargetKind = 'mosquitto-direct';

/** b1's figures where it is an upstream of the target; NaN for mosquitto-direct, where b1 is the target. */
function b1Of(target: TargetKind, r: ResourceReport): { cpuUs: number; peakRssKB: number } {
  const b1 = target === PEER ? undefined : r.processes.find((p) => p.name === 'upstream-b1');
  return b1 ? { cpuUs: r.units > 0 ? (b1.cpuSeconds * 1e6) / r.units : NaN, peakRssKB: b1.peakRssKB } : { cpuUs: NaN, peakRssKB: NaN };
}

export function summarizeDownlink(records: RunRecord<DownlinkResult>[]): DownlinkSummary[] {
  const keys = [...new Set(records.map((r) => `${r.target}|${r.qos}`))];
  return keys.map((key) => {
    const group = records.filter((r) => `${r.target}|${r.qos}` === key);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    return {
      target: group[0].target,
      qos: group[0].qos,
      shards: group[0].shards,
      runs: group.length,
      failed: group.length - ok.length,
      deliveriesPerSec: median(ok.map((x) => x.deliveriesPerSec)),
      publishedPerSec: median(ok.map((x) => x.publishedPerSec)),
      missing: median(ok.map((x) => x.missing)),
      duplicates: median(ok.map((x) => x.duplicates)),
      e2e: medianLatency(ok.map((x) => x.e2e)),
      resources: medianResources(ok.map((x) => x.resources)),
      b1CpuUs: median(ok.map((x) => b1Of(group[0].target, x.resources).cpuUs)),
      b1PeakRssKB: median(ok.map((x) => b1Of(group[0].target, x.resources).peakRssKB)),
    };
  });
}

/** fanout over mosquitto-direct per QoS: deliveries/s (`qos1`) and CPU per delivery (`qos1 cpu`). */
export function downlinkRatios(sums: DownlinkSummary[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of sums.filter((x) => x.target === 'fanout')) {
    const base = sums.find((x) => x.target === PEER && x.qos === s.qos);
    if (!base) continue;
    if (base.deliveriesPerSec > 0) out[`qos${s.qos}`] = s.deliveriesPerSec / base.deliveriesPerSec;
    const cpu = s.resources?.targetCpuUs ?? NaN;
    const baseCpu = base.resources?.targetCpuUs ?? NaN;
    if (baseCpu > 0) out[`qos${s.qos} cpu`] = cpu / baseCpu;
  }
  return out;
}

/** Per-run problems: failures, loss, duplicates, unexpected packets, device and publisher errors, log warnings. */
function problems(records: RunRecord<DownlinkResult>[]): string[] {
  return records.flatMap((r) => {
    const tag = `round ${r.round} ${r.target} qos${r.qos}`;
    const lines = r.error ? [`${tag}: ${r.error}`] : [];
    const x = r.result;
    if (x) {
      const d = x.devicesStats;
      if (x.missing > 0) {
        lines.push(
          `${tag}: ${int(x.missing)} of ${int(x.expected)} deliveries missing at ${int(d.incomplete)} of ${int(x.devices)} devices` +
            ` (sequence numbers ${d.firstMissing}..${d.lastMissing} of 0..${x.published - 1} affected)`,
        );
      }
      if (x.duplicates > 0) lines.push(`${tag}: ${int(x.duplicates)} duplicate deliveries`);
      if (d.qosMismatch > 0) lines.push(`${tag}: ${int(d.qosMismatch)} deliveries at another QoS than ${x.qos}`);
      if (d.foreign > 0) lines.push(`${tag}: ${int(d.foreign)} PUBLISH packets that are not the publisher's`);
      if (d.dropped > 0) lines.push(`${tag}: the target closed ${int(d.dropped)} device connections`);
      for (const e of d.errors) lines.push(`${tag}: ${e}`);
      if (x.publisher.errors.length) lines.push(`${tag}: publisher: ${x.publisher.errors[0]}`);
      if (x.qos === 1 && x.publisher.acked < x.published) lines.push(`${tag}: publisher: only ${int(x.publisher.acked)} of ${int(x.published)} acked`);
      for (const f of x.logFindings) lines.push(`${tag}: log: ${f}`);
    }
    return [...lines, ...r.notes.map((n) => `${tag}: ${n}`)];
  });
}

export function renderDownlink(records: RunRecord<DownlinkResult>[]): string {
  const key = (r: RunRecord<DownlinkResult>): string[] => [String(r.round), r.target, String(r.qos)];
  const shard = (s: number | null): string => (s === null ? '-' : String(s));
  const runHead = ['round', 'target', 'qos', 'shards', 'devices', 'published', 'pub msg/s', 'deliv/s', 'missing', 'duplicates', 'subscribe s', 'end'];
  const runRows = records.map((r) => {
    const x = r.result;
    if (!x) return [...key(r), shard(r.shards), '-', '-', '-', '-', '-', '-', '-', 'FAILED'];
    return [
      ...key(r),
      shard(r.shards),
      int(x.devices),
      int(x.published),
      int(x.publishedPerSec),
      int(x.deliveriesPerSec),
      int(x.missing),
      int(x.duplicates),
      fixed(x.subscribe.durationMs / 1000, 2),
      x.endedBy,
    ];
  });
  const latHead = ['round', 'target', 'qos', ...latencyHead('e2e'), 'pub ack p50', 'pub ack p99', 'SUBACK p50', 'SUBACK max'];
  const latRows = records.map((r) => {
    const x = r.result;
    const ack = x && x.qos === 1 ? x.publisher.ack : null;
    return [...key(r), ...latencyCells(x?.e2e), ms(ack?.p50Ms ?? NaN), ms(ack?.p99Ms ?? NaN), ms(x?.subscribe.suback.p50Ms ?? NaN), ms(x?.subscribe.suback.maxMs ?? NaN)];
  });
  const resHead = ['round', 'target', 'qos', 'cpu µs/deliv', 'peak RSS MB', 'b1 µs/deliv', 'b1 peak RSS MB'];
  const resRows = records.map((r) => {
    const x = r.result?.resources;
    if (!x) return [...key(r), '-', '-', '-', '-'];
    const b1 = b1Of(r.target, x);
    return [...key(r), ...resourceCells(x.targetCpuUs, x.targetPeakRssKB, b1.cpuUs, b1.peakRssKB)];
  });

  const sums = summarizeDownlink(records);
  const medHead = ['target', 'qos', 'runs', 'deliv/s', 'pub msg/s', 'missing', 'duplicates', 'cpu µs/deliv', 'peak RSS MB', 'b1 µs/deliv', 'b1 peak RSS MB'];
  const medRows = sums.map((s) => [
    s.target,
    String(s.qos),
    s.failed ? `${s.runs - s.failed}/${s.runs}` : String(s.runs),
    int(s.deliveriesPerSec),
    int(s.publishedPerSec),
    int(s.missing),
    int(s.duplicates),
    ...resourceCells(s.resources?.targetCpuUs ?? NaN, s.resources?.targetPeakRssKB ?? NaN, s.b1CpuUs, s.b1PeakRssKB),
  ]);
  const medLatRows = sums.map((s) => [s.target, String(s.qos), ...latencyCells(s.e2e)]);
  const rat = downlinkRatios(sums);
  const ratioText = (cpu: boolean): string =>
    Object.entries(rat)
      .filter(([k]) => k.endsWith(' cpu') === cpu)
      .map(([k, v]) => `${k.split(' ')[0]} ${v.toFixed(2)}x`)
      .join(', ');
  const job = records.find((r) => r.result)?.result;
  const parts = [
    machineLine(records.map((r) => r.shards)),
    job ? `Job: ${int(job.devices)} devices subscribed through the target; one publisher on upstream b1 sent ${int(job.published)} messages.` : '',
    '',
    'Runs. deliv/s: distinct deliveries over all devices / first publish..last delivery; pub msg/s: publisher acks',
    '(QoS 1) or writes (QoS 0) / first..last; subscribe: first SUBSCRIBE..last SUBACK, devices still connecting meanwhile.',
    table(runHead, runRows, 3),
    '',
    'Latency, ms. e2e: publish at the publisher to arrival at a device, every delivery; pub ack: publish to PUBACK',
    'from b1; SUBACK: device SUBSCRIBE to SUBACK.',
    table(latHead, latRows, 3),
    '',
    'Resources over first publish..end, per distinct delivery. cpu: the target (mqtt-fanout, all threads; for',
    'mosquitto-direct b1 itself); b1: the upstream mosquitto serving the proxy (fanout only); RSS sampled every 250 ms.',
    table(resHead, resRows, 3),
    '',
    'Medians over rounds',
    table(medHead, medRows, 2),
    '',
    table(['target', 'qos', ...latencyHead('e2e')], medLatRows, 2),
  ];
  if (Object.keys(rat).length) {
    parts.push('', `fanout/mosquitto-direct deliv/s:      ${ratioText(false)}`, `fanout/mosquitto-direct cpu µs/deliv: ${ratioText(true)}`);
  }
  const notes = problems(records);
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}

function resourceCells(cpuUs: number, peakRssKB: number, b1CpuUs: number, b1PeakRssKB: number): string[] {
  return [fixed(cpuUs, 1), fixed(peakRssKB / 1024, 1), fixed(b1CpuUs, 1), fixed(b1PeakRssKB / 1024, 1)];
}
