// `npm run fuzz`: throws generated and mutated MQTT packets (default 1,000,000) at a running
// daemon over many concurrent TCP and WebSocket connections, then checks that it still serves,
// that its RSS came back to the baseline, that no thread died, that its state (connections,
// sessions, subscriptions, rings) emptied, and that its broker connections never dropped.
//
// One mosquitto upstream, the daemon (dist/src/cli.js) in front of it; the traffic comes from
// worker threads (fuzz.worker.ts) so this thread's RSS sampling and probes keep their timing.
// Every connection's packets are a function of (--seed, connection index): a run prints its seed,
// and a connection that killed the daemon can be printed (--print) or replayed alone (--only).

import { spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import mqtt, { type MqttClient } from 'mqtt';
import { Mosquitto } from '../test/helpers/mosquitto';
import { HOST } from '../test/helpers/ports';
import { exitOf, track, type ExitInfo } from '../test/helpers/procs';
import { addTally, buildScript, describeScript, Engine, newTally, type EngineOptions, type FromFuzzWorker, type FuzzWorkerData, type Tally } from './fuzz.worker';
import { daemonCommand } from '../src/allocator';

/** The daemon built next to this program; --daemon names another build's cli.js. */
const DEFAULT_CLI = path.resolve(__dirname, '..', 'src', 'cli.js');
const WORKER = path.join(__dirname, 'fuzz.worker.js');
/** FANOUT_MAX_PACKET_SIZE's default. */
const DEFAULT_MAX_PACKET = 262144;
const RSS_SAMPLE_MS = 250;
const PROBE_EVERY_MS = 2000;
const PROBE_TIMEOUT_MS = 10_000;
/** A QoS 1 publish through the proxy, every 5 s: its PUBACK needs every broker's. */
const UPLINK_PROBE_EVERY_MS = 5000;
const UPLINK_PROBE_TIMEOUT_MS = 30_000;
/** Gauges that must be back where they were before any fuzz traffic. */
const STATE_GAUGES = ['fanout_connections', 'fanout_sessions', 'fanout_subscriptions', 'fanout_upstream_filters', 'fanout_upstream_filters_covered', 'fanout_broker_inflight', 'fanout_ring_fill_bytes'];

const HELP = `usage: node dist/loadtest/fuzz.js [options]   (npm run fuzz -- [options])

  --packets N            packets to write, at least (default 1000000)
  --connections N        connections open at once (default 200)
  --seed N               PRNG seed (default: random, printed)
  --duration S           stop the fuzz phase after S seconds whatever the count (default 1800)
  --workers N            traffic threads (default 1)
  --ws-share F           share of connections over WebSocket (default 0.1)
  --max-per-connection N most packets in one connection (default 64)
  --warmup N             warm-up packets before the RSS baseline (default min(20000, packets/10))
  --settle S             quiet seconds before each RSS reading (default 10)
  --nice N               scheduling priority of the fuzzer's own threads once the daemon and the
                         broker run (default 10; 0: the same as theirs): on a shared machine the
                         fuzzer then takes the CPU they leave instead of starving them
  --session-expiry S     FANOUT_SESSION_EXPIRY_MAX, so persistent sessions end (default 5)
  --rss-tolerance-mb N   RSS after may exceed the baseline by this much (default 64)
  --brokers 1|2          broker entries, both on the one mosquitto: MQTT 5 (pool 2) and 3.1.1 (default 2)
  --env NAME=VALUE       extra FANOUT_* variable for the daemon (repeatable)
  --json FILE            write the figures, checks and findings as JSON
  --print I,J,...        print those connections' packets (hex) and exit; needs the run's --seed
  --only I,J,...         replay only those connections, one at a time, checking the daemon after each
  --first I              first connection index of the fuzz phase (default 0): with --packets, re-runs a slice
  --daemon FILE          the daemon's cli.js (default: dist/src/cli.js of this build)
`;

class UsageError extends Error {}

interface FuzzOptions {
  packets: number;
  connections: number;
  seed: number;
  durationS: number;
  workers: number;
  wsShare: number;
  maxPerConnection: number;
  warmup: number;
  settleS: number;
  nice: number;
  sessionExpiryS: number;
  rssToleranceMB: number;
  brokers: 1 | 2;
  env: Record<string, string>;
  json: string | null;
  print: number[] | null;
  only: number[] | null;
  first: number;
  maxPacketSize: number;
  daemon: string;
}

function parseOptions(argv: string[]): FuzzOptions | null {
  const { values } = parseArgs({
    args: argv, strict: true, allowPositionals: false,
    options: {
      packets: { type: 'string' }, connections: { type: 'string' }, seed: { type: 'string' }, duration: { type: 'string' },
      workers: { type: 'string' }, 'ws-share': { type: 'string' }, 'max-per-connection': { type: 'string' }, warmup: { type: 'string' },
      settle: { type: 'string' }, 'session-expiry': { type: 'string' }, 'rss-tolerance-mb': { type: 'string' }, brokers: { type: 'string' },
      env: { type: 'string', multiple: true }, json: { type: 'string' }, print: { type: 'string' }, only: { type: 'string' }, first: { type: 'string' },
      daemon: { type: 'string' }, nice: { type: 'string' }, help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return null;
  const num = (name: string, raw: string | undefined, def: number, min: number, max: number): number => {
    if (raw === undefined) return def;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name} must be a number from ${min} to ${max}, not ${raw}`);
    return n;
  };
  const list = (name: string, raw: string | undefined): number[] | null => {
    if (raw === undefined) return null;
    const items: number[] = [];
    for (const part of raw.split(',')) {
      const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
      if (!m) throw new UsageError(`--${name} takes connection indices and ranges, e.g. 17,2003,40-60, not ${part}`);
      const a = Number(m[1]);
      const b = m[2] === undefined ? a : Number(m[2]);
      if (b < a || b - a > 1_000_000) throw new UsageError(`--${name}: bad range ${part}`);
      for (let i = a; i <= b; i++) items.push(i);
    }
    return items;
  };
  const env: Record<string, string> = {};
  for (const kv of values.env ?? []) {
    const m = /^(FANOUT_[A-Z0-9_]+)=(.*)$/s.exec(kv);
    if (!m) throw new UsageError(`--env takes FANOUT_NAME=value, not ${kv}`);
    env[m[1]] = m[2];
  }
  const packets = Math.floor(num('packets', values.packets, 1_000_000, 1, 1e10));
  const brokers = num('brokers', values.brokers, 2, 1, 2);
  return {
    packets,
    connections: Math.floor(num('connections', values.connections, 200, 1, 5000)),
    seed: Math.floor(num('seed', values.seed, randomInt(2 ** 31), 0, 2 ** 32 - 1)),
    durationS: num('duration', values.duration, 1800, 1, 86400),
    workers: Math.floor(num('workers', values.workers, 1, 1, 16)),
    wsShare: num('ws-share', values['ws-share'], 0.1, 0, 1),
    maxPerConnection: Math.floor(num('max-per-connection', values['max-per-connection'], 64, 1, 10000)),
    warmup: Math.floor(num('warmup', values.warmup, Math.min(20_000, Math.ceil(packets / 10)), 0, 1e9)),
    settleS: num('settle', values.settle, 10, 0, 3600),
    nice: num('nice', values.nice, 10, 0, 19),
    sessionExpiryS: Math.floor(num('session-expiry', values['session-expiry'], 5, 0, 3600)),
    rssToleranceMB: num('rss-tolerance-mb', values['rss-tolerance-mb'], 64, 0, 1e6),
    brokers: brokers === 1 ? 1 : 2,
    env,
    json: values.json ?? null,
    print: list('print', values.print),
    only: list('only', values.only),
    first: Math.floor(num('first', values.first, 0, 0, 2 ** 40 - 1)),
    maxPacketSize: env.FANOUT_MAX_PACKET_SIZE ? Number(env.FANOUT_MAX_PACKET_SIZE) : DEFAULT_MAX_PACKET,
    daemon: path.resolve(values.daemon ?? DEFAULT_CLI),
  };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const MB = (kb: number | null): string => (kb === null ? 'n/a' : (kb / 1024).toFixed(1));
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

function procStatus(pid: number): { rssKB: number; threads: number } | null {
  try {
    const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    return { rssKB: Number(/^VmRSS:\s+(\d+)/m.exec(text)?.[1] ?? NaN), threads: Number(/^Threads:\s+(\d+)/m.exec(text)?.[1] ?? NaN) };
  } catch {
    return null;
  }
}

function cpuSeconds(pid: number): number | null {
  try {
    const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return null;
  }
}

/** The daemon's threads: id → name, from /proc/<pid>/task. */
function threadsOf(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      let name = '?';
      try { name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim(); } catch { /* gone meanwhile */ }
      out.set(Number(tid), name);
    }
  } catch { /* process gone */ }
  return out;
}

function httpGet(port: number, urlPath: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: HOST, port, path: urlPath, timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => { body += s; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath} took more than ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

function httpPost(port: number, urlPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port, path: urlPath, method: 'POST', timeout: PROBE_TIMEOUT_MS, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Prometheus text → sum of every series of each metric. */
function metricSums(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[2]?.includes('quantile=')) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) out.set(m[1], (out.get(m[1]) ?? 0) + v);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The daemon

interface LogLine { level: number; msg: string; [k: string]: unknown }

class Daemon {
  port = 0;
  wsPort = 0;
  httpPort = 0;
  wsPath = '/mqtt';
  readonly levels: Record<string, number> = {};
  readonly fatal: LogLine[] = [];
  readonly dumps: string[] = [];
  readonly errors: LogLine[] = [];
  /** Error and fatal lines by message (and error message), counted. */
  readonly errorKinds = new Map<string, number>();
  readonly warnings = new Map<string, number>();
  private tail: string[] = [];
  private partial = '';
  stderr = '';
  exit: (ExitInfo & { at: number }) | null = null;
  readonly exited: Promise<ExitInfo>;
  private ready: ((l: LogLine) => void) | null = null;
  stopping = false;

  private constructor(readonly proc: ChildProcess) {
    proc.stdout!.setEncoding('utf8');
    proc.stderr!.setEncoding('utf8');
    proc.stdout!.on('data', (s: string) => this.onStdout(s));
    proc.stderr!.on('data', (s: string) => { this.stderr = (this.stderr + s).slice(-20_000); });
    this.exited = exitOf(proc);
    void this.exited.then((info) => { this.exit = { ...info, at: Date.now() }; });
  }

  get pid(): number { return this.proc.pid!; }
  get alive(): boolean { return this.exit === null && this.proc.exitCode === null && this.proc.signalCode === null; }

  static async start(cli: string, env: NodeJS.ProcessEnv): Promise<Daemon> {
    // Through the build's launcher, as operators start it (the allocator FANOUT_MALLOC names).
    const run = daemonCommand(cli);
    const d = new Daemon(track(spawn(run.command, run.args, { env: { ...env, ...run.env }, stdio: ['ignore', 'pipe', 'pipe'] })));
    const line = await withTimeout(Promise.race([
      new Promise<LogLine>((resolve) => { d.ready = resolve; }),
      d.exited.then((i): never => { throw new Error(`the daemon exited at start-up (code ${i.code}, signal ${i.signal}): ${d.stderr.trim()} ${d.tailText()}`); }),
    ]), 30_000, 'ready line from the daemon');
    d.port = Number(line.port);
    d.wsPort = Number(line.wsPort ?? 0);
    d.wsPath = String(line.wsPath ?? '/mqtt');
    d.httpPort = Number(line.httpPort ?? 0);
    return d;
  }

  private onStdout(s: string): void {
    // FUZZ_DAEMON_LOG=<file> keeps every line of the daemon, for looking into a finding.
    if (process.env.FUZZ_DAEMON_LOG) fs.appendFileSync(process.env.FUZZ_DAEMON_LOG, s);
    const parts = (this.partial + s).split('\n');
    this.partial = parts.pop()!;
    for (const part of parts) {
      if (part.trim() === '') continue;
      this.tail.push(part);
      if (this.tail.length > 60) this.tail.splice(0, 30);
      let l: LogLine;
      try {
        l = JSON.parse(part) as LogLine;
      } catch {
        l = { level: 0, msg: part };
      }
      this.levels[l.level] = (this.levels[l.level] ?? 0) + 1;
      if (l.msg === 'mqtt-fanout ready') this.ready?.(l);
      if (l.level >= 50) {
        const err = (l.err as { message?: string } | undefined)?.message;
        const kind = err ? `${l.msg}: ${err}` : l.msg;
        this.errorKinds.set(kind, (this.errorKinds.get(kind) ?? 0) + 1);
      }
      if (l.level >= 60) this.fatal.push(l);
      else if (l.level >= 50) { if (this.errors.length < 50) this.errors.push(l); }
      else if (l.level >= 40) this.warnings.set(l.msg, (this.warnings.get(l.msg) ?? 0) + 1);
      if (typeof l.msg === 'string' && l.msg.includes('(FANOUT_TEST_HOOKS')) this.dumps.push(part);
    }
  }

  tailText(n = 15): string {
    return this.tail.slice(-n).join('\n');
  }

  /** SIGTERM; the exit code and how long it took (SIGKILL after timeoutMs). */
  async stop(timeoutMs: number): Promise<{ code: number | null; signal: string | null; ms: number; killed: boolean }> {
    this.stopping = true;
    const started = Date.now();
    if (this.alive) this.proc.kill('SIGTERM');
    try {
      const i = await withTimeout(this.exited, timeoutMs, 'exit after SIGTERM');
      return { code: i.code, signal: i.signal, ms: Date.now() - started, killed: false };
    } catch {
      this.proc.kill('SIGKILL');
      const i = await this.exited;
      return { code: i.code, signal: i.signal, ms: Date.now() - started, killed: true };
    }
  }
}

/** The FANOUT_* names the built daemon knows (it refuses unknown ones). */
function knownVariables(cli: string): Set<string> {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const schema = require(path.join(path.dirname(cli), 'config', 'schema.js')) as { VARIABLES: Record<string, { name: string }> };
    return new Set(Object.values(schema.VARIABLES).map((v) => v.name));
  } catch {
    return new Set();
  }
}

function daemonEnv(o: FuzzOptions, broker: Mosquitto): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FANOUT_')) env[k] = v;
  const brokers = [`v5=${broker.url({ protocol: 5, pool: 4 })}`, ...(o.brokers === 2 ? [`v4=${broker.url({ pool: 1 })}`] : [])];
  Object.assign(env, {
    FANOUT_HOST: HOST, FANOUT_PORT: '0', FANOUT_WS_PORT: '0', FANOUT_HTTP_PORT: '0', FANOUT_SHARDS: '2',
    // info, not warn: the ready line with the ports is an info line (and info is quiet per device).
    FANOUT_LOG_LEVEL: 'info', FANOUT_BROKERS: brokers.join(','), FANOUT_PROXY_ID: `fuzz-${process.pid}`,
    FANOUT_SESSION_EXPIRY_MAX: String(o.sessionExpiryS), FANOUT_SHUTDOWN_TIMEOUT_MS: '5000',
  });
  // Every connection comes from 127.0.0.1: a per-address connection rate limit would refuse
  // most of them before they are parsed. Set only where the daemon has the variable.
  if (knownVariables(o.daemon).has('FANOUT_MAX_CONNECT_RATE')) env.FANOUT_MAX_CONNECT_RATE = '0';
  Object.assign(env, o.env);
  return env;
}

// ---------------------------------------------------------------------------------------------
// Watching the daemon: RSS and threads every 250 ms, an HTTP and an MQTT probe every 2 s

interface ProbeStats { count: number; failures: number; maxMs: number; samples: string[] }

class Watch {
  rssKB: number | null = null;
  threads: number | null = null;
  peakKB = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  readonly http: ProbeStats = { count: 0, failures: 0, maxMs: 0, samples: [] };
  readonly mqtt: ProbeStats = { count: 0, failures: 0, maxMs: 0, samples: [] };
  readonly uplink: ProbeStats = { count: 0, failures: 0, maxMs: 0, samples: [] };
  /** Every 2 s: time (s since the watch began), RSS (MB), connections, broker inflight, and
   *  ring fill (KB) up and down, from /metrics. */
  readonly series: Array<[number, number, number, number, number, number]> = [];
  private readonly began = Date.now();
  /** Called at the first uplink probe that failed: the daemon stopped serving about then. */
  onUplinkFailure: (() => void) | null = null;
  private probing = false;
  private uplinkBusy = false;
  private probeId = 0;

  constructor(private readonly d: Daemon) {
    this.sample();
    this.timers.push(setInterval(() => this.sample(), RSS_SAMPLE_MS));
    this.timers.push(setInterval(() => void this.probe(), PROBE_EVERY_MS));
    this.timers.push(setInterval(() => void this.probeUplink(), UPLINK_PROBE_EVERY_MS));
  }

  private async probeUplink(): Promise<void> {
    if (this.uplinkBusy || !this.d.alive || this.d.stopping) return;
    this.uplinkBusy = true;
    const t0 = Date.now();
    this.uplink.count++;
    try {
      await withTimeout(mqttProbe(this.d.port, `fuzz-probe-up-${++this.probeId}`, UPLINK_PROBE_TIMEOUT_MS, true), UPLINK_PROBE_TIMEOUT_MS, 'PUBACK to a probe QoS 1 publish');
      this.uplink.maxMs = Math.max(this.uplink.maxMs, Date.now() - t0);
    } catch (err) {
      if (this.d.alive && !this.d.stopping) {
        this.uplink.failures++;
        if (this.uplink.samples.length < 5) this.uplink.samples.push(`${new Date(t0).toISOString()} (sent) ${(err as Error).message}`);
        if (this.uplink.failures === 1) this.onUplinkFailure?.();
      }
    } finally {
      this.uplinkBusy = false;
    }
  }

  resetPeak(): void {
    this.peakKB = this.rssKB ?? 0;
  }

  private sample(): void {
    const s = procStatus(this.d.pid);
    // A zombie (exited, not yet reaped) has no VmRSS line.
    if (!s || !Number.isFinite(s.rssKB)) return;
    this.rssKB = s.rssKB;
    this.threads = s.threads;
    this.peakKB = Math.max(this.peakKB, s.rssKB);
  }

  private async probe(): Promise<void> {
    if (this.probing || !this.d.alive || this.d.stopping) return;
    this.probing = true;
    const timed = async (stats: ProbeStats, what: string, f: () => Promise<void>): Promise<void> => {
      const t0 = Date.now();
      stats.count++;
      try {
        await withTimeout(f(), PROBE_TIMEOUT_MS, what);
        stats.maxMs = Math.max(stats.maxMs, Date.now() - t0);
      } catch (err) {
        if (!this.d.alive || this.d.stopping) return;
        stats.failures++;
        if (stats.samples.length < 5) stats.samples.push(`${new Date().toISOString()} ${(err as Error).message}`);
      }
    };
    await Promise.all([
      timed(this.http, 'answer to GET /metrics', async () => {
        const r = await httpGet(this.d.httpPort, '/metrics');
        if (r.status !== 200) throw new Error(`GET /metrics: ${r.status}`);
        this.record(r.body);
      }),
      timed(this.mqtt, 'CONNACK to a probe CONNECT', () => mqttProbe(this.d.port, `fuzz-probe-${++this.probeId}`, PROBE_TIMEOUT_MS, false)),
    ]);
    this.probing = false;
  }

  private record(metrics: string): void {
    let up = 0;
    let down = 0;
    for (const m of metrics.matchAll(/^fanout_ring_fill_bytes\{[^}]*direction="(up|down)"[^}]*\} (\d+)/gm)) {
      if (m[1] === 'up') up += Number(m[2]);
      else down += Number(m[2]);
    }
    const sums = metricSums(metrics);
    this.series.push([
      Math.round((Date.now() - this.began) / 1000), Math.round((this.rssKB ?? 0) / 1024), sums.get('fanout_connections') ?? 0,
      sums.get('fanout_broker_inflight') ?? 0, Math.round(up / 1024), Math.round(down / 1024),
    ]);
  }

  close(): void {
    for (const t of this.timers) clearInterval(t);
  }
}

/** A raw CONNECT (3.1.1, clean) that must get CONNACK 0; with `publish`, then a QoS 1 PUBLISH
 *  that must get its PUBACK. */
function mqttProbe(port: number, clientId: string, timeoutMs: number, publish: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const id = Buffer.from(clientId);
    const body = Buffer.concat([Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 30, id.length >> 8, id.length & 0xff]), id]);
    const sock = net.connect({ host: HOST, port });
    let got = Buffer.alloc(0);
    const fail = (err: Error): void => {
      sock.destroy();
      reject(err);
    };
    sock.setTimeout(timeoutMs, () => fail(new Error('probe socket timed out')));
    // Topic fuzz-probe/up, packet id 1, payload "p".
    const pub = Buffer.from([0x32, 18, 0, 13, ...Buffer.from('fuzz-probe/up'), 0, 1, 0x70]);
    sock.on('connect', () => sock.write(Buffer.concat([Buffer.from([0x10, body.length]), body, ...(publish ? [pub] : [])])));
    sock.on('data', (b: Buffer) => {
      got = Buffer.concat([got, b]);
      if (got.length < (publish ? 8 : 4)) return;
      if (got[0] !== 0x20 || got[3] !== 0) return fail(new Error(`probe got ${got.subarray(0, 8).toString('hex')} instead of CONNACK 0`));
      if (publish && got.subarray(4, 8).toString('hex') !== '40020001') return fail(new Error(`probe got ${got.subarray(4, 12).toString('hex')} instead of PUBACK 1`));
      sock.end(Buffer.from([0xe0, 0]));
      sock.destroy();
      resolve();
    });
    sock.on('error', fail);
    sock.on('close', () => reject(new Error('probe connection closed before CONNACK')));
  });
}

// ---------------------------------------------------------------------------------------------
// A fuzz phase: W worker threads, each an Engine over its share of the connection indices

interface PhaseResult {
  tally: Tally;
  ms: number;
  /** Why the phase ended early, if it did. */
  cut: 'duration' | 'daemon-exit' | 'finding' | null;
  /** On a daemon exit: the connections open then and the last ones to finish. */
  suspects: number[];
  /** The first time mosquitto dropped a connection of the proxy: its log line, and the
   *  connections open then or finished in the 2 s before. */
  drop: { line: string; suspects: number[] } | null;
  /** The first uplink probe that got no PUBACK: when it was sent, and the range of connection
   *  indices open then or finished in the 40 s before (re-run them with --first/--packets). */
  stall: { at: string; first: number; last: number; count: number } | null;
}

/** mosquitto's log lines about a connection of this proxy ending (malformed packet, protocol
 *  error, socket error, ...), which must not happen while the daemon runs. */
function dropLines(broker: Mosquitto): string[] {
  const re = new RegExp(`^.*(?:Client fuzz-${process.pid}-\\S+ (?:disconnected|closed its connection|has exceeded)|Socket error on client fuzz-${process.pid}-).*$`, 'gm');
  return broker.log.match(re) ?? [];
}

function engineOptions(o: FuzzOptions, d: Daemon, first: number, budget: number): EngineOptions {
  return {
    host: HOST, port: d.port, wsPort: d.wsPort, wsPath: d.wsPath, seed: o.seed,
    concurrency: o.connections, budget, first, step: 1, only: null, connectionTimeoutMs: 10_000,
    wsShare: d.wsPort > 0 ? o.wsShare : 0, maxPackets: o.maxPerConnection, maxPacketSize: o.maxPacketSize,
  };
}

async function runPhase(label: string, o: FuzzOptions, d: Daemon, broker: Mosquitto, first: number, budget: number, watch: Watch, durationS: number): Promise<PhaseResult> {
  const base = engineOptions(o, d, first, budget);
  const n = o.workers;
  const started = Date.now();
  const tallies: Tally[] = Array.from({ length: n }, newTally);
  const snapshots: Array<(m: { live: number[]; recent: number[] }) => void> = [];
  let cut: PhaseResult['cut'] = null;
  const workers = Array.from({ length: n }, (_, w) => new Worker(WORKER, {
    workerData: {
      fuzz: {
        ...base, first: first + w, step: n, concurrency: Math.ceil(o.connections / n), budget: Math.ceil(budget / n),
      } satisfies EngineOptions,
      nice: o.nice,
    } satisfies FuzzWorkerData,
  }));
  const done = workers.map((worker, w) => new Promise<void>((resolve, reject) => {
    worker.on('message', (m: FromFuzzWorker) => {
      if (m.t === 'progress' || m.t === 'done') tallies[w] = m.tally;
      if (m.t === 'snapshot') snapshots[w]?.(m);
      if (m.t === 'done') resolve();
    });
    worker.on('error', reject);
    worker.on('exit', () => resolve());
  }));
  const total = (): Tally => {
    const t = newTally();
    for (const x of tallies) addTally(t, x);
    return t;
  };
  let suspects: number[] = [];
  const stopAll = (): void => { for (const w of workers) w.postMessage({ t: 'stop' }); };
  const ticker = setInterval(() => {
    const t = total();
    const s = (Date.now() - started) / 1000;
    process.stderr.write(`[fuzz ${label}] ${fmt(t.packets)}/${fmt(budget)} packets, ${fmt(t.packets / s)}/s, ${fmt(t.connections)} connections (${fmt(t.closedByDaemon)} closed by the daemon), RSS ${MB(watch.rssKB)} MB (peak ${MB(watch.peakKB)}), load ${os.loadavg()[0].toFixed(2)}\n`);
  }, 2000);
  const deadline = setTimeout(() => {
    cut = 'duration';
    stopAll();
  }, durationS * 1000);
  /** Open connections and those finished in the last `sinceMs`, newest first. */
  const snap = async (sinceMs: number): Promise<number[]> => {
    const replies = await Promise.all(workers.map((worker, w) => withTimeout(new Promise<{ live: number[]; recent: number[] }>((resolve) => {
      snapshots[w] = resolve;
      worker.postMessage({ t: 'snapshot', sinceMs });
    }), 15_000, 'snapshot').catch(() => ({ live: [], recent: [] }))));
    return [...new Set(replies.flatMap((r) => [...r.live, ...r.recent.reverse()]))];
  };
  void d.exited.then(async () => {
    if (cut !== null) return;
    cut = 'daemon-exit';
    suspects = await snap(2000);
    stopAll();
  });
  let stall: PhaseResult['stall'] = null;
  watch.onUplinkFailure = () => {
    const at = new Date(Date.now() - UPLINK_PROBE_TIMEOUT_MS).toISOString();
    process.stderr.write(`[fuzz ${label}] a QoS 1 probe publish sent at ${at} got no PUBACK within ${UPLINK_PROBE_TIMEOUT_MS / 1000} s\n`);
    void snap(UPLINK_PROBE_TIMEOUT_MS + 10_000).then((list) => {
      stall = { at, first: Math.min(...list), last: Math.max(...list), count: list.length };
    });
  };
  let drop: PhaseResult['drop'] = null;
  const dropsBefore = dropLines(broker).length;
  const dropWatch = setInterval(() => {
    const lines = dropLines(broker);
    if (drop !== null || lines.length <= dropsBefore) return;
    drop = { line: lines[dropsBefore], suspects: [] };
    process.stderr.write(`[fuzz ${label}] mosquitto dropped a connection of the proxy: ${drop.line}\n`);
    void snap(2000).then((list) => { drop!.suspects = list; });
  }, 250);
  await Promise.all(done);
  watch.onUplinkFailure = null;
  clearInterval(ticker);
  clearInterval(dropWatch);
  clearTimeout(deadline);
  await Promise.all(workers.map((w) => w.terminate()));
  return { tally: total(), ms: Date.now() - started, cut, suspects, drop, stall };
}

// ---------------------------------------------------------------------------------------------
// Quiet state and the serving checks

async function gauges(d: Daemon): Promise<Map<string, number> | null> {
  try {
    const r = await httpGet(d.httpPort, '/metrics');
    return r.status === 200 ? metricSums(r.body) : null;
  } catch {
    return null;
  }
}

/** Heap used, committed and external memory of each daemon thread, in MB, from /metrics. */
async function threadMemory(d: Daemon): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  const text = await httpGet(d.httpPort, '/metrics').then((r) => r.body, () => '');
  const names = ['fanout_thread_heap_used_bytes', 'fanout_thread_heap_committed_bytes', 'fanout_thread_external_bytes'];
  for (const line of text.split('\n')) {
    const m = /^(\w+)\{thread="([^"]+)"\}\s+(\S+)/.exec(line);
    const i = m === null ? -1 : names.indexOf(m[1]);
    if (m === null || i < 0) continue;
    const row = out.get(m[2]) ?? [0, 0, 0];
    row[i] = Number(m[3]) / 1048576;
    out.set(m[2], row);
  }
  return out;
}

/** With FANOUT_TEST_HOOKS=true: a heap snapshot of the thread whose heap in use grew most. */
async function snapshotGrowth(d: Daemon, before: Map<string, number[]>, after: Map<string, number[]>): Promise<string> {
  let worst = '';
  let most = 0;
  for (const [t, a] of after) {
    const grew = a[0] - (before.get(t)?.[0] ?? 0);
    if (/^(shard|writer)-/.test(t) && grew > most) [worst, most] = [t, grew];
  }
  if (worst === '' || (await httpPost(d.httpPort, `/test/crash?thread=${encodeURIComponent(worst)}&kind=heap`).catch(() => 0)) !== 202) return '';
  const seen = d.dumps.length;
  for (let i = 0; i < 120 && d.dumps.length === seen; i++) await sleep(500);
  const line = d.dumps.slice(seen).find((l) => l.includes('heap snapshot written'));
  return line === undefined ? '' : `; heap snapshot of ${worst}: ${(JSON.parse(line) as { file?: string }).file}`;
}

function memoryDiff(before: Map<string, number[]>, after: Map<string, number[]>): string {
  return [...after].map(([t, a]) => {
    const b = before.get(t) ?? [0, 0, 0];
    return `${t} ${b.map((x) => x.toFixed(0)).join('/')} → ${a.map((x) => x.toFixed(0)).join('/')}`;
  }).join(', ');
}

function gaugeDiff(ref: Map<string, number>, now: Map<string, number> | null): string[] {
  if (!now) return ['GET /metrics failed'];
  return STATE_GAUGES.filter((g) => (now.get(g) ?? 0) !== (ref.get(g) ?? 0)).map((g) => `${g} ${now.get(g) ?? 0} (was ${ref.get(g) ?? 0})`);
}

/** Waits until the state gauges are back at `ref`; the differences left at the timeout. */
async function waitQuiet(d: Daemon, ref: Map<string, number>, timeoutMs: number): Promise<string[]> {
  const until = Date.now() + timeoutMs;
  while (d.alive) {
    const diff = gaugeDiff(ref, await gauges(d));
    if (diff.length === 0) return diff;
    if (Date.now() > until) {
      // Which shard, broker or thread holds what is left.
      const text = await httpGet(d.httpPort, '/metrics').then((r) => r.body, () => '');
      const left = text.split('\n').filter((l) => STATE_GAUGES.some((g) => l.startsWith(`${g}{`)) && !/\s0$/.test(l));
      // With FANOUT_TEST_HOOKS=true (--env), every thread also logs its state.
      const threads = [...new Set([...text.matchAll(/thread="((?:shard|writer)-[^"]+)"/g)].map((m) => m[1]))];
      for (const t of threads) await httpPost(d.httpPort, `/test/crash?thread=${encodeURIComponent(t)}&kind=dump`).catch(() => undefined);
      await sleep(1500);
      return [...diff, ...(left.length > 0 ? [`by label: ${left.join(', ')}`] : []), ...d.dumps.map((l) => `dump: ${l.slice(0, 3000)}`)];
    }
    await sleep(250);
  }
  return ['the daemon is not running'];
}

interface Check { name: string; ok: boolean; detail: string }

async function mqttConnect(url: string, clientId: string, protocolVersion: 4 | 5): Promise<MqttClient> {
  const client = mqtt.connect(url, { clientId, protocolVersion, reconnectPeriod: 0, connectTimeout: 10_000, clean: true });
  try {
    await withTimeout(new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
      client.once('close', () => reject(new Error(`connection to ${url} closed before CONNACK`)));
    }), 12_000, `CONNACK from ${url}`);
  } catch (err) {
    client.end(true);
    throw err;
  }
  client.on('error', () => undefined);
  return client;
}

/** The next message on `topic`; the promise is marked handled, as the caller may give up first. */
function nextMessage(client: MqttClient, topic: string, timeoutMs: number): Promise<Buffer> {
  const p = withTimeout(new Promise<Buffer>((resolve) => {
    const on = (t: string, payload: Buffer): void => {
      if (t !== topic) return;
      client.off('message', on);
      resolve(payload);
    };
    client.on('message', on);
  }), timeoutMs, `message on ${topic}`);
  p.catch(() => undefined);
  return p;
}

/** A clean mqtt.js client still gets its publishes to the broker (TCP and WebSocket), and a
 *  subscriber through the proxy gets what is published at the broker. */
async function serveChecks(d: Daemon, broker: Mosquitto): Promise<Check[]> {
  const tag = `${process.pid}-${Date.now()}`;
  const direct = `mqtt://${HOST}:${broker.port}`;
  const checks: Check[] = [];
  const run = async (name: string, f: () => Promise<string>): Promise<void> => {
    try {
      checks.push({ name, ok: true, detail: await withTimeout(f(), 30_000, name) });
    } catch (err) {
      checks.push({ name, ok: false, detail: (err as Error).message });
    }
  };
  const uplink = async (via: string, version: 4 | 5, topic: string): Promise<string> => {
    const at = await mqttConnect(direct, `fuzz-check-sub-${tag}`, 5);
    const dev = await mqttConnect(via, `fuzz-check-dev-${tag}`, version).catch((err: Error) => { at.end(true); throw err; });
    try {
      await at.subscribeAsync(topic, { qos: 1 });
      const arrived = nextMessage(at, topic, 10_000);
      const t0 = Date.now();
      await withTimeout(dev.publishAsync(topic, `fuzz check ${tag}`, { qos: 1 }), 10_000, 'PUBACK');
      const acked = Date.now() - t0;
      const payload = await arrived;
      if (payload.toString() !== `fuzz check ${tag}`) throw new Error(`wrong payload at the broker: ${payload.toString('hex')}`);
      return `PUBACK after ${acked} ms, at mosquitto after ${Date.now() - t0} ms`;
    } finally {
      dev.end(true);
      at.end(true);
    }
  };
  await run('serves: QoS 1 publish over TCP reaches mosquitto', () => uplink(`mqtt://${HOST}:${d.port}`, 4, `fuzz-check/${tag}/tcp`));
  if (d.wsPort > 0) await run('serves: QoS 1 publish over WebSocket reaches mosquitto', () => uplink(`ws://${HOST}:${d.wsPort}${d.wsPath}`, 5, `fuzz-check/${tag}/ws`));
  await run('serves: a subscriber through the proxy gets a message published at mosquitto', async () => {
    const topic = `fuzz-check/${tag}/down`;
    const dev = await mqttConnect(`mqtt://${HOST}:${d.port}`, `fuzz-check-down-${tag}`, 5);
    const pub = await mqttConnect(direct, `fuzz-check-pub-${tag}`, 4).catch((err: Error) => { dev.end(true); throw err; });
    try {
      await withTimeout(dev.subscribeAsync(topic, { qos: 1 }), 10_000, 'SUBACK');
      const arrived = nextMessage(dev, topic, 10_000);
      const t0 = Date.now();
      await pub.publishAsync(topic, `down ${tag}`, { qos: 1 });
      const payload = await arrived;
      if (payload.toString() !== `down ${tag}`) throw new Error(`wrong payload: ${payload.toString('hex')}`);
      return `delivered after ${Date.now() - t0} ms`;
    } finally {
      dev.end(true);
      pub.end(true);
    }
  });
  return checks;
}

// ---------------------------------------------------------------------------------------------
// Report

interface Report {
  command: string;
  seed: number;
  options: Omit<FuzzOptions, 'print'>;
  machine: { cpus: number; loadavgStart: number[]; loadavgEnd: number[] };
  figures: Record<string, number | string | null>;
  tally: Tally;
  warmup: Tally | null;
  checks: Check[];
  daemon: {
    logLevels: Record<string, number>;
    fatal: LogLine[];
    errors: LogLine[];
    errorKinds: Record<string, number>;
    warnings: Record<string, number>;
    stderrTail: string;
    exit: (ExitInfo & { at: number }) | null;
  };
  probes: { http: ProbeStats; mqtt: ProbeStats; uplink: ProbeStats };
  /** The first time the uplink probe got no PUBACK, and the connections running about then. */
  stall: PhaseResult['stall'];
  /** The daemon's non-zero metrics after the run (for diagnosis). */
  metricsAfter: string[];
  /** [s, RSS MB, connections, broker inflight, ring KB up, ring KB down] every 2 s. */
  series: Watch['series'];
  /** On a daemon exit: connections to replay with --only, and their packets. */
  suspects: { indices: number[]; replay: string; scripts: string[] } | null;
  /** The first broker connection mosquitto dropped during the fuzz, and what to replay. */
  brokerDrop: { line: string; indices: number[]; replay: string } | null;
}

function printReport(r: Report): void {
  const out: string[] = [];
  const f = r.figures;
  out.push('', `mqtt-fanout fuzz, seed ${r.seed}  (replay: ${r.command})`);
  out.push(`machine: ${r.machine.cpus} CPUs, load average ${r.machine.loadavgStart.map((x) => x.toFixed(2)).join(' ')} at start, ${r.machine.loadavgEnd.map((x) => x.toFixed(2)).join(' ')} at the end`);
  const t = r.tally;
  out.push(
    `packets written      ${fmt(t.packets)} (${fmt(t.valid)} valid, ${fmt(t.mutated)} mutated or invalid), ${(t.bytesOut / 1048576).toFixed(1)} MB; answers read ${(t.bytesIn / 1048576).toFixed(1)} MB`,
    `connections opened   ${fmt(t.connections)} (${fmt(t.tcp)} TCP, ${fmt(t.ws)} WebSocket); closed by the daemon ${fmt(t.closedByDaemon)}, by the fuzzer ${fmt(t.closedByUs)} (${fmt(t.stalled)} at the 10 s deadline); failed attempts ${fmt(t.connectErrors)}`,
    `duration             ${(Number(f.fuzzMs) / 1000).toFixed(1)} s, ${fmt(Number(f.packetsPerSecond))} packets/s, ${fmt(Number(f.connectionsPerSecond))} connections/s${f.cut ? `, cut short: ${f.cut}` : ''}`,
    `daemon CPU           ${f.daemonCpuS} s during the fuzz phase`,
    `RSS (MB)             start ${MB(f.rssStartKB as number)}, baseline ${MB(f.rssBaselineKB as number)}, peak ${MB(f.rssPeakKB as number)}, after ${MB(f.rssAfterKB as number)} (after − baseline ${MB(Number(f.rssAfterKB) - Number(f.rssBaselineKB))}, tolerance ${r.options.rssToleranceMB})`,
    `JS heap, all threads baseline ${Number(f.heapBaselineMB).toFixed(1)} MB, after ${Number(f.heapAfterMB).toFixed(1)} MB; committed ${Number(f.committedBaselineMB).toFixed(1)} → ${Number(f.committedAfterMB).toFixed(1)} MB; external ${Number(f.externalBaselineMB).toFixed(1)} → ${Number(f.externalAfterMB).toFixed(1)} MB`,
    `threads              baseline ${f.threadsBaseline}, after ${f.threadsAfter}`,
    `probes during fuzz   GET /metrics ${r.probes.http.count} (max ${r.probes.http.maxMs} ms, ${r.probes.http.failures} failed); MQTT CONNECT ${r.probes.mqtt.count} (max ${r.probes.mqtt.maxMs} ms, ${r.probes.mqtt.failures} failed); QoS 1 publish ${r.probes.uplink.count} (max ${r.probes.uplink.maxMs} ms, ${r.probes.uplink.failures} without PUBACK in ${UPLINK_PROBE_TIMEOUT_MS / 1000} s)`,
    `daemon answers       ${Object.entries(t.replies).map(([k, v]) => `${k} ${fmt(v)}`).join(', ')}`,
    `CONNACK codes        ${Object.entries(t.connack).map(([k, v]) => `${k}: ${fmt(v)}`).join(', ')}`,
    `DISCONNECT reasons   ${Object.entries(t.disconnect).map(([k, v]) => `${k}: ${fmt(v)}`).join(', ')}`,
    `daemon log           ${Object.entries(r.daemon.logLevels).map(([k, v]) => `level ${k}: ${fmt(v)}`).join(', ')}`,
  );
  if (r.series.length > 0) {
    const step = Math.max(1, Math.ceil(r.series.length / 12));
    const picks = r.series.filter((_, i) => i % step === 0 || i === r.series.length - 1);
    out.push(`timeline             (s: RSS MB, connections, broker inflight, ring KB up/down) ${picks.map(([t, rss, c, inf, up, down]) => `${t}: ${rss}, ${c}, ${inf}, ${up}/${down}`).join(' | ')}`);
  }
  const warn = Object.entries(r.daemon.warnings).sort((a, b) => b[1] - a[1]).slice(0, 5);
  if (warn.length) out.push(`top warnings         ${warn.map(([m, n]) => `${n}× ${m}`).join(' | ')}`);
  out.push('', 'checks:');
  for (const c of r.checks) out.push(`  ${c.ok ? 'PASS' : 'FAIL'}  ${c.name}: ${c.detail}`);
  if (r.suspects) {
    const what = r.suspects.indices.length === 1 ? 'the connection that did it' : `connections open then or just before (${r.suspects.indices.length}), to replay one by one`;
    out.push("", `${r.figures.cut === "finding" ? "finding" : "the daemon died"}; ${what}:`, `  ${r.suspects.replay.length > 600 ? `${r.suspects.replay.slice(0, 600)}… (all of them in --json)` : r.suspects.replay}`);
    out.push(...r.suspects.scripts.slice(0, 3));
  }
  if (r.brokerDrop) {
    out.push('', `mosquitto dropped a connection of the proxy: ${r.brokerDrop.line}`,
      `connections open then or finished in the 2 s before (${r.brokerDrop.indices.length}), to replay one by one (it stops at the one that does it):`,
      `  ${r.brokerDrop.replay.length > 600 ? `${r.brokerDrop.replay.slice(0, 600)}… (all of them in --json)` : r.brokerDrop.replay}`);
  }
  out.push('', r.checks.every((c) => c.ok) ? 'RESULT: PASS' : 'RESULT: FAIL', '');
  process.stdout.write(out.join('\n'));
}

// ---------------------------------------------------------------------------------------------
// Main

function replayCommand(o: FuzzOptions, extra: string): string {
  const env = Object.entries(o.env).map(([k, v]) => ` --env ${k}=${v}`).join('');
  const daemon = o.daemon === DEFAULT_CLI ? '' : ` --daemon ${o.daemon}`;
  return `node dist/loadtest/fuzz.js --seed ${o.seed} --ws-share ${o.wsShare} --max-per-connection ${o.maxPerConnection}${env}${daemon}${extra}`;
}

async function main(argv: string[]): Promise<number> {
  let o: FuzzOptions | null;
  try {
    o = parseOptions(argv);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (!o) {
    process.stdout.write(HELP);
    return 0;
  }
  if (o.print) {
    for (const i of o.print) process.stdout.write(`${describeScript(buildScript(o.seed, i, { wsShare: o.wsShare, maxPackets: o.maxPerConnection, maxPacketSize: o.maxPacketSize }))}\n`);
    return 0;
  }
  const command = replayCommand(o, ` --packets ${o.packets} --connections ${o.connections} --workers ${o.workers}`);
  process.stderr.write(`[fuzz] seed ${o.seed}: ${command}\n`);
  const loadavgStart = os.loadavg();
  // mosquitto's default in-flight window (the test helper lifts it): the daemon meets a real
  // broker's limits, and a broker with an unlimited window spends its CPU on long in-flight lists.
  const broker = await Mosquitto.start({ extraConfig: ['max_inflight_messages 20'] });
  let daemon: Daemon | null = null;
  let watch: Watch | null = null;
  try {
    daemon = await Daemon.start(o.daemon, daemonEnv(o, broker));
    const d = daemon;
    await withTimeout((async () => { while ((await httpGet(d.httpPort, '/readyz').catch(() => ({ status: 0 }))).status !== 200) await sleep(100); })(), 20_000, 'readyz 200');
    watch = new Watch(d);
    // The daemon and mosquitto keep the priority they were started with; the fuzzer's threads
    // (this one, and each worker at its start) give way to them.
    if (o.nice > 0) os.setPriority(0, o.nice);
    const rssStartKB = procStatus(d.pid)?.rssKB ?? null;
    const ref = await gauges(d);
    if (!ref) throw new Error('GET /metrics failed before the fuzz started');
    const brokerConnectsBefore = broker.connectedClientIds().filter((id) => id.startsWith(`fuzz-${process.pid}-`)).length;
    // Sessions end within their expiry plus the daemon's 1 s tick; in-flight messages drain in well under 5 s.
    const quietTimeout = (o.settleS + o.sessionExpiryS + 5) * 1000;

    // Warm-up (indices from 2^40 on, apart from the fuzz phase's), then the baseline.
    let warmup: Tally | null = null;
    let phase: PhaseResult | null = null;
    let warmupDrop: PhaseResult['drop'] = null;
    if (o.warmup > 0 && !o.only) {
      const w = await runPhase('warm-up', o, d, broker, 2 ** 40, o.warmup, watch, o.durationS);
      warmup = w.tally;
      warmupDrop = w.drop;
      // A daemon that died in the warm-up is reported from there.
      if (w.cut === 'daemon-exit') phase = w;
      else {
        await waitQuiet(d, ref, quietTimeout);
        await sleep(o.settleS * 1000);
      }
    }
    const rssBaselineKB = watch.rssKB;
    // JavaScript heap of every thread: tells a leak in the daemon's objects from memory the
    // allocator keeps after use (RSS without heap).
    const g0 = await gauges(d);
    const threadMemBefore = await threadMemory(d);
    const heapBaselineMB = (g0?.get('fanout_thread_heap_used_bytes') ?? 0) / 1048576;
    const committedBaselineMB = (g0?.get('fanout_thread_heap_committed_bytes') ?? 0) / 1048576;
    const externalBaselineMB = (g0?.get('fanout_thread_external_bytes') ?? 0) / 1048576;
    const threadsBefore = threadsOf(d.pid);
    const cpuBefore = cpuSeconds(d.pid);
    watch.resetPeak();

    // The fuzz phase.
    if (phase) {
      process.stderr.write('[fuzz] the daemon died during the warm-up\n');
    } else if (o.only) {
      phase = { tally: newTally(), ms: 0, cut: null, suspects: [], drop: null, stall: null };
      const t0 = Date.now();
      let reconnects = ref.get('fanout_broker_reconnects_total') ?? 0;
      let dropsSeen = dropLines(broker).length;
      for (const index of o.only) {
        const engine = new Engine({ ...engineOptions(o, d, 0, Infinity), concurrency: 1, only: [index] });
        await engine.run();
        addTally(phase.tally, engine.tally);
        await sleep(500);
        // After each connection: the daemon runs, its broker connections held, its answers were well-formed.
        const now = d.alive ? await gauges(d) : null;
        const dropped = now ? (now.get('fanout_broker_reconnects_total') ?? 0) - reconnects : 0;
        reconnects += dropped;
        const drops = dropLines(broker);
        // Messages to the brokers must all be acknowledged once the connection is gone.
        let inflight = now?.get('fanout_broker_inflight') ?? 0;
        for (let i = 0; i < 20 && inflight > 0 && d.alive; i++) {
          await sleep(100);
          inflight = (await gauges(d))?.get('fanout_broker_inflight') ?? 0;
        }
        const finding = now === null ? 'daemon DEAD'
          : dropped > 0 || drops.length > dropsSeen ? `a broker connection DROPPED: ${drops[dropsSeen] ?? `${dropped} reconnects`}`
            : engine.tally.badReplies > 0 ? `MALFORMED answer: ${engine.tally.badSamples[0]}`
              : inflight > 0 ? `${inflight} message(s) to the brokers never acknowledged (fanout_broker_inflight)` : null;
        dropsSeen = drops.length;
        process.stderr.write(`[fuzz] connection ${index}: ${engine.tally.packets} packets, ${engine.tally.closedByDaemon ? 'closed by the daemon' : 'closed by the fuzzer'}; ${finding ?? 'daemon fine'}\n`);
        if (finding !== null) {
          phase.cut = now === null ? 'daemon-exit' : 'finding';
          phase.suspects = [index];
          break;
        }
      }
      phase.ms = Date.now() - t0;
    } else {
      phase = await runPhase('fuzz', o, d, broker, o.first, o.packets, watch, o.durationS);
    }
    if (!phase) throw new Error('unreachable: no fuzz phase ran');
    const cpuAfter = cpuSeconds(d.pid);
    const rssPeakKB = watch.peakKB;
    const loadavgEnd = os.loadavg();

    // Quiet again, settle, read RSS.
    const stateLeft = d.alive ? await waitQuiet(d, ref, quietTimeout) : ['the daemon is not running'];
    if (d.alive) await sleep(o.settleS * 1000);
    const rssAfterKB = d.alive ? watch.rssKB : null;
    const g1 = d.alive ? await gauges(d) : null;
    const heapAfterMB = g1 === null ? null : (g1.get('fanout_thread_heap_used_bytes') ?? 0) / 1048576;
    const committedAfterMB = g1 === null ? null : (g1.get('fanout_thread_heap_committed_bytes') ?? 0) / 1048576;
    const externalAfterMB = g1 === null ? null : (g1.get('fanout_thread_external_bytes') ?? 0) / 1048576;
    const threadsAfter = threadsOf(d.pid);

    const checks: Check[] = [];
    checks.push({
      name: 'daemon alive', ok: d.alive,
      detail: d.alive ? `pid ${d.pid}` : `exited (code ${d.exit?.code}, signal ${d.exit?.signal}); stderr: ${d.stderr.slice(-1500)}; log tail: ${d.tailText(10)}`,
    });
    checks.push({
      name: 'no thread died (no fatal log line)', ok: d.fatal.length === 0,
      detail: d.fatal.length === 0 ? 'no fatal lines' : d.fatal.slice(0, 5).map((l) => JSON.stringify(l)).join(' | '),
    });
    const lost = [...threadsBefore].filter(([tid]) => !threadsAfter.has(tid));
    checks.push({
      name: 'every thread of the baseline still runs', ok: d.alive && lost.length === 0,
      detail: lost.length === 0 ? `${threadsBefore.size} threads at the baseline, all still there (${threadsAfter.size} now)` : `gone: ${lost.map(([tid, name]) => `${tid} (${name})`).join(', ')}`,
    });
    checks.push({
      name: 'no error log lines', ok: d.errors.length === 0,
      detail: d.errors.length === 0 ? 'none' : `${[...d.errorKinds].map(([k, n]) => `${n}× ${k}`).join(' | ')}; first: ${JSON.stringify(d.errors[0]).slice(0, 1500)}`,
    });
    const metricsNow = d.alive ? await httpGet(d.httpPort, '/metrics').catch((err: Error) => ({ status: 0, body: err.message })) : { status: 0, body: 'daemon not running' };
    checks.push({ name: 'GET /metrics answers', ok: metricsNow.status === 200, detail: metricsNow.status === 200 ? `${metricsNow.body.length} bytes` : `${metricsNow.status} ${metricsNow.body.slice(0, 200)}` });
    const probeFailures = watch.http.failures + watch.mqtt.failures;
    checks.push({
      name: `answered every probe during the fuzz within ${PROBE_TIMEOUT_MS / 1000} s (GET /metrics, CONNECT)`, ok: probeFailures === 0,
      detail: probeFailures === 0 ? `max ${watch.http.maxMs} ms (HTTP), ${watch.mqtt.maxMs} ms (MQTT)` : [...watch.http.samples, ...watch.mqtt.samples].join(' | '),
    });
    checks.push({
      name: `acknowledged every probe QoS 1 publish during the fuzz within ${UPLINK_PROBE_TIMEOUT_MS / 1000} s`, ok: watch.uplink.failures === 0,
      detail: watch.uplink.failures === 0 ? `${watch.uplink.count} probes, max ${watch.uplink.maxMs} ms`
        : `${watch.uplink.failures} of ${watch.uplink.count} failed: ${watch.uplink.samples.join(' | ')}${phase.stall ? `; when the first failure was seen, ${phase.stall.count} connections of the fuzz phase were open or had finished in the 40 s before, indices ${phase.stall.first} to ${phase.stall.last} (re-run with --first/--packets)` : ''}`,
    });
    checks.push({ name: 'state back to before the fuzz (connections, sessions, subscriptions, filters, inflight, rings)', ok: stateLeft.length === 0, detail: stateLeft.length === 0 ? 'all back' : stateLeft.join('; ') });
    const growth = rssAfterKB !== null && rssBaselineKB !== null ? rssAfterKB - rssBaselineKB : null;
    const threadMemAfter = await threadMemory(d);
    checks.push({
      name: `RSS back to the baseline (within ${o.rssToleranceMB} MB)`, ok: growth !== null && growth <= o.rssToleranceMB * 1024,
      detail: `baseline ${MB(rssBaselineKB)} MB, peak ${MB(rssPeakKB)} MB, after ${MB(rssAfterKB)} MB`
        + (growth !== null && growth > o.rssToleranceMB * 1024 ? `; by thread, heap used/committed/external MB before → after: ${memoryDiff(threadMemBefore, threadMemAfter)}${await snapshotGrowth(d, threadMemBefore, threadMemAfter)}` : ''),
    });
    const ms = d.alive ? metricSums(metricsNow.body) : null;
    const brokerConnects = broker.connectedClientIds().filter((id) => id.startsWith(`fuzz-${process.pid}-`)).length;
    const reconnects = ms ? (ms.get('fanout_broker_reconnects_total') ?? 0) - (ref.get('fanout_broker_reconnects_total') ?? 0) : null;
    checks.push({
      name: 'broker connections never dropped', ok: reconnects === 0 && brokerConnects === brokerConnectsBefore,
      detail: `fanout_broker_reconnects_total +${reconnects ?? '?'}, mosquitto saw ${brokerConnects} proxy connections (${brokerConnectsBefore} before the fuzz)${brokerConnects !== brokerConnectsBefore ? `; mosquitto log tail: ${broker.log.slice(-800)}` : ''}`,
    });
    checks.push({
      name: 'daemon answers are well-formed', ok: phase.tally.badReplies === 0,
      detail: phase.tally.badReplies === 0 ? 'no client-only packet types, reserved flags, missing or repeated CONNACK' : `${phase.tally.badReplies}: ${phase.tally.badSamples.slice(0, 5).join(' | ')}`,
    });
    if (d.alive) checks.push(...await serveChecks(d, broker));
    if (!o.only) checks.push({ name: `wrote at least ${fmt(o.packets)} packets`, ok: phase.tally.packets >= o.packets, detail: fmt(phase.tally.packets) });
    watch.close();
    if (d.alive) {
      // FUZZ_HOLD_S=<seconds> leaves the daemon (and its broker) up that long before the stop, for
      // looking at a state that did not come back.
      if (process.env.FUZZ_HOLD_S) {
        process.stderr.write(`[fuzz] holding the daemon (pid ${d.pid}, HTTP ${d.httpPort}, MQTT ${d.port}) for ${process.env.FUZZ_HOLD_S} s\n`);
        await sleep(Number(process.env.FUZZ_HOLD_S) * 1000);
      }
      const s = await d.stop(20_000);
      checks.push({ name: 'stops cleanly on SIGTERM', ok: s.code === 0 && !s.killed, detail: `exit code ${s.code}${s.signal ? `, signal ${s.signal}` : ''} after ${s.ms} ms${s.killed ? ' (SIGKILL)' : ''}` });
    }

    let suspects: Report['suspects'] = null;
    if (phase.cut === 'daemon-exit' || phase.cut === 'finding') {
      const indices = phase.suspects;
      suspects = {
        indices,
        replay: replayCommand(o, ` --only ${indices.join(',')}`),
        scripts: indices.slice(0, 20).map((i) => describeScript(buildScript(o!.seed, i, { wsShare: o!.wsShare, maxPackets: o!.maxPerConnection, maxPacketSize: o!.maxPacketSize }))),
      };
    }
    // The first drop is the one to replay; later ones may be the same message re-sent.
    const firstDrop = warmupDrop ?? phase.drop;
    const report: Report = {
      command, seed: o.seed, options: { ...o, print: undefined } as Omit<FuzzOptions, 'print'>,
      machine: { cpus: os.cpus().length, loadavgStart, loadavgEnd },
      figures: {
        packets: phase.tally.packets, connections: phase.tally.connections, closedByDaemon: phase.tally.closedByDaemon,
        fuzzMs: phase.ms, packetsPerSecond: phase.tally.packets / (phase.ms / 1000), connectionsPerSecond: phase.tally.connections / (phase.ms / 1000),
        cut: phase.cut, daemonCpuS: cpuBefore !== null && cpuAfter !== null ? Number((cpuAfter - cpuBefore).toFixed(1)) : null,
        rssStartKB, rssBaselineKB, rssPeakKB, rssAfterKB, heapBaselineMB, heapAfterMB, committedBaselineMB, committedAfterMB, externalBaselineMB, externalAfterMB, threadsBaseline: threadsBefore.size, threadsAfter: threadsAfter.size,
      },
      tally: phase.tally, warmup, checks,
      daemon: { logLevels: d.levels, fatal: d.fatal, errors: d.errors, errorKinds: Object.fromEntries(d.errorKinds), warnings: Object.fromEntries(d.warnings), stderrTail: d.stderr.slice(-4000), exit: d.exit },
      probes: { http: watch.http, mqtt: watch.mqtt, uplink: watch.uplink },
      stall: phase.stall,
      series: watch.series,
      metricsAfter: d.alive || metricsNow.status === 200 ? metricsNow.body.split('\n').filter((l) => l !== '' && !l.startsWith('#') && !/ 0$/.test(l)) : [],
      suspects,
      brokerDrop: firstDrop === null ? null : {
        line: `${firstDrop.line}${firstDrop === warmupDrop ? ' (during the warm-up)' : ''}`,
        indices: firstDrop.suspects, replay: replayCommand(o, ` --only ${firstDrop.suspects.join(',')}`),
      },
    };
    printReport(report);
    if (o.json) fs.writeFileSync(o.json, `${JSON.stringify(report, null, 2)}\n`);
    return checks.every((c) => c.ok) ? 0 : 1;
  } finally {
    watch?.close();
    if (daemon?.alive) await daemon.stop(5000);
    await broker.close();
  }
}

if (require.main === module) {
  // Exit through process.exit so the tracked daemon and mosquitto are killed on the way out.
  process.once('SIGINT', () => process.exit(130));
  process.once('SIGTERM', () => process.exit(143));
  main(process.argv.slice(2)).then((code) => process.exit(code), (err: Error) => {
    process.stderr.write(`fuzz: ${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}
