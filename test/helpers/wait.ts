// Waiting on conditions instead of fixed sleeps: every wait has a deadline and says, when it
// runs out, what it was waiting for (and optionally what it saw instead).

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export interface WaitOptions {
  /** Give up after this long (default 10 s). */
  timeoutMs?: number;
  /** Poll interval (default 20 ms). */
  intervalMs?: number;
  /** Extra diagnostics for the timeout message, evaluated only on timeout. */
  detail?: () => string;
}

/**
 * Polls `check` until it returns something other than undefined/false/null, and resolves with
 * that value. Rejects with a message naming `what` after the timeout.
 */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  opts: WaitOptions = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 20;
  const started = Date.now();
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== null && value !== false) return value;
    if (Date.now() - started > timeoutMs) {
      const extra = opts.detail ? `: ${opts.detail()}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${extra}`);
    }
    await sleep(intervalMs);
  }
}

/** Rejects when `promise` has not settled within `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Collects cleanup steps and runs them in reverse order, never throwing, so one failing
 *  cleanup does not leave the later processes running. */
export class Scope {
  private readonly steps: Array<() => unknown> = [];

  defer(step: () => unknown): void {
    this.steps.push(step);
  }

  /** Registers `resource.close()` and returns the resource. */
  use<T extends { close(): unknown }>(resource: T): T {
    this.defer(() => resource.close());
    return resource;
  }

  async close(): Promise<void> {
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await withTimeout(Promise.resolve().then(step), 10_000, 'a cleanup step');
      } catch (err) {
        process.stderr.write(`cleanup step failed: ${(err as Error).message}\n`);
      }
    }
  }
}

/** A pending Atomics.waitAsync does not keep Node's event loop alive: hold it open meanwhile. */
export async function alive<T>(p: Promise<T>): Promise<T> {
  const keep = setInterval(() => {}, 60_000);
  try {
    return await p;
  } finally {
    clearInterval(keep);
  }
}
