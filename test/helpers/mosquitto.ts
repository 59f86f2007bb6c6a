// A mosquitto broker on a free loopback port, with a generated configuration in a temp dir.
// It can be stopped (SIGTERM), killed (SIGKILL), frozen (SIGSTOP/SIGCONT) and restarted on
// the same port, which is what the outage tests need.

import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort, HOST } from './ports';
import { exitOf, isRunning, track, type ExitInfo } from './procs';
import { sleep, waitFor } from './wait';

export const MOSQUITTO_BIN = process.env.MOSQUITTO_BIN ?? (fs.existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto');

export interface MosquittoOptions {
  /** Port to listen on; a free one by default. */
  port?: number;
  /** Extra configuration lines. */
  extraConfig?: string[];
  /** Do not start the process yet (start() later): for "broker down at start-up" tests. */
  deferStart?: boolean;
}

export class Mosquitto {
  /** Everything the broker wrote to stderr, across restarts. */
  log = '';
  private proc: ChildProcess | null = null;
  private paused = false;

  private constructor(readonly port: number, readonly dir: string, readonly confPath: string) {}

  static async create(opts: MosquittoOptions = {}): Promise<Mosquitto> {
    const port = opts.port ?? await freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-it-mosquitto-'));
    fs.chmodSync(dir, 0o755);
    const confPath = path.join(dir, 'mosquitto.conf');
    fs.writeFileSync(confPath, [
      `listener ${port} ${HOST}`,
      'allow_anonymous true',
      'persistence false',
      'max_queued_messages 0',
      'max_inflight_messages 0',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type information',
      'connection_messages true',
      ...(opts.extraConfig ?? []),
      '',
    ].join('\n'));
    const m = new Mosquitto(port, dir, confPath);
    if (!opts.deferStart) await m.start();
    return m;
  }

  /** Creates and starts a broker. */
  static start(opts: MosquittoOptions = {}): Promise<Mosquitto> {
    return Mosquitto.create(opts);
  }

  get running(): boolean {
    return isRunning(this.proc);
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** mqtt://127.0.0.1:port, with optional FANOUT_BROKERS query parameters. */
  url(params: Record<string, string | number> = {}): string {
    const q = Object.entries(params).map(([k, v]) => `${k}=${v}`).join('&');
    return `mqtt://${HOST}:${this.port}${q ? `?${q}` : ''}`;
  }

  /** Starts the process (again) on the same port and waits until it accepts connections. */
  async start(): Promise<void> {
    if (this.running) throw new Error(`mosquitto on ${this.port} is already running`);
    let lastError = '';
    for (let attempt = 0; attempt < 20; attempt++) {
      const child = track(spawn(MOSQUITTO_BIN, ['-c', this.confPath], { stdio: ['ignore', 'ignore', 'pipe'] }));
      let text = '';
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (s: string) => {
        text += s;
        this.log += s;
      });
      const exited = exitOf(child);
      let gone = false;
      void exited.then(() => { gone = true; });
      try {
        await waitFor(`mosquitto on port ${this.port} to run`, () => gone || text.includes(' running'), { timeoutMs: 10_000 });
      } catch (err) {
        child.kill('SIGKILL');
        throw err;
      }
      if (!gone) {
        this.proc = child;
        this.paused = false;
        return;
      }
      lastError = text.trim();
      // Typically "Address already in use" right after a kill: try again shortly.
      await sleep(100);
    }
    throw new Error(`mosquitto could not start on port ${this.port}: ${lastError}`);
  }

  /** SIGTERM and wait for the exit (SIGKILL after 5 s). */
  async stop(): Promise<ExitInfo | null> {
    const child = this.proc;
    if (!isRunning(child)) return null;
    if (this.paused) this.resume();
    const exited = exitOf(child!);
    child!.kill('SIGTERM');
    const timer = setTimeout(() => child!.kill('SIGKILL'), 5000);
    const info = await exited;
    clearTimeout(timer);
    this.proc = null;
    return info;
  }

  /** kill -9, and wait until the process is gone. */
  async kill(): Promise<void> {
    const child = this.proc;
    if (!isRunning(child)) return;
    const exited = exitOf(child!);
    child!.kill('SIGKILL');
    await exited;
    this.proc = null;
    this.paused = false;
  }

  /** SIGSTOP: the broker keeps its sockets but answers nothing. */
  pause(): void {
    if (!isRunning(this.proc)) throw new Error('mosquitto is not running');
    this.proc!.kill('SIGSTOP');
    this.paused = true;
  }

  /** SIGCONT. */
  resume(): void {
    if (!isRunning(this.proc)) return;
    this.proc!.kill('SIGCONT');
    this.paused = false;
  }

  /** Stops (if running) and starts again on the same port. */
  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Kills the process and removes the temp dir. */
  async close(): Promise<void> {
    await this.kill();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Client ids mosquitto logged as connected ("New client connected from ... as ID (...)"). */
  connectedClientIds(): string[] {
    const ids: string[] = [];
    for (const m of this.log.matchAll(/New client connected from \S+ as (\S+) \(/g)) ids.push(m[1]);
    return ids;
  }
}
