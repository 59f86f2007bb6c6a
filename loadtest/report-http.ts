// Report of the http scenario: per run, then medians over rounds, in four
// tables: requests and statuses, delivery of what was answered 200 (POST
// /publish), latency, resources. No ratio: there is no peer.
import { fixed, int, latencyCells, latencyHead, machineLine, median, medianLatency, medianResources, perBroker, RESOURCE_LEGEND, resourceCells, resourceHead, table } from './format';
import type { HttpResult } from './http';
import type { LatencySummary } from './latency';
import type { RunRecord } from './output';
import type { ResourceReport } from './proc-usage';

export interface HttpSummary {
  endpoint: string;
  qos: number | null;
  runs: number;
  failed: number;
  reqPerSec: number;
  non2xx: number;
  errors: number;
  missing: Record<string, number>;
  duplicates: Record<string, number>;
  latency: LatencySummary | null;
  e2e: LatencySummary | null;
  resources: ResourceReport | null;
}

const endpointCell = (qos: number | null): string => (qos === null ? 'GET /metrics' : 'POST /publish');
const qosCell = (qos: number | null): string => (qos === null ? '-' : String(qos));

export function summarizeHttp(records: RunRecord<HttpResult>[]): HttpSummary[] {
  const keys = [...new Set(records.map((r) => String(r.qos)))];
  return keys.map((key) => {
    const group = records.filter((r) => String(r.qos) === key);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    const deliveries = ok.flatMap((x) => (x.delivery ? [x.delivery] : []));
    const brokers = [...new Set(deliveries.flatMap((d) => d.brokers.map((b) => b.broker)))];
    const byBroker = (f: 'missing' | 'duplicates'): Record<string, number> =>
      Object.fromEntries(brokers.map((b) => [b, median(deliveries.map((d) => d.brokers.find((x) => x.broker === b)?.[f] ?? NaN))]));
    return {
      endpoint: endpointCell(group[0].qos),
      qos: group[0].qos,
      runs: group.length,
      failed: group.length - ok.length,
      reqPerSec: median(ok.map((x) => x.reqPerSec)),
      non2xx: median(ok.map((x) => x.non2xx)),
      errors: median(ok.map((x) => x.errors)),
      missing: byBroker('missing'),
      duplicates: byBroker('duplicates'),
      latency: medianLatency(ok.map((x) => x.latency)),
      e2e: medianLatency(deliveries.map((d) => d.e2e)),
      resources: medianResources(ok.map((x) => x.resources)),
    };
  });
}

function problems(records: RunRecord<HttpResult>[]): string[] {
  return records.flatMap((r) => {
    const tag = `round ${r.round} ${endpointCell(r.qos)}${r.qos === null ? '' : ` qos${r.qos}`}`;
    const lines = r.error ? [`${tag}: ${r.error}`] : [];
    const x = r.result;
    if (x) {
      const other = Object.entries(x.statusCodes).filter(([code]) => !code.startsWith('2'));
      if (other.length) lines.push(`${tag}: non-2xx answers: ${other.map(([code, n]) => `${code} x${int(n)}`).join(', ')}`);
      if (x.errors) lines.push(`${tag}: ${int(x.errors)} connection errors (${int(x.timeouts)} of them timeouts)`);
      const d = x.delivery;
      if (d?.unmatched) lines.push(`${tag}: ${int(d.unmatched)} responses matched no request (bookkeeping error: delivery figures unreliable)`);
      if (d?.beyondCapacity) lines.push(`${tag}: ${int(d.beyondCapacity)} requests beyond the receivers' room were not verified`);
      if (d && d.endedBy !== 'complete') lines.push(`${tag}: gave up waiting for deliveries (${d.endedBy})`);
    }
    return [...lines, ...r.notes.map((n) => `${tag}: ${n}`)];
  });
}

