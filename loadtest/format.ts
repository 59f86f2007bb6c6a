// Plain-text formatting shared by the scenario reports: aligned tables,
// medians, and the standard latency and resource columns.
import * as os from 'node:os';
import type { LatencySummary } from './latency';
import type { ResourceReport } from './proc-usage';

export function median(xs: number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export const int = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
export const ms = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) : '-');
export const fixed = (n: number, digits: number): string => (Number.isFinite(n) ? n.toFixed(digits) : '-');
export const perBroker = (m: Record<string, number>): string =>
  Object.entries(m)
    .map(([b, n]) => `${b}=${int(n)}`)
    .join(' ') || '-';

export function table(head: string[], rows: string[][], leftCols: number): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i < leftCols ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const PCTS = ['p50', 'p90', 'p99', 'p99.9', 'max'] as const;

export function latencyHead(prefix: string): string[] {
  return PCTS.map((p) => `${prefix} ${p}`);
}

export function latencyCells(s: LatencySummary | null | undefined): string[] {
  if (!s || s.count === 0) return PCTS.map(() => '-');
  return [s.p50Ms, s.p90Ms, s.p99Ms, s.p999Ms, s.maxMs].map(ms);
}

/** Field-wise median of several runs' summaries (the hdr histograms are not merged). */
export function medianLatency(xs: (LatencySummary | null | undefined)[]): LatencySummary | null {
  const ok = xs.filter((x): x is LatencySummary => !!x && x.count > 0);
  if (ok.length === 0) return null;
  const m = (f: (s: LatencySummary) => number): number => median(ok.map(f));
  return { count: m((s) => s.count), p50Ms: m((s) => s.p50Ms), p90Ms: m((s) => s.p90Ms), p99Ms: m((s) => s.p99Ms), p999Ms: m((s) => s.p999Ms), maxMs: m((s) => s.maxMs), hdr: '' };
}

export function resourceHead(unit: string): string[] {
  return [`cpu µs/${unit}`, 'peak RSS MB', `upstreams µs/${unit}`];
}

export function resourceCells(r: ResourceReport | null | undefined): string[] {
  if (!r) return ['-', '-', '-'];
  return [fixed(r.targetCpuUs, 1), fixed(r.targetPeakRssKB / 1024, 1), fixed(r.upstreamCpuUs, 1)];
}

export function medianResources(xs: (ResourceReport | null | undefined)[]): ResourceReport | null {
  const ok = xs.filter((x): x is ResourceReport => !!x);
  if (ok.length === 0) return null;
  return {
    unit: ok[0].unit,
    units: median(ok.map((r) => r.units)),
    windowS: median(ok.map((r) => r.windowS)),
    processes: [],
    targetCpuUs: median(ok.map((r) => r.targetCpuUs)),
    upstreamCpuUs: median(ok.map((r) => r.upstreamCpuUs)),
    targetPeakRssKB: median(ok.map((r) => r.targetPeakRssKB)),
  };
}

/** Shown above every report: fanout's figures only mean something next to its shard count and the cores. */
export function machineLine(shards: (number | null)[]): string {
  const s = [...new Set(shards.filter((x): x is number => x !== null))];
  const fanout = s.length ? `; mqtt-fanout FANOUT_SHARDS=${s.join('/')}` : '';
  return `Machine: os.cpus().length=${os.cpus().length}${fanout}`;
}

export const RESOURCE_LEGEND = (unit: string, what: string): string =>
  `cpu µs/${unit}: target (daemon or bridge mosquitto) utime+stime, all threads, over ${what}; ` +
  `upstreams µs/${unit}: both upstream mosquittos together; peak RSS: target VmRSS sampled every 250 ms.`;
