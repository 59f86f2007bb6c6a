// A thread's own health, sampled once a second into its stats row: how late its event loop ran
// (p99 and worst over the second) and how much heap it uses. The soak run and /metrics read them.

import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import * as v8 from 'node:v8';

export interface Vitals {
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  heapUsedMb: number;
}

export class ThreadVitals {
  private readonly delay: IntervalHistogram;

  constructor() {
    this.delay = monitorEventLoopDelay({ resolution: 10 });
    this.delay.enable();
  }

  /** The figures since the last call. */
  sample(): Vitals {
    const d = this.delay;
    const v: Vitals = {
      loopDelayP99Ms: d.count > 0 ? d.percentile(99) / 1e6 : 0,
      loopDelayMaxMs: d.count > 0 ? d.max / 1e6 : 0,
      heapUsedMb: v8.getHeapStatistics().used_heap_size / 1048576,
    };
    d.reset();
    return v;
  }
}
