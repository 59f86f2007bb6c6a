// Two ends of a MessageChannel for unit tests of thread-facing code, and a way to know that
// everything posted so far has been handled on the other side, without timers.

import type { MessagePort } from 'node:worker_threads';

type Mark = { t: 'mark'; n: number };

/** One end of a channel: collects what arrives, and the marks used to know a turn is over. */
export class End {
  readonly got: unknown[] = [];
  private readonly marks = new Map<number, () => void>();

  constructor(readonly port: MessagePort) {
    port.on('message', (m: { t: string }) => {
      if (m.t === 'mark') {
        const n = (m as Mark).n;
        this.marks.get(n)?.();
        this.marks.delete(n);
      } else {
        this.got.push(m);
      }
    });
  }

  expect(n: number, resolve: () => void): void {
    this.marks.set(n, resolve);
  }

  take(): unknown[] {
    return this.got.splice(0);
  }
}

let markCount = 0;
/** Resolves once everything posted from `from` so far has been handled at `to` (messages on a
 *  channel arrive in order, and listeners run in the order they were added). */
export function sync(from: End, to: End): Promise<void> {
  const n = ++markCount;
  const done = new Promise<void>((resolve) => to.expect(n, resolve));
  from.port.postMessage({ t: 'mark', n } satisfies Mark);
  return done;
}
