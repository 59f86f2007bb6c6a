// Which memory allocator this process runs on. The launcher (src/mqtt-fanout) preloads jemalloc
// where FANOUT_MALLOC asks for it and it is installed; the daemon only checks and says so.

import * as fs from 'node:fs';
import * as path from 'node:path';

export type Allocator = 'jemalloc' | 'system' | 'unknown';

/** jemalloc when its library is mapped into this process, else the system's (the C library's);
 *  unknown where /proc/self/maps cannot be read. */
export function loadedAllocator(maps = '/proc/self/maps'): Allocator {
  let text: string;
  try {
    text = fs.readFileSync(maps, 'latin1');
  } catch {
    return 'unknown';
  }
  return /libjemalloc[^/\n]*\.so/.test(text) ? 'jemalloc' : 'system';
}

/** The launcher of the build whose entry point is `cli` (<root>/dist/src/cli.js): <root>/src/mqtt-fanout,
 *  or null where that build has none. */
export function launcherFor(cli: string): string | null {
  const launcher = path.resolve(path.dirname(cli), '..', '..', 'src', 'mqtt-fanout');
  return fs.existsSync(launcher) ? launcher : null;
}

/** How to start the daemon of the build whose entry point is `cli` as operators do (through its
 *  launcher, which preloads the allocator FANOUT_MALLOC names), with `nodeArgs` for node. */
export function daemonCommand(cli: string, nodeArgs: string[] = []): { command: string; args: string[]; env: NodeJS.ProcessEnv } {
  const launcher = launcherFor(cli);
  if (launcher === null) return { command: process.execPath, args: [...nodeArgs, cli], env: {} };
  return { command: '/bin/sh', args: [launcher], env: { NODE: process.execPath, ...(nodeArgs.length > 0 ? { NODE_ARGS: nodeArgs.join(' ') } : {}) } };
}
