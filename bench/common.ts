// Shared helpers of the micro benchmarks (not a benchmark itself: bench/run.ts only runs
// *.bench.js files).
//
// Every benchmark prints a human-readable table and, for bench/run.ts, one machine-readable
// line per result: "##bench " + JSON (BenchRow).

export interface BenchRow {
  bench: string;
  case: string;
  variant: string;
  /** Median of the runs. */
  value: number;
  unit: string;
  /** A second figure (MB/s, deviation, ...), median too. */
  extra?: { value: number; unit: string };
  runs: number;
}

export const RESULT_PREFIX = '##bench ';

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Set by bench/run.ts: the child then also prints its results as "##bench" lines. */
export const REPORT_ENV = 'BENCH_REPORT';

export function emit(row: BenchRow): void {
  if (process.env[REPORT_ENV] === '1') process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(row)}\n`);
}

/** 1234567 -> "1.23 M", 12345 -> "12.3 k". */
export function si(n: number): string {
  const abs = Math.abs(n);
  if (abs >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (abs >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (abs >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(abs < 10 ? 2 : 0);
}

/** A plain-text table; `leftColumns` columns are left-aligned, the rest right-aligned. */
export function table(header: string[], rows: string[][], leftColumns = 1): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** Sink that keeps results observable so the JIT cannot drop the measured work. */
export let blackhole = 0;
export function consume(x: number): void {
  blackhole = (blackhole + x) | 0;
}

/**
 * Runs `op` (which performs `opsPerCall` operations) in a tight loop for about `ms`
 * milliseconds, `runs` times after a warm-up, and returns the ops/s of every run.
 */
export function measure(op: () => void, opsPerCall: number, opts: { ms?: number; runs?: number; warmupMs?: number } = {}): number[] {
  const ms = opts.ms ?? 200;
  const runs = opts.runs ?? 5;
  timeLoop(op, opts.warmupMs ?? 150);
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    const { calls, seconds } = timeLoop(op, ms);
    rates.push((calls * opsPerCall) / seconds);
  }
  return rates;
}

function timeLoop(op: () => void, ms: number): { calls: number; seconds: number } {
  const start = process.hrtime.bigint();
  const budget = BigInt(ms) * 1_000_000n;
  let calls = 0;
  let now = start;
  // Check the clock every `batch` calls only, growing the batch while calls are cheap.
  let batch = 1;
  while (now - start < budget) {
    for (let i = 0; i < batch; i++) op();
    calls += batch;
    now = process.hrtime.bigint();
    if (now - start < budget / 64n) batch *= 2;
  }
  return { calls, seconds: Number(now - start) / 1e9 };
}