export function renderHttp(records: RunRecord<HttpResult>[]): string {
  const key = (r: RunRecord<HttpResult>): string[] => [String(r.round), endpointCell(r.qos), qosCell(r.qos)];
  const runHead = ['round', 'endpoint', 'qos', 'conns', 'pipelining', 'warm-up s', 's', 'req/s', 'sent', '2xx', 'non-2xx', 'errors', 'unanswered', 'harness cpu %'];
  const runRows = records.map((r) => {
    const x = r.result;
    if (!x) return [...key(r), '-', '-', '-', '-', '-', '-', '-', '-', '-', '-', 'FAILED'];
    return [...key(r), int(x.connections), int(x.pipelining), fixed(x.warmupS, 1), fixed(x.durationS, 1), int(x.reqPerSec), int(x.sent), int(x.ok2xx), int(x.non2xx), int(x.errors), int(x.unanswered), fixed(x.harnessCpuPct, 0)];
  });
  const published = records.filter((r) => r.qos !== null);
  const delHead = ['round', 'qos', 'answered 200', 'missing', 'duplicates', 'arrived without 200', 'settle s', 'end'];
  const delRows = published.map((r) => {
    const d = r.result?.delivery;
    if (!d) return [String(r.round), qosCell(r.qos), '-', '-', '-', '-', '-', 'FAILED'];
    const per = (f: 'missing' | 'duplicates' | 'extra'): string => perBroker(Object.fromEntries(d.brokers.map((b) => [b.broker, b[f]])));
    return [String(r.round), qosCell(r.qos), int(d.answered200), per('missing'), per('duplicates'), per('extra'), fixed(d.settleMs / 1000, 2), d.endedBy];
  });
  const latHead = ['round', 'endpoint', 'qos', ...latencyHead('http'), ...latencyHead('e2e')];
  const latRows = records.map((r) => [...key(r), ...latencyCells(r.result?.latency), ...latencyCells(r.result?.delivery?.e2e)]);
  const acHead = ['round', 'endpoint', 'qos', 'p2.5', 'p50', 'p90', 'p97.5', 'p99', 'p99.9', 'avg', 'stdev', 'max'];
  const acRows = records.map((r) => {
    const a = r.result?.autocannon.latency;
    if (!a) return [...key(r), '-', '-', '-', '-', '-', '-', '-', '-', '-'];
    return [...key(r), ...[a.p2_5, a.p50, a.p90, a.p97_5, a.p99, a.p99_9].map((v) => int(v)), fixed(a.average, 2), fixed(a.stddev, 2), fixed(a.max, 1)];
  });
  const acText = records.flatMap((r) => (r.result ? [`round ${r.round}, ${endpointCell(r.qos)}${r.qos === null ? '' : ` qos ${r.qos}`}:`, r.result.autocannon.table.trimEnd(), ''] : []));
  const resHead = ['round', 'endpoint', 'qos', ...resourceHead('req')];
  const resRows = records.map((r) => [...key(r), ...resourceCells(r.result?.resources)]);

  const sums = summarizeHttp(records);
  const sumKey = (s: HttpSummary): string[] => [s.endpoint, qosCell(s.qos), s.failed ? `${s.runs - s.failed}/${s.runs}` : String(s.runs)];
  const medHead = ['endpoint', 'qos', 'runs', 'req/s', 'non-2xx', 'errors', 'missing', 'duplicates', ...resourceHead('req')];
  const medRows = sums.map((s) => [...sumKey(s), int(s.reqPerSec), int(s.non2xx), int(s.errors), perBroker(s.missing), perBroker(s.duplicates), ...resourceCells(s.resources)]);
  const medLatHead = ['endpoint', 'qos', 'runs', ...latencyHead('http'), ...latencyHead('e2e')];
  const medLatRows = sums.map((s) => [...sumKey(s), ...latencyCells(s.latency), ...latencyCells(s.e2e)]);
  const parts = [
    machineLine(records.map((r) => r.shards)),
    'No peer: mosquitto has no HTTP publish endpoint, so these runs have no ratio; mqtt-fanout only.',
    '',
    'Runs (autocannon), each after a warm-up of the same load (its requests are in sent and verified, not timed).',
    'req/s: responses per second, mean of one-second samples; unanswered: in flight when the load (or the warm-up)',
    'stopped, or lost with a connection autocannon reset. harness cpu %: this process (autocannon and the receivers share',
    'one thread) over the load, % of a core: near 100 the load generator, not the daemon, set req/s.',
    table(runHead, runRows, 3),
    '',
    ...(published.length
      ? [
          'Delivery (POST /publish). Every request answered 200 must reach both upstreams: missing counts those that did not;',
          'arrived without 200: unanswered (or refused) requests the brokers got anyway.',
          table(delHead, delRows, 2),
          '',
        ]
      : []),
    'Latency, ms. http: request written to response read, 2xx only (µs resolution); e2e: POST written to arrival at an',
    'upstream subscriber.',
    table(latHead, latRows, 3),
    '',
    'Latency, ms, as autocannon measures it: every response (not only 2xx), whole milliseconds, so on loopback its low',
    'percentiles read 0 or 1.',
    table(acHead, acRows, 3),
    '',
    "autocannon's own tables, run by run (autocannon.printResult: latency, req/s and bytes/s, status codes):",
    '',
    ...acText,
    'Resources. ' + RESOURCE_LEGEND('req', 'the load and the wait for deliveries, per request answered 2xx'),
    table(resHead, resRows, 3),
    '',
    'Medians over rounds',
    table(medHead, medRows, 3),
    '',
    table(medLatHead, medLatRows, 3),
  ];
  const notes = problems(records);
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}
