// Log formats of the daemon, started through its launcher: JSON lines wherever standard output is
// not a terminal; FANOUT_LOG_FORMAT=pretty (the default on a terminal) gives pino-pretty's lines,
// the workers' lines included, since the supervisor's transport thread formats them all; the
// last lines of a shutdown still come out.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { daemonCommand } from '../src/allocator';
import { closeClient, connectClient } from './helpers/clients';
import { CLI, DaemonProcess, daemonEnv } from './helpers/daemon';
import { freePort } from './helpers/ports';
import { exitOf, track } from './helpers/procs';
import { Scope, waitFor, withTimeout } from './helpers/wait';

const SCRIPT = ['/usr/bin/script', '/bin/script'].find((p) => fs.existsSync(p));
const ESC = String.fromCharCode(27);
const READY = /^\[[\d-]+ [\d:.]+\] INFO: mqtt-fanout ready/m;
/** The text without carriage returns and colour codes. */
const plain = (text: string): string => text.replace(/\r/g, '').split(ESC).map((part, i) => (i === 0 ? part : part.replace(/^\[\d+m/, ''))).join('');

const isJson = (line: string): boolean => {
  try {
    return typeof JSON.parse(line) === 'object';
  } catch {
    return false;
  }
};

describe('log format', { timeout: 90_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('standard output a pipe, FANOUT_LOG_FORMAT unset: one JSON object per line', async () => {
    const d = scope.use(await DaemonProcess.start({ FANOUT_LOG_FORMAT: undefined }));
    const info = await d.stop();
    assert.equal(info.code, 0);
    const lines = d.stdout.split('\n').filter((l) => l !== '');
    assert.ok(lines.length > 3);
    assert.deepEqual(lines.filter((l) => !isJson(l)), []);
  });

  test('FANOUT_LOG_FORMAT=pretty: pino-pretty lines for the supervisor\'s and the shards\' events, no JSON, shutdown lines kept', async () => {
    const port = await freePort();
    const d = DaemonProcess.spawn({ FANOUT_LOG_FORMAT: 'pretty', FANOUT_PORT: port, FANOUT_TRACE_CLIENTS: 'pretty-*' });
    scope.use(d);
    await waitFor('the pretty ready line', () => READY.test(d.stdout), { timeoutMs: 30_000, detail: () => d.stdout + d.stderr });
    assert.match(d.stdout, new RegExp(`^ {4}port: ${port}$`, 'm'));
    assert.match(d.stdout, /^ {4}thread: "writer-embedded"$/m, 'a writer\'s line is formatted too');
    // A traced CONNECT is logged by the shard that took it: its line, too, reaches stdout formatted.
    const client = await connectClient(port, { clientId: 'pretty-1' });
    await closeClient(client);
    await waitFor('a shard\'s trace line', () => /^ {4}thread: "shard-\d+"$/m.test(d.stdout),
      { timeoutMs: 10_000, detail: () => d.stdout });
    const info = await d.stop();
    assert.equal(info.code, 0, d.stderr);
    assert.match(d.stdout, /INFO: stopped$/m);
    assert.ok(!d.stdout.includes(ESC), 'no colours when standard output is not a terminal');
    assert.deepEqual(d.stdout.split('\n').filter((l) => l.startsWith('{')), [], 'no JSON line');
  });

  test('standard output a terminal, FANOUT_LOG_FORMAT unset: coloured pretty lines', { skip: SCRIPT === undefined ? 'util-linux script is not installed (needed for a pseudo-terminal)' : false }, async () => {
    const run = daemonCommand(CLI);
    const env = { ...daemonEnv({ FANOUT_LOG_FORMAT: undefined }), ...run.env };
    const quoted = [run.command, ...run.args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
    // script runs the command on a pseudo-terminal; exec makes the daemon its child.
    const child = track(spawn(SCRIPT!, ['-qfec', `exec ${quoted}`, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] }));
    const exited = exitOf(child);
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => { out += chunk.toString(); });
    try {
      await waitFor('the pretty ready line', () => READY.test(plain(out)), { timeoutMs: 30_000, detail: () => out });
      assert.ok(out.includes(`${ESC}[32mINFO${ESC}[39m`), 'INFO is coloured');
      assert.doesNotMatch(out, /^\{"level"/m);
      const daemon = Number(fs.readFileSync(`/proc/${child.pid!}/task/${child.pid!}/children`, 'utf8').trim().split(' ')[0]);
      assert.ok(daemon > 0, 'the daemon runs under script');
      process.kill(daemon, 'SIGTERM');
      const info = await withTimeout(exited, 15_000, 'the daemon to exit');
      assert.equal(info.code, 0, out);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
