// A thread's own health, sampled once a second into its stats row: how late its event loop ran
// (p99 and worst over the second), how much heap it uses and how long its garbage collections
// stood it still (the longest since start, src/metrics/gc.ts). The soak run and /metrics read them.
//
// It also gives memory back after a load spike: V8 collects when allocating, so a thread that
// goes quiet after a burst keeps its garbage, the heap pages the burst grew and the Buffers its
// garbage still holds (and the process its RSS) indefinitely. A thread that has been idle for a
// few seconds after being busy collects once (a full collection also gives back the pages and
// frees the Buffers). This needs `gc`, which the daemon's entry point exposes (src/cli.ts).

import { monitorEventLoopDelay, performance, type EventLoopUtilization, type IntervalHistogram } from 'node:perf_hooks';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { GcPauses } from './gc';

export interface Vitals {
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  heapUsedMb: number;
  /** Heap V8 holds from the system (used or not), and memory outside it that JS objects own
   *  (Buffers, ArrayBuffers): what the heap figure alone does not explain of the RSS. */
  heapCommittedMb: number;
  externalMb: number;
  /** GC pauses since the thread started, forced collections left out (src/metrics/gc.ts). */
  gcPauseMaxMs: number;
  gcPauses: number;
  gcPauseTotalMs: number;
}

/** Seconds of near-idle event loop before an idle collection. */
const IDLE_S = 5;
const IDLE_UTILIZATION = 0.05;
/** Busy seconds since the last collection that make the next idle stretch worth one. */
const BUSY_S = 2;
/** Or: heap growth since the last collection that is worth one, busy or not. */
const GROWTH_MB = 32;
/** At most one idle collection in this long. */
const MIN_INTERVAL_MS = 30_000;

function collector(): (() => void) | null {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return g;
  try {
    const fromContext = vm.runInNewContext('typeof gc === "function" ? gc : null') as (() => void) | null;
    return fromContext;
  } catch {
    return null;
  }
}

const heapMb = (): number => v8.getHeapStatistics().used_heap_size / 1048576;

export class ThreadVitals {
  private readonly delay: IntervalHistogram;
  private readonly gc = collector();
  private readonly pauses = new GcPauses();
  private elu: EventLoopUtilization = performance.eventLoopUtilization();
  private idleS = 0;
  /** Seconds with the loop busier than IDLE_UTILIZATION since the last idle collection. */
  private busyS = 0;
  private heapAfterGc = heapMb();
  private lastGc = 0;
  /** Idle collections made. */
  collections = 0;

  constructor() {
    this.delay = monitorEventLoopDelay({ resolution: 10 });
    this.delay.enable();
  }

  /** The figures since the last call (call once a second). */
  sample(): Vitals {
    const d = this.delay;
    const v: Vitals = {
      loopDelayP99Ms: d.count > 0 ? d.percentile(99) / 1e6 : 0,
      loopDelayMaxMs: d.count > 0 ? d.max / 1e6 : 0,
      heapUsedMb: heapMb(),
      heapCommittedMb: v8.getHeapStatistics().total_heap_size / 1048576,
      externalMb: process.memoryUsage().external / 1048576,
      gcPauseMaxMs: this.pauses.pauseMaxMs,
      gcPauses: this.pauses.pauses,
      gcPauseTotalMs: this.pauses.pauseTotalMs,
    };
    d.reset();
    this.reclaim(v.heapUsedMb);
    return v;
  }

  private reclaim(used: number): void {
    const now = performance.eventLoopUtilization();
    const busy = performance.eventLoopUtilization(now, this.elu).utilization;
    this.elu = now;
    if (busy < IDLE_UTILIZATION) this.idleS++;
    else {
      this.idleS = 0;
      this.busyS++;
    }
    if (used < this.heapAfterGc) this.heapAfterGc = used;
    if (this.gc === null || this.idleS < IDLE_S || Date.now() - this.lastGc < MIN_INTERVAL_MS) return;
    if (this.busyS < BUSY_S && used < this.heapAfterGc + GROWTH_MB) return;
    this.gc();
    this.collections++;
    this.busyS = 0;
    this.lastGc = Date.now();
    this.heapAfterGc = heapMb();
  }
}
