// HAProxy in front of mqtt-fanout instances, run from the shipped example configuration
// (loadtest/haproxy/haproxy.cfg.example): its `server fanout1` line repeated per instance, the
// ${...} variables given in HAProxy's environment. Used by the scale-out tests and load test.

import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as net from 'node:net';
import * as path from 'node:path';
import { freePort, HOST, waitForPort } from './ports';
import { exitOf, isRunning, track } from './procs';
import { waitFor } from './wait';

export const HAPROXY_BIN = process.env.HAPROXY_BIN ?? (fs.existsSync('/usr/sbin/haproxy') ? '/usr/sbin/haproxy' : 'haproxy');

/** dist/test/helpers/haproxy.js -> loadtest/haproxy/haproxy.cfg.example (sources, not dist). */
export const HAPROXY_EXAMPLE = path.resolve(__dirname, '..', '..', '..', 'loadtest', 'haproxy', 'haproxy.cfg.example');

export interface Backend {
  /** The instance's MQTT port (FANOUT_PORT). */
  mqtt: number;
  /** Its HTTP port (FANOUT_HTTP_PORT), where /readyz is. */
  http: number;
}

/** The example configuration for `count` instances, and the environment it reads. */
export function haproxyConfig(backends: Backend[], bind: string, maxconn: number): { text: string; env: Record<string, string> } {
  const example = fs.readFileSync(HAPROXY_EXAMPLE, 'utf8');
  const lines = example.split('\n');
  const at = lines.findIndex((l) => /^\s*server fanout1 /.test(l));
  if (at < 0) throw new Error(`${HAPROXY_EXAMPLE} has no "server fanout1" line`);
  const server = lines[at];
  const servers = backends.map((_, i) => server.replace(/fanout1/g, `fanout${i + 1}`).replace(/FANOUT1_/g, `FANOUT${i + 1}_`));
  lines.splice(at, 1, ...servers);
  const env: Record<string, string> = { HAPROXY_BIND: bind, HAPROXY_MAXCONN: String(maxconn) };
  backends.forEach((b, i) => {
    env[`FANOUT${i + 1}_MQTT`] = `${HOST}:${b.mqtt}`;
    env[`FANOUT${i + 1}_HTTP`] = String(b.http);
  });
  return { text: lines.join('\n'), env };
}

export class HaproxyProcess {
  log = '';
  private constructor(readonly port: number, private readonly proc: ChildProcess, readonly dir: string) {}

  private get socket(): string {
    return path.join(this.dir, 'admin.sock');
  }

  /** One command on the runtime API (the stats socket the tests add to the example). */
  command(cmd: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = net.connect(this.socket);
      let text = '';
      s.setEncoding('utf8');
      s.once('error', reject);
      s.on('data', (t: string) => { text += t; });
      s.on('end', () => resolve(text));
      s.end(`${cmd}\n`);
    });
  }

  /** Server name -> its state as HAProxy sees it (UP, DOWN, ...). */
  async servers(): Promise<Map<string, string>> {
    const csv = await this.command('show stat');
    const rows = csv.split('\n').filter((l) => l.startsWith('fanout,'));
    const header = csv.split('\n')[0].replace(/^# /, '').split(',');
    const status = header.indexOf('status');
    const out = new Map<string, string>();
    for (const r of rows) {
      const f = r.split(',');
      if (f[1] !== 'BACKEND') out.set(f[1], f[status]);
    }
    return out;
  }

  /** The server (1-based, as in the configuration) the stick table sends `clientId` to, 0 when none. */
  async stickOf(clientId: string): Promise<number> {
    const text = await this.command(`show table fanout key ${clientId}`);
    const m = /server_id=(\d+)/.exec(text);
    return m === null ? 0 : Number(m[1]);
  }

  /** Waits until HAProxy counts `n` servers up. */
  async waitUp(n: number, timeoutMs = 20_000): Promise<void> {
    await waitFor(`HAProxy to see ${n} instances up`, async () => [...(await this.servers()).values()].filter((s) => s === 'UP').length === n,
      { timeoutMs, intervalMs: 100, detail: () => this.log });
  }

  /** Starts HAProxy on a free port in front of `backends` and waits until it accepts. */
  static async start(backends: Backend[], maxconn = 4000): Promise<HaproxyProcess> {
    const port = await freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-haproxy-'));
    const { text: example, env } = haproxyConfig(backends, `${HOST}:${port}`, maxconn);
    // The runtime API, for waitUp.
    const text = example.replace(/^global\n/m, `global\n    stats socket ${path.join(dir, 'admin.sock')} mode 600 level admin\n`);
    const cfg = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(cfg, text);
    const check = spawn(HAPROXY_BIN, ['-c', '-q', '-f', cfg], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let checkOut = '';
    check.stderr!.on('data', (s: Buffer) => { checkOut += s.toString(); });
    check.stdout!.on('data', (s: Buffer) => { checkOut += s.toString(); });
    const checked = await exitOf(check);
    if (checked.code !== 0) throw new Error(`haproxy -c refused the configuration: ${checkOut}`);
    // -db: stay in the foreground, logs to stderr.
    const child = track(spawn(HAPROXY_BIN, ['-db', '-f', cfg], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }));
    const h = new HaproxyProcess(port, child, dir);
    for (const s of [child.stdout!, child.stderr!]) {
      s.setEncoding('utf8');
      s.on('data', (t: string) => { h.log += t; });
    }
    try {
      await waitForPort(port, 10_000);
      await h.waitUp(backends.length);
    } catch (err) {
      await h.close();
      throw new Error(`${(err as Error).message}; haproxy said: ${h.log}`, { cause: err });
    }
    return h;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  async close(): Promise<void> {
    if (isRunning(this.proc)) {
      const exited = exitOf(this.proc);
      this.proc.kill('SIGKILL');
      await exited;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
