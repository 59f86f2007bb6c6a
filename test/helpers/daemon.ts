// The built daemon (dist/src/cli.js) as a child process: environment with test defaults, wait
// for the "mqtt-fanout ready" line, every pino line kept for assertions, SIGTERM with the exit
// code, and SIGKILL on cleanup whatever happened.

import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { HOST } from './ports';
import { exitOf, isRunning, track, type ExitInfo } from './procs';
import { waitFor, withTimeout } from './wait';
import { daemonCommand } from '../../src/allocator';

/** dist/test/helpers/daemon.js -> dist/src/cli.js */
export const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli.js');

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

let counter = 0;

/** A proxy id no other daemon of this run (or of a parallel run) uses. */
export function uniqueProxyId(tag = 'it'): string {
  counter++;
  return `${tag}-${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`.slice(0, 64);
}

/**
 * The environment for a daemon: the parent's environment without any FANOUT_* variable, test
 * defaults, then `overrides` (a value of undefined removes the variable).
 */
export function daemonEnv(overrides: Record<string, string | number | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FANOUT_')) env[k] = v;
  const defaults: Record<string, string | number | undefined> = {
    FANOUT_HOST: HOST,
    FANOUT_PORT: 0,
    FANOUT_SHARDS: 2,
    FANOUT_LOG_LEVEL: 'info',
    FANOUT_PROXY_ID: uniqueProxyId(),
    FANOUT_RECONNECT_MIN_MS: 50,
    FANOUT_RECONNECT_MAX_MS: 500,
    FANOUT_SHUTDOWN_TIMEOUT_MS: 3000,
  };
  for (const [k, v] of Object.entries({ ...defaults, ...overrides })) {
    if (v === undefined) delete env[k];
    else env[k] = String(v);
  }
  return env;
}

export class DaemonProcess {
  readonly lines: LogLine[] = [];
  stdout = '';
  stderr = '';
  port = 0;
  /** WebSocket port (FANOUT_WS_PORT set), else 0. */
  wsPort = 0;
  /** Secure WebSocket port (FANOUT_WSS_PORT set), else 0. */
  wssPort = 0;
  readonly proxyId: string;
  /** Resolves when the process has exited and its output is read. */
  readonly exited: Promise<ExitInfo>;
  private partial = '';

  private constructor(readonly proc: ChildProcess, readonly env: NodeJS.ProcessEnv) {
    this.proxyId = env.FANOUT_PROXY_ID ?? '';
    proc.stdout!.setEncoding('utf8');
    proc.stderr!.setEncoding('utf8');
    proc.stdout!.on('data', (s: string) => this.onStdout(s));
    proc.stderr!.on('data', (s: string) => { this.stderr += s; });
    this.exited = exitOf(proc);
    void this.exited.then((info) => {
      if (this.expectExit) return;
      // Not asked to exit: make the cause visible next to whichever assertion fails next.
      const tail = this.lines.slice(-15).map((l) => JSON.stringify(l)).join('\n');
      process.stderr.write(`\n[daemon ${this.proxyId} exited unexpectedly: code ${info.code}, signal ${info.signal}]\nstderr:\n${this.stderr}\nlast log lines:\n${tail}\n`);
    });
  }

  /** Set once the test asks the daemon to exit (stop/close), or expects it to exit by itself. */
  expectExit = false;

  /** Spawns the daemon (with command-line `args`) without waiting for anything. */
  static spawn(overrides: Record<string, string | number | undefined> = {}, args: readonly string[] = []): DaemonProcess {
    const env = daemonEnv(overrides);
    // Through the launcher, as operators start it (the allocator FANOUT_MALLOC names); it execs
    // node, so the child's pid is the daemon's.
    const run = daemonCommand(CLI);
    const proc = track(spawn(run.command, [...run.args, ...args], { env: { ...env, ...run.env }, stdio: ['ignore', 'pipe', 'pipe'] }));
    return new DaemonProcess(proc, env);
  }

