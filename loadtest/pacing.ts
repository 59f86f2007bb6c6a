// Opening many connections: a bounded number of handshakes in flight (thousands
// of simultaneous SYNs would measure the accept backlog rather than the target)
// and optionally a rate, so a ramp is a schedule rather than a burst.
import { sleep } from './procs';

export interface OpenPlan {
  /** Handshakes in flight at once. */
  concurrency: number;
  /** Attempts started per second; 0 = as fast as `concurrency` allows. */
  ratePerSec: number;
}

/**
 * Calls `open(i)` for i in [from, to) under `plan`. A rejection of `open`
 * propagates (after the other lanes finish their current attempt); callers
 * that want to count failures instead catch inside `open`.
 */
export async function openPaced(from: number, to: number, open: (i: number) => Promise<void>, plan: OpenPlan): Promise<void> {
  let next = from;
  const startedAt = performance.now();
  const intervalMs = plan.ratePerSec > 0 ? 1000 / plan.ratePerSec : 0;
  const lane = async (): Promise<void> => {
    while (next < to) {
      const i = next++;
      if (intervalMs > 0) {
        const due = startedAt + (i - from) * intervalMs;
        const wait = due - performance.now();
        if (wait >= 1) await sleep(wait);
      }
      await open(i);
    }
  };
  const lanes = Math.max(1, Math.min(plan.concurrency, to - from));
  await Promise.all(Array.from({ length: lanes }, lane));
}

/** Splits `total` as evenly as possible over `parts` (the first ones get the remainder). */
export function share(total: number, parts: number, index: number): number {
  return Math.floor(total / parts) + (index < total % parts ? 1 : 0);
}
