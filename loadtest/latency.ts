// Latency histograms in microseconds. Workers ship them to the main thread in
// HdrHistogram's compressed encoding so merging keeps full resolution instead
// of averaging per-thread percentiles.
import * as hdr from 'hdr-histogram-js';

export type Histogram = hdr.Histogram;

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  /** The whole histogram (µs), HdrHistogram compressed base64, for the JSON output. */
  hdr: string;
}

export function newHistogram(): Histogram {
  // One hour ceiling in µs; autoResize keeps a pathological stall from throwing mid-run.
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: 3, autoResize: true });
}

export function recordMs(h: Histogram, ms: number): void {
  // Cross-thread wall clocks can disagree by a few µs; a negative latency is just zero.
  h.recordValue(ms > 0 ? Math.round(ms * 1000) : 0);
}

export function encodeHistogram(h: Histogram): string {
  return hdr.encodeIntoCompressedBase64(h);
}

export function mergeEncoded(target: Histogram, encoded: string): void {
  const h = hdr.decodeFromCompressedBase64(encoded);
  target.add(h);
  h.destroy();
}

export function summarize(h: Histogram): LatencySummary {
  const ms = (p: number): number => h.getValueAtPercentile(p) / 1000;
  return {
    count: h.totalCount,
    p50Ms: ms(50),
    p90Ms: ms(90),
    p99Ms: ms(99),
    p999Ms: ms(99.9),
    maxMs: h.maxValue / 1000,
    hdr: h.totalCount > 0 ? encodeHistogram(h) : '',
  };
}
