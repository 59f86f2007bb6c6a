// Child process management. Every spawned process and temp dir goes into a
// registry that is torn down synchronously on 'exit', so no mosquitto or daemon
// survives the harness however it ends (normal exit, throw, Ctrl-C, SIGTERM).
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { daemonCommand } from '../src/allocator';

export interface Managed {
  name: string;
  child: ChildProcess;
  logPath: string;
  /** Resolves once the process has exited, with its code or killing signal. */
  exited: Promise<ExitInfo>;
  /** Set once the process has exited; null while it runs. */
  exitInfo: ExitInfo | null;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<ExitInfo>;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when we had to escalate to SIGKILL. */
  killed: boolean;
}

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();
const usedPorts = new Set<number>();
let handlersInstalled = false;

function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  children.clear();
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

export function installCleanupHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', killAll);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: stopping children\n`);
      process.exit(code);
    });
  }
}

export function makeTempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

/** Leaves the dir on disk after exit (logs of a failed run are worth keeping). */
export function keepTempDir(dir: string): void {
  tempDirs.delete(dir);
}

export function removeTempDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

/**
 * Asks the kernel for a free loopback port. Ports already handed out in this
 * run are skipped so two processes started back to back never collide.
 */
export async function allocatePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const addr = srv.address();
        srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
      });
    });
    if (!usedPorts.has(port)) {
      usedPorts.add(port);
      return port;
    }
  }
  throw new Error('could not find a free port');
}

export function spawnManaged(
  name: string,
  command: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; logPath: string; pipeStdout?: boolean; ipc?: boolean },
): Managed {
  const logFd = fs.openSync(opts.logPath, 'a');
  // Output goes straight to a file unless we must read it: a full pipe nobody drains would stall the child.
  const child = spawn(command, args, {
    env: opts.env ?? process.env,
    // An IPC channel for a child that reports to the harness (a sink, sink.ts).
    stdio: ['ignore', opts.pipeStdout ? 'pipe' : logFd, logFd, ...(opts.ipc ? ['ipc' as const] : [])],
  });
  fs.closeSync(logFd);
  children.add(child);
  let killed = false;
  const exited = new Promise<ExitInfo>((resolve) => {
    const done = (code: number | null, signal: NodeJS.Signals | null): void => {
      children.delete(child);
      resolve((managed.exitInfo = { code, signal, killed }));
    };
    child.once('exit', done);
    // spawn failure (e.g. ENOENT): there will be no 'exit'.
    child.once('error', () => done(null, null));
  });
  const stop = async (graceMs = 5000): Promise<ExitInfo> => {
    if (managed.exitInfo) return managed.exitInfo;
    child.kill('SIGTERM');
    const timer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, graceMs);
    const info = await exited;
    clearTimeout(timer);
    return info;
  };
  const managed: Managed = { name, child, logPath: opts.logPath, exited, exitInfo: null, stop };
  return managed;
}

export function logTail(logPath: string, lines = 15): string {
  const text = fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8') : '(no log)';
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Resolves when `port` accepts a TCP connection; rejects early if `proc` dies. */
export async function waitForPort(port: number, proc: Managed, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitInfo) throw new Error(`${proc.name} exited (${describeExit(proc.exitInfo)}) before listening on ${port}:\n${logTail(proc.logPath)}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${proc.name} did not listen on ${port} within ${timeoutMs} ms:\n${logTail(proc.logPath)}`);
}

/**
 * Reads the child's piped stdout as JSON lines (copying everything to its log
 * file) until `match` accepts one. Draining continues after the match.
 */
export function waitForLogLine(proc: Managed, match: (line: Record<string, unknown>) => boolean, timeoutMs = 20_000): Promise<Record<string, unknown>> {
  const stdout = proc.child.stdout;
  if (!stdout) return Promise.reject(new Error(`${proc.name} stdout is not piped`));
  const log = fs.createWriteStream(proc.logPath, { flags: 'a' });
  return new Promise((resolve, reject) => {
    let partial = '';
    let done = false;
    const finish = (err: Error | null, line: Record<string, unknown> = {}): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(line);
    };
    const timer = setTimeout(() => finish(new Error(`${proc.name}: no matching log line within ${timeoutMs} ms:\n${logTail(proc.logPath)}`)), timeoutMs);
    stdout.on('data', (chunk: Buffer) => {
      log.write(chunk);
      if (done) return;
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const text of lines) {
        try {
          const parsed: unknown = JSON.parse(text);
          if (parsed && typeof parsed === 'object' && match(parsed as Record<string, unknown>)) {
            finish(null, parsed as Record<string, unknown>);
            return;
          }
        } catch {
          // Non-JSON output (a stack trace, a stray console.log) is only for the log file.
        }
      }
    });
    stdout.once('end', () => log.end());
    void proc.exited.then((info) => finish(new Error(`${proc.name} exited (${describeExit(info)}) before it was ready:\n${logTail(proc.logPath)}`)));
  });
}

