// Garbage-collection pauses of one thread, from perf_hooks 'gc' entries (V8's GC prologue and
// epilogue callbacks: the time the thread's JavaScript stood still). Each thread's vitals keep
// one (src/metrics/vitals.ts): the longest pause since the thread started, their count and total
// reach /metrics as fanout_thread_gc_pause_max_seconds, fanout_thread_gc_pauses_total and
// fanout_thread_gc_pause_seconds_total. Collections the thread forces itself (the idle
// collection of vitals.ts, `gc()`) are left out: they run when nothing waits.

import { constants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';

export interface GcFigures {
  /** Longest pause since start, ms. */
  pauseMaxMs: number;
  pauses: number;
  pauseTotalMs: number;
}

export class GcPauses implements GcFigures {
  pauseMaxMs = 0;
  pauses = 0;
  pauseTotalMs = 0;
  private readonly observer: PerformanceObserver;

  constructor() {
    // Delivered in batches after the collections, off the hot path; a few per second under load.
    this.observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) this.record(e);
    });
    this.observer.observe({ entryTypes: ['gc'] });
  }

  record(entry: PerformanceEntry): void {
    const flags = (entry as PerformanceEntry & { detail?: { flags?: number } | null }).detail?.flags ?? 0;
    if ((flags & constants.NODE_PERFORMANCE_GC_FLAGS_FORCED) !== 0) return;
    this.pauses++;
    this.pauseTotalMs += entry.duration;
    if (entry.duration > this.pauseMaxMs) this.pauseMaxMs = entry.duration;
  }

  figures(): GcFigures {
    return { pauseMaxMs: this.pauseMaxMs, pauses: this.pauses, pauseTotalMs: this.pauseTotalMs };
  }

  stop(): void {
    this.observer.disconnect();
  }
}
