// Report of the mixed scenario: the same tables as uplink, broken down by the
// QoS the devices published at (a third of them each).
import { int, latencyCells, latencyHead, machineLine, median, medianLatency, perBroker, RESOURCE_LEGEND, resourceCells, resourceHead, table } from './format';
import type { RunRecord } from './output';
import { problems, summarize } from './report';
import type { QosBreakdown, ScenarioResult } from './uplink';

const QOS = [0, 1, 2] as const;

function rowsFor(r: RunRecord<ScenarioResult>): { r: RunRecord<ScenarioResult>; q: QosBreakdown | null; qos: number }[] {
  return QOS.map((qos) => ({ r, q: r.result?.byQos?.find((b) => b.qos === qos) ?? null, qos }));
}

export function renderMixed(records: RunRecord<ScenarioResult>[]): string {
  const all = records.flatMap(rowsFor);
  const key = (x: { r: RunRecord<ScenarioResult>; qos: number }): string[] => [String(x.r.round), x.r.target, String(x.qos)];
  const broker = (q: QosBreakdown, f: 'missing' | 'duplicates'): string => perBroker(Object.fromEntries(q.brokers.map((b) => [b.broker, b[f]])));
  const runHead = ['round', 'target', 'qos', 'devices', 'msg/s', 'deliv/s', 'sent', 'acked', 'missing', 'duplicates'];
  const runRows = all.map((x) =>
    x.q
      ? [...key(x), int(x.q.devices), int(x.q.msgPerSec), int(x.q.deliveredPerSec), int(x.q.sent), x.qos > 0 ? int(x.q.acked) : '-', broker(x.q, 'missing'), broker(x.q, 'duplicates')]
      : [...key(x), '-', '-', '-', '-', '-', '-', x.r.error ? 'FAILED' : '-'],
  );
  const latHead = ['round', 'target', 'qos', ...latencyHead('ack'), ...latencyHead('e2e')];
  const latRows = all.map((x) => [...key(x), ...latencyCells(x.qos > 0 ? x.q?.ack : null), ...latencyCells(x.q?.e2e)]);
  const resHead = ['round', 'target', 'shards', 'all msg/s', ...resourceHead('msg')];
  const resRows = records.map((r) => [String(r.round), r.target, r.shards === null ? '-' : String(r.shards), int(r.result?.msgPerSec ?? NaN), ...resourceCells(r.result?.resources)]);

  const medHead = ['target', 'qos', 'msg/s', 'deliv/s', 'missing', 'duplicates', ...latencyHead('ack'), ...latencyHead('e2e')];
  const medRows: string[][] = [];
  for (const target of [...new Set(records.map((r) => r.target))]) {
    for (const qos of QOS) {
      const qs = all.filter((x) => x.r.target === target && x.qos === qos && x.q).map((x) => x.q as QosBreakdown);
      const brokers = [...new Set(qs.flatMap((q) => q.brokers.map((b) => b.broker)))];
      const med = (f: 'missing' | 'duplicates'): string =>
        perBroker(Object.fromEntries(brokers.map((b) => [b, median(qs.map((q) => q.brokers.find((x) => x.broker === b)?.[f] ?? NaN))])));
      medRows.push([
        target,
        String(qos),
        int(median(qs.map((q) => q.msgPerSec))),
        int(median(qs.map((q) => q.deliveredPerSec))),
        med('missing'),
        med('duplicates'),
        ...latencyCells(qos > 0 ? medianLatency(qs.map((q) => q.ack)) : null),
        ...latencyCells(medianLatency(qs.map((q) => q.e2e))),
      ]);
    }
  }
  const sums = summarize(records);
  const medRes = sums.map((s) => [s.target, s.shards === null ? '-' : String(s.shards), int(s.msgPerSec), ...resourceCells(s.resources)]);
  const parts = [
    machineLine(records.map((r) => r.shards)),
    '',
    'Runs per QoS (devices publish at QoS = device number mod 3, all at once). msg/s: QoS 1/2 acks / first send..last ack',
    "of that QoS; QoS 0 = deliv/s: slowest broker's deliveries of that QoS / first send..its last one.",
    table(runHead, runRows, 3),
    '',
    'Latency per QoS, ms',
    table(latHead, latRows, 3),
    '',
    'Resources per run (all QoS together). ' + RESOURCE_LEGEND('msg', 'first publish..last delivery, per device message delivered'),
    table(resHead, resRows, 2),
    '',
    'Medians over rounds',
    table(medHead, medRows, 2),
    '',
    table(['target', 'shards', 'all msg/s', ...resourceHead('msg')], medRes, 1),
  ];
  const notes = problems(records);
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}