export function describeExit(info: ExitInfo): string {
  const how = info.signal ? `signal ${info.signal}` : `code ${info.code}`;
  return info.killed ? `${how}, needed SIGKILL` : how;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function mosquittoBinary(): string {
  if (process.env.MOSQUITTO_BIN) return process.env.MOSQUITTO_BIN;
  // Debian installs it outside a normal user's PATH.
  return fs.existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';
}

/** Starts mosquitto on an already written config and waits until it listens. */
export async function startMosquitto(name: string, confPath: string, port: number, dir: string): Promise<Managed> {
  const proc = spawnManaged(name, mosquittoBinary(), ['-c', confPath], { logPath: path.join(dir, `${name}.log`) });
  await waitForPort(port, proc);
  return proc;
}

export interface DaemonOptions {
  /** Path of the built daemon entry point (dist/src/cli.js). */
  entry: string;
  port: number;
  brokers: { name: string; port: number }[];
  shards: number;
  logLevel: string;
  dir: string;
  /** Also listen for MQTT over WebSocket (FANOUT_WS_PORT, a port the daemon picks). */
  ws?: boolean;
  /** Also serve HTTP (FANOUT_HTTP_PORT, a port the daemon picks). */
  http?: boolean;
  /** Also listen for MQTT over TLS (FANOUT_TLS_PORT, a port the daemon picks) with this certificate and key. */
  tls?: { certPath: string; keyPath: string } | null;
  /** More FANOUT_* variables (the auth scenario's password and ACL files). */
  env?: Record<string, string>;
  /** V8 CPU profiles of every thread of the daemon, written here when it exits (--cpu-prof). */
  cpuProfDir?: string | null;
}

export interface StartedDaemon {
  proc: Managed;
  /** From the ready line: null unless asked for. */
  wsPort: number | null;
  wsPath: string | null;
  /** WebSocket implementation the daemon uses (uWebSockets.js, or ws where the native binary does not load). */
  wsServer: string | null;
  httpPort: number | null;
  tlsPort: number | null;
}

/** Starts the fan-out daemon and waits for its `mqtt-fanout ready` log line. */
export async function startDaemon(opts: DaemonOptions): Promise<StartedDaemon> {
  if (!fs.existsSync(opts.entry)) throw new Error(`daemon entry ${opts.entry} does not exist (build first)`);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    FANOUT_PORT: String(opts.port),
    FANOUT_HOST: '127.0.0.1',
    FANOUT_BROKERS: opts.brokers.map((b) => `${b.name}=mqtt://127.0.0.1:${b.port}`).join(','),
    FANOUT_LOG_LEVEL: opts.logLevel,
    FANOUT_SHARDS: String(opts.shards),
    // Port 0: the daemon picks free ports and names them in its ready line.
    ...(opts.ws ? { FANOUT_WS_PORT: '0' } : {}),
    ...(opts.http ? { FANOUT_HTTP_PORT: '0' } : {}),
    ...(opts.tls ? { FANOUT_TLS_PORT: '0', FANOUT_TLS_CERT: opts.tls.certPath, FANOUT_TLS_KEY: opts.tls.keyPath } : {}),
    ...opts.env,
  };
  // Worker threads inherit the flags: one profile per thread, named by pid and thread id.
  const prof = opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : [];
  // Through the build's launcher, as operators start it (the allocator FANOUT_MALLOC names).
  const run = daemonCommand(opts.entry, prof);
  const proc = spawnManaged('mqtt-fanout', run.command, run.args, { env: { ...env, ...run.env }, logPath: path.join(opts.dir, 'mqtt-fanout.log'), pipeStdout: true });
  const ready = await waitForLogLine(proc, (line) => line.msg === 'mqtt-fanout ready');
  const portOf = (key: string): number | null => (typeof ready[key] === 'number' ? (ready[key] as number) : null);
  const started: StartedDaemon = {
    proc,
    wsPort: opts.ws ? portOf('wsPort') : null,
    wsPath: opts.ws && typeof ready.wsPath === 'string' ? ready.wsPath : null,
    wsServer: opts.ws && typeof ready.websocket === 'string' ? ready.websocket : null,
    httpPort: opts.http ? portOf('httpPort') : null,
    tlsPort: opts.tls ? portOf('tlsPort') : null,
  };
  if (opts.ws && started.wsPort === null) throw new Error(`mqtt-fanout: the ready line names no wsPort: ${JSON.stringify(ready)}`);
  if (opts.http && started.httpPort === null) throw new Error(`mqtt-fanout: the ready line names no httpPort: ${JSON.stringify(ready)}`);
  if (opts.tls && started.tlsPort === null) throw new Error(`mqtt-fanout: the ready line names no tlsPort: ${JSON.stringify(ready)}`);
  // The ready line is the contract, but a port check costs nothing and catches a daemon bound elsewhere.
  for (const port of [opts.port, started.wsPort, started.httpPort, started.tlsPort]) if (port !== null) await waitForPort(port, proc, 5000);
  return started;
}
