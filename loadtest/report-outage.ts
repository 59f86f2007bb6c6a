// Report of the broker-outage scenario: loss and duplicates per broker across
// the outage (must be 0 missing), recovery time, and the usual latency and
// resource figures of the stream.
import { fixed, int, latencyCells, latencyHead, machineLine, median, perBroker, RESOURCE_LEGEND, resourceCells, resourceHead, table } from './format';
import type { OutageResult } from './broker-outage';
import type { RunRecord } from './output';
import { problems } from './report';

export function renderOutage(records: RunRecord<OutageResult>[]): string {
  const key = (r: RunRecord<OutageResult>): string[] => [String(r.round), r.target];
  const shard = (r: RunRecord<OutageResult>): string => (r.shards === null ? '-' : String(r.shards));
  const head = ['round', 'target', 'shards', 'msg/s', 'killed at s', 'restarted at s', 'recovery s', 'missing', 'duplicates', 'reconnects', 'end'];
  const rows = records.map((r) => {
    const x = r.result;
    if (!x) return [...key(r), shard(r), '-', '-', '-', '-', '-', '-', '-', 'FAILED'];
    return [
      ...key(r),
      shard(r),
      int(x.msgPerSec),
      fixed(x.outage.killedAtS, 2),
      fixed(x.outage.restartedAtS, 2),
      fixed(x.outage.recoveryMs / 1000, 3),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.missing]))),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.duplicates]))),
      String(x.outage.reconnects),
      x.endedBy,
    ];
  });
  const latHead = ['round', 'target', ...latencyHead('ack'), ...latencyHead('e2e')];
  const latRows = records.map((r) => [...key(r), ...latencyCells(r.result?.publisher.ack), ...latencyCells(r.result?.e2e)]);
  const resHead = ['round', 'target', ...resourceHead('msg')];
  const resRows = records.map((r) => [...key(r), ...resourceCells(r.result?.resources)]);
  const medHead = ['target', 'runs', 'recovery s', 'missing', 'duplicates'];
  const medRows = [...new Set(records.map((r) => r.target))].map((target) => {
    const group = records.filter((r) => r.target === target);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    const brokers = [...new Set(ok.flatMap((x) => x.brokers.map((b) => b.broker)))];
    const med = (f: 'missing' | 'duplicates'): string =>
      perBroker(Object.fromEntries(brokers.map((b) => [b, median(ok.map((x) => x.brokers.find((y) => y.broker === b)?.[f] ?? NaN))])));
    return [target, ok.length === group.length ? String(group.length) : `${ok.length}/${group.length}`, fixed(median(ok.map((x) => x.outage.recoveryMs / 1000)), 3), med('missing'), med('duplicates')];
  });
  const lossy = records.filter((r) => r.result && r.result.brokers.some((b) => b.missing > 0));
  const parts = [
    machineLine(records.map((r) => r.shards)),
    '',
    'Runs. Paced QoS 1 stream; upstream b1 SIGKILLed and restarted on its port. recovery: restart (spawn of the new b1)',
    'to b1 delivering the first message sent after the kill. missing must be 0 at every broker.',
    table(head, rows, 2),
    '',
    'Latency, ms (the outage shows in the tail)',
    table(latHead, latRows, 2),
    '',
    'Resources. ' + RESOURCE_LEGEND('msg', 'the whole stream, per device message delivered (b1: both processes)'),
    table(resHead, resRows, 2),
    '',
    'Medians over rounds',
    table(medHead, medRows, 1),
  ];
  if (lossy.length) parts.push('', `LOSS: ${lossy.map((r) => `round ${r.round} ${r.target}`).join(', ')} lost messages across the outage`);
  const notes = problems(records);
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}
