// The allocator: the launcher (src/mqtt-fanout, what `npm start` runs) preloads jemalloc, which
// gives the memory of a load spike back to the system; FANOUT_MALLOC=system keeps the C
// library's; without jemalloc the default (auto) quietly runs on the C library's, while
// FANOUT_MALLOC=jemalloc warns that it is missing. Checked in the daemon's own /proc/<pid>/maps.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadedAllocator } from '../../src/allocator';
import { CLI, DaemonProcess, daemonEnv, type LogLine } from '../helpers/daemon';
import { track } from '../helpers/procs';
import { Scope, withTimeout } from '../helpers/wait';

const WARNING = /jemalloc is not loaded/;
const mapsOf = (pid: number): string => fs.readFileSync(`/proc/${pid}/maps`, 'latin1');

describe('allocator', { timeout: 60_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('started by the launcher, FANOUT_MALLOC unset (auto): jemalloc is mapped into the daemon with its background purging threads, its ready line says so, no warning', async () => {
    const d = scope.use(await DaemonProcess.start());
    assert.match(mapsOf(d.proc.pid!), /libjemalloc/, 'jemalloc is not mapped: is libjemalloc2 installed (.ci/run installs it)?');
    const names = fs.readdirSync(`/proc/${d.proc.pid!}/task`).map((t) => fs.readFileSync(`/proc/${d.proc.pid!}/task/${t}/comm`, 'utf8').trim());
    assert.ok(names.includes('jemalloc_bg_thd'), `no jemalloc background thread: ${names.join(', ')}`);
    const ready = await d.waitForLog((l) => l.msg === 'mqtt-fanout ready');
    assert.equal(ready.allocator, 'jemalloc');
    assert.equal(d.lines.filter((l) => WARNING.test(l.msg)).length, 0);
  });

  test('FANOUT_MALLOC=system: the C library\'s allocator, said in the ready line, no warning', async () => {
    const d = scope.use(await DaemonProcess.start({ FANOUT_MALLOC: 'system' }));
    assert.doesNotMatch(mapsOf(d.proc.pid!), /libjemalloc/);
    const ready = await d.waitForLog((l) => l.msg === 'mqtt-fanout ready');
    assert.equal(ready.allocator, 'system');
    assert.equal(d.lines.filter((l) => WARNING.test(l.msg)).length, 0);
  });

  /** Starts the daemon with node directly (no launcher, so no jemalloc) until its ready line. */
  async function withoutLauncher(env: NodeJS.ProcessEnv, check: (lines: LogLine[]) => void): Promise<void> {
    const child = track(spawn(process.execPath, [CLI], { env, stdio: ['ignore', 'pipe', 'pipe'] }));
    const lines: LogLine[] = [];
    try {
      await withTimeout(new Promise<void>((resolve, reject) => {
        let buf = '';
        child.stdout!.on('data', (chunk: Buffer) => {
          buf += chunk.toString();
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            try { lines.push(JSON.parse(line) as LogLine); } catch { /* not a log line */ }
            if (lines.at(-1)?.msg === 'mqtt-fanout ready') resolve();
          }
        });
        child.once('exit', (code) => reject(new Error(`exited with ${code}`)));
      }), 20_000, 'the ready line');
      assert.doesNotMatch(mapsOf(child.pid!), /libjemalloc/);
      assert.equal(lines.find((l) => l.msg === 'mqtt-fanout ready')?.allocator, 'system');
      check(lines);
    } finally {
      child.kill('SIGKILL');
    }
  }

  test('jemalloc not loadable and FANOUT_MALLOC unset (auto): the C library\'s allocator, said in the ready line, no warning', async () => {
    await withoutLauncher(daemonEnv(), (lines) => {
      assert.equal(lines.filter((l) => WARNING.test(l.msg)).length, 0, lines.map((l) => l.msg).join(' | '));
    });
  });

  test('FANOUT_MALLOC=jemalloc asked for by name but not loaded: a warning naming FANOUT_MALLOC', async () => {
    await withoutLauncher(daemonEnv({ FANOUT_MALLOC: 'jemalloc' }), (lines) => {
      const warning = lines.find((l) => WARNING.test(l.msg));
      assert.ok(warning, `no warning; lines: ${lines.map((l) => l.msg).join(' | ')}`);
      assert.equal(warning.level, 40);
      assert.match(warning.msg, /FANOUT_MALLOC/);
    });
  });

  test('loadedAllocator reads a maps file: jemalloc, system, unknown', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-maps-'));
    try {
      const withJe = path.join(dir, 'a');
      fs.writeFileSync(withJe, '7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n');
      const without = path.join(dir, 'b');
      fs.writeFileSync(without, '7f00-7f10 r-xp 00000000 08:01 124 /usr/lib/x86_64-linux-gnu/libc.so.6\n');
      assert.equal(loadedAllocator(withJe), 'jemalloc');
      assert.equal(loadedAllocator(without), 'system');
      assert.equal(loadedAllocator(path.join(dir, 'missing')), 'unknown');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