  /** Spawns the daemon and waits for its ready line (rejects if it exits first). */
  static async start(overrides: Record<string, string | number | undefined> = {}, timeoutMs = 30_000): Promise<DaemonProcess> {
    const d = DaemonProcess.spawn(overrides);
    try {
      const ready = await d.waitForLog((l) => l.msg === 'mqtt-fanout ready', timeoutMs);
      d.port = Number(ready.port);
      d.wsPort = Number(ready.wsPort ?? 0);
      d.wssPort = Number(ready.wssPort ?? 0);
    } catch (err) {
      await d.close();
      throw err;
    }
    return d;
  }

  private onStdout(s: string): void {
    this.stdout += s;
    const text = this.partial + s;
    const parts = text.split('\n');
    this.partial = parts.pop()!;
    for (const part of parts) {
      if (part.trim() === '') continue;
      try {
        this.lines.push(JSON.parse(part) as LogLine);
      } catch {
        this.lines.push({ level: 0, msg: part });
      }
    }
  }

  get running(): boolean {
    return isRunning(this.proc);
  }

  /** Waits for a log line matching `pred` (already logged or still to come). Rejects early
   *  if the process exits without logging it. */
  async waitForLog(pred: (l: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    return waitFor('a matching daemon log line', () => {
      const hit = this.lines.find(pred);
      if (hit) return hit;
      if (!this.running) throw new Error(`daemon exited (${this.proc.exitCode ?? this.proc.signalCode}) without the expected log line; stderr: ${this.stderr.trim()}; stdout tail: ${this.stdout.slice(-2000)}`);
      return undefined;
    }, { timeoutMs, detail: () => `stderr: ${this.stderr.trim()}; stdout tail: ${this.stdout.slice(-2000)}` });
  }

  /** SIGTERM, then waits for the exit; SIGKILL and rejection if it takes longer than `timeoutMs`. */
  async stop(timeoutMs = 15_000): Promise<ExitInfo & { ms: number }> {
    const started = Date.now();
    this.expectExit = true;
    if (this.running) this.proc.kill('SIGTERM');
    try {
      const info = await withTimeout(this.exited, timeoutMs, 'the daemon to exit after SIGTERM');
      return { ...info, ms: Date.now() - started };
    } catch (err) {
      this.proc.kill('SIGKILL');
      await this.exited;
      throw err;
    }
  }

  /** SIGKILL (cleanup). */
  async close(): Promise<void> {
    this.expectExit = true;
    if (this.running) this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** The shard each CONNECT of `clientId` landed on, in order, read from the trace lines
   *  (FANOUT_TRACE_CLIENTS must cover the client id). */
  connectShards(clientId: string): number[] {
    return this.lines
      .filter((l) => l.trace === 'in' && l.clientId === clientId && (l.packet as { type?: string } | undefined)?.type === 'connect')
      .map((l) => Number(String(l.thread).replace(/^shard-/, '')));
  }

  /** Waits for the trace line of the `n`-th (from 0) CONNECT of `clientId` and returns its shard. */
  async shardOfConnect(clientId: string, n = 0, timeoutMs = 5000): Promise<number> {
    return waitFor(`the trace line of CONNECT #${n} of ${clientId}`, () => this.connectShards(clientId)[n], { timeoutMs });
  }

  /** Log lines that are warnings or worse, for diagnostics. */
  problems(): LogLine[] {
    return this.lines.filter((l) => l.level >= 40);
  }
}

/** Runs the daemon to its exit (for start-up failures and the command-line options `args`);
 *  SIGKILL after `timeoutMs`. */
export async function runDaemonToExit(
  overrides: Record<string, string | number | undefined>, timeoutMs = 15_000, args: readonly string[] = [],
): Promise<ExitInfo & { stdout: string; stderr: string }> {
  const d = DaemonProcess.spawn(overrides, args);
  d.expectExit = true;
  try {
    const info = await withTimeout(d.exited, timeoutMs, 'the daemon to exit');
    return { ...info, stdout: d.stdout, stderr: d.stderr };
  } finally {
    await d.close();
  }
}
