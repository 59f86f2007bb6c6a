// Output: one aligned plain-text table (per run, then medians and the
// fanout/mosquitto ratio), an optional JSON file with every raw figure, and a
// single self-overwriting progress line when a human is watching stderr.
import * as fs from 'node:fs';
import type { Qos } from './mqtt-wire';
import type { Options } from './options';
import type { TargetKind } from './targets';
import type { Progress, ScenarioResult } from './uplink';

export interface RunRecord {
  round: number;
  target: TargetKind;
  qos: Qos;
  /** Set when the run could not be measured (target failed to start, probe timed out, ...). */
  error: string | null;
  result: ScenarioResult | null;
  notes: string[];
}

interface Summary {
  target: TargetKind;
  qos: Qos;
  runs: number;
  failed: number;
  msgPerSec: number;
  deliveredPerSec: number;
  ackP50Ms: number;
  ackP99Ms: number;
  e2eP50Ms: number;
  e2eP99Ms: number;
  missing: Record<string, number>;
  duplicates: Record<string, number>;
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const int = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
const ms = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) : '-');
const perBroker = (m: Record<string, number>): string =>
  Object.entries(m)
    .map(([b, n]) => `${b}=${int(n)}`)
    .join(' ') || '-';

function table(head: string[], rows: string[][], leftCols: number): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i < leftCols ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

export function summarize(records: RunRecord[]): Summary[] {
  const out: Summary[] = [];
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
      runs: group.length,
      failed: group.length - ok.length,
      msgPerSec: median(ok.map((r) => r.msgPerSec)),
      deliveredPerSec: median(ok.map((r) => r.deliveredPerSec)),
      ackP50Ms: qos > 0 ? median(ok.map((r) => r.publisher.ack.p50Ms)) : NaN,
      ackP99Ms: qos > 0 ? median(ok.map((r) => r.publisher.ack.p99Ms)) : NaN,
      e2eP50Ms: median(ok.map((r) => r.e2e.p50Ms)),
      e2eP99Ms: median(ok.map((r) => r.e2e.p99Ms)),
      missing: byBroker('missing'),
      duplicates: byBroker('duplicates'),
    });
  }
  return out;
}

/** fanout over mosquitto per QoS, from the medians (`qos1` for msg/s, `qos1 deliv` for deliv/s). */
export function ratios(summaries: Summary[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of summaries.filter((x) => x.target === 'fanout')) {
    const base = summaries.find((x) => x.target === 'mosquitto' && x.qos === s.qos);
    if (base && base.msgPerSec > 0) out[`qos${s.qos}`] = s.msgPerSec / base.msgPerSec;
    if (base && base.deliveredPerSec > 0) out[`qos${s.qos} deliv`] = s.deliveredPerSec / base.deliveredPerSec;
  }
  return out;
}

export function renderReport(records: RunRecord[]): string {
  const head = ['round', 'target', 'qos', 'msg/s', 'deliv/s', 'ack p50', 'ack p99', 'e2e p50', 'e2e p99', 'missing', 'duplicates', 'end'];
  const rows = records.map((r) => {
    const x = r.result;
    if (!x) return [String(r.round), r.target, String(r.qos), '-', '-', '-', '-', '-', '-', '-', '-', 'FAILED'];
    const ackOk = r.qos > 0 && x.publisher.ack.count > 0;
    return [
      String(r.round),
      r.target,
      String(r.qos),
      int(x.msgPerSec),
      int(x.deliveredPerSec),
      ackOk ? ms(x.publisher.ack.p50Ms) : '-',
      ackOk ? ms(x.publisher.ack.p99Ms) : '-',
      ms(x.e2e.p50Ms),
      ms(x.e2e.p99Ms),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.missing]))),
      perBroker(Object.fromEntries(x.brokers.map((b) => [b.broker, b.duplicates]))),
      x.endedBy,
    ];
  });
  const sums = summarize(records);
  const medHead = ['target', 'qos', 'runs', 'msg/s', 'deliv/s', 'ack p50', 'ack p99', 'e2e p50', 'e2e p99', 'missing', 'duplicates'];
  const medRows = sums.map((s) => [
    s.target,
    String(s.qos),
    s.failed ? `${s.runs - s.failed}/${s.runs}` : String(s.runs),
    int(s.msgPerSec),
    int(s.deliveredPerSec),
    ms(s.ackP50Ms),
    ms(s.ackP99Ms),
    ms(s.e2eP50Ms),
    ms(s.e2eP99Ms),
    perBroker(s.missing),
    perBroker(s.duplicates),
  ]);
  const parts = [
    'Runs. msg/s: QoS 1/2 device acks / first send..last ack; QoS 0 = deliv/s.',
    '      deliv/s: slowest broker\'s deliveries / first send..its last delivery. Latencies in ms.',
    table(head, rows, 3),
    '',
    'Medians over rounds',
    table(medHead, medRows, 2),
  ];
  const rat = ratios(sums);
  const ratioLine = (deliv: boolean): string =>
    Object.entries(rat)
      .filter(([k]) => k.endsWith(' deliv') === deliv)
      .map(([k, v]) => `${k.split(' ')[0]} ${v.toFixed(2)}x`)
      .join(', ');
  if (Object.keys(rat).length > 0) {
    parts.push('', `fanout/mosquitto msg/s:   ${ratioLine(false)}`, `fanout/mosquitto deliv/s: ${ratioLine(true)}`);
  }
  const problems = records.flatMap((r) => {
    const tag = `round ${r.round} ${r.target} qos${r.qos}`;
    const lines = r.error ? [`${tag}: ${r.error}`] : [];
    const x = r.result;
    if (x && x.publisher.errors.length) lines.push(`${tag}: ${x.publisher.errors.length} device error(s), first: ${x.publisher.errors[0]}`);
    if (x && x.publisher.unexpectedAcks) lines.push(`${tag}: ${x.publisher.unexpectedAcks} unexpected acks`);
    if (x && r.qos > 0 && x.publisher.acked < x.publisher.expected) lines.push(`${tag}: only ${int(x.publisher.acked)} of ${int(x.publisher.expected)} acked`);
    return [...lines, ...r.notes.map((n) => `${tag}: ${n}`)];
  });
  if (problems.length) parts.push('', 'Notes', ...problems);
  return parts.join('\n') + '\n';
}

export function writeJson(file: string, opts: Options, records: RunRecord[], startedAt: Date): void {
  const sums = summarize(records);
  const doc = { startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), options: opts, runs: records, medians: sums, ratios: ratios(sums) };
  // NaN is not JSON; null says "no figure" without breaking parsers.
  fs.writeFileSync(file, JSON.stringify(doc, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
}

/** A single stderr line rewritten in place; silent unless stderr is a terminal. */
export class ProgressLine {
  private readonly enabled = process.stderr.isTTY === true;
  private last = 0;

  update(label: string, p: Progress): void {
    if (!this.enabled || Date.now() - this.last < 200) return;
    this.last = Date.now();
    const recv = p.received.map((n, i) => `b${i + 1} ${int(n)}`).join(' ');
    this.write(`${label} ${p.elapsedS.toFixed(1)}s sent ${int(p.sent)} acked ${int(p.acked)} recv ${recv}`);
  }

  write(text: string): void {
    if (this.enabled) process.stderr.write(`\r\x1b[K${text.slice(0, (process.stderr.columns || 120) - 1)}`);
  }

  clear(): void {
    if (this.enabled) process.stderr.write('\r\x1b[K');
  }
}
