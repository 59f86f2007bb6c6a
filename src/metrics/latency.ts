// Latency histograms (HdrHistogram, microseconds) kept by the threads that see both ends of a
// wait: shards for device publish -> device ack, writers for broker round trips. The
// supervisor collects them every second in HdrHistogram's compressed encoding (full resolution,
// no averaging of per-thread percentiles) and keeps a sliding window.

import * as hdr from 'hdr-histogram-js';

export type Histogram = hdr.Histogram;

export function newHistogram(): Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: 3, autoResize: true, useWebAssembly: false });
}

/** Records in one thread; take() hands over what was recorded since the last take(). */
export class LatencyRecorder {
  private h = newHistogram();
  private recorded = 0;

  /** Records a wait that started at `startMs` (performance.now() clock). */
  since(startMs: number, nowMs: number): void {
    const us = Math.round((nowMs - startMs) * 1000);
    this.h.recordValue(us > 0 ? us : 0);
    this.recorded++;
  }

  /** The histogram since the last take, encoded; '' when nothing was recorded. */
  take(): string {
    if (this.recorded === 0) return '';
    const encoded = hdr.encodeIntoCompressedBase64(this.h);
    this.h.reset();
    this.recorded = 0;
    return encoded;
  }
}

export function decodeHistogram(encoded: string): Histogram {
  return hdr.decodeFromCompressedBase64(encoded, 32, false);
}
