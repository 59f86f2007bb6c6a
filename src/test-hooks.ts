// Fault injection for the restart tests, reachable only with FANOUT_TEST_HOOKS=true (POST
// /test/crash on the HTTP listener).

import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';

/**
 * FANOUT_TEST_HOOKS: makes this thread fail the way a defect would, for the restart tests: an
 * error no handler catches, or a heap that outgrows FANOUT_THREAD_HEAP_MB.
 */
export function crashForTest(kind: 'throw' | 'oom'): void {
  if (kind === 'throw') {
    setImmediate(() => { throw new Error('crash requested by POST /test/crash'); });
    return;
  }
  // About 100 MB/s, the pace of a bad leak under load rather than of one runaway allocation.
  const hoard: unknown[] = [];
  const grow = (): void => {
    for (let i = 0; i < 16; i++) hoard.push(new Array(8192).fill(i));
    setTimeout(grow, 10);
  };
  grow();
}

/** FANOUT_TEST_HOOKS: a V8 heap snapshot of this thread in the system's temporary directory. */
export function writeHeapSnapshot(thread: string): string {
  return v8.writeHeapSnapshot(path.join(os.tmpdir(), `fanout-${thread}-${process.pid}-${Date.now()}.heapsnapshot`));
}
