// The systems under comparison, each with its own pair of upstream brokers,
// started fresh for every run so no state (queues, sessions, heap) carries
// from one measurement into the next. `mosquitto-direct` (downlink) is no
// front process at all: devices use the one upstream mosquitto themselves.
// On request a target also listens for MQTT over WebSocket (mqtt-fanout's
// FANOUT_WS_PORT, a `protocol websockets` listener on the bridge), for MQTT
// over TLS (FANOUT_TLS_PORT, a TLS listener on the bridge; certificates made
// for the run) and, for mqtt-fanout, HTTP (FANOUT_HTTP_PORT); the daemon picks
// those ports and names them in its ready line. `fanout-auth` is mqtt-fanout
// authenticating and authorising every device (FANOUT_PASSWORD_FILE and
// FANOUT_ACL_FILE, written for the run). `fanout-per-device` is mqtt-fanout in per-device upstream
// mode (FANOUT_UPSTREAM_MODE=per-device): every device has a session of its own at each upstream.
// The upstreams are mosquittos or, with `upstream: 'sink'`, stand-ins that only acknowledge and
// count (sink.ts), each a child process of its own; `sink-direct` is one sink serving the devices
// itself (what a sink costs per message, measured alone).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeAuthFiles } from './auth-files';
import { makeServerCerts } from './certs';
import { bridgeConf, upstreamConf, UpstreamRef, writeConf } from './mosquitto-conf';
import { startSink } from './sink';
import type { Qos } from './mqtt-wire';
import type { DeviceEndpoint, Transport } from './mqtt-ws';
import type { WatchedProc } from './proc-usage';
import {
  allocatePort,
  describeExit,
  keepTempDir,
  makeTempDir,
  Managed,
  removeTempDir,
  sleep,
  startDaemon,
  startMosquitto,
  waitForPort,
} from './procs';

/**
 * mosquitto: the bridge; mosquitto-direct: upstream b1 itself serving the devices (downlink's peer);
 * fanout-auth: mqtt-fanout with a password file and an ACL file (the auth scenario).
 */
export type TargetKind = 'fanout' | 'fanout-auth' | 'fanout-per-device' | 'mosquitto' | 'mosquitto-direct' | 'sink-direct';

/** What the upstreams are: mosquittos, or sinks (sink.ts) that only acknowledge and count. */
export type UpstreamKind = 'sink' | 'mosquitto';

/** The targets that are mqtt-fanout. */
export function isFanout(kind: TargetKind): boolean {
  return kind === 'fanout' || kind === 'fanout-auth' || kind === 'fanout-per-device';
}

export interface TargetOptions {
  upstreams: number;
  /** mosquitto (the default) or sink; sink-direct is always a sink. */
  upstream?: UpstreamKind;
  /** QoS the bridge forwards at (`topic # out Q`); mixed runs need 2. */
  qos: Qos;
  /** FANOUT_SHARDS of the daemon. */
  shards: number;
  daemonLogLevel: string;
  /** Keep the temp dir (configs and logs) after the run. */
  keepLogs: boolean;
  /**
   * Upstream that will be killed and restarted (broker-outage). It persists
   * sessions to a snapshot (see snapshotUpstream) and the bridge keeps its
   * queues across reconnects; null for every other scenario.
   */
  recoverable?: string | null;
  /** A WebSocket listener for devices as well (fanout: FANOUT_WS_PORT; bridge: a `protocol websockets` listener). */
  ws?: boolean;
  /** fanout only: FANOUT_HTTP_PORT (POST /publish, /metrics). */
  http?: boolean;
  /** A TLS listener for devices as well (fanout: FANOUT_TLS_PORT; bridge: a TLS listener). */
  tls?: boolean;
  /** fanout-auth: users 0..users-1 (and the probe) in the password file; the ACL lets each publish on its topic. */
  auth?: { users: number; topicPattern: string } | null;
  /** fanout-per-device: FANOUT_UPSTREAM_CONNECT_RATE (null: the daemon's default). */
  upstreamRate?: number | null;
  /** mqtt-fanout targets: write V8 CPU profiles of every thread here (--cpu-prof). */
  cpuProfDir?: string | null;
}

export interface Target {
  kind: TargetKind;
  devicePort: number;
  /** WebSocket listener for devices, when asked for (TargetOptions.ws). */
  wsPort: number | null;
  wsPath: string;
  /** Who serves WebSocket: uWebSockets.js (or ws) in mqtt-fanout, mosquitto for the bridge; null without. */
  wsServer: string | null;
  /** mqtt-fanout's HTTP port, when asked for (TargetOptions.http). */
  httpPort: number | null;
  /** TLS listener for devices, when asked for (TargetOptions.tls). */
  tlsPort: number | null;
  /** Where devices connect over `transport`; throws if the target has no such listener. */
  endpoint(transport: Transport): DeviceEndpoint;
  /** mosquitto-direct, sink-direct: b1 only, which is also the device port. */
  upstreams: UpstreamRef[];
  upstreamKind: UpstreamKind;
  /** The sink process of upstream `name` (its tally is read over its IPC channel); null for a mosquitto. */
  sink(name: string): Managed | null;
  dir: string;
  /** FANOUT_SHARDS of the daemon; null for the bridge. */
  shards: number | null;
  /** The front process (daemon, bridge, or b1 for mosquitto-direct) and the upstreams, for CPU and RSS figures. */
  watched(): WatchedProc[];
  /**
   * Stops every process; returns notes on anything that did not exit cleanly.
   * The temp dir (configs, logs) survives when `keep` is set or a note was made.
   */
  stop(keep?: boolean): Promise<string[]>;
  /**
   * Processes that died while the target should be running. Lets a run fail at
   * once with the cause instead of idling out (something outside the harness
   * killing brokers by name looks exactly like message loss otherwise).
   */
  casualties(): string[];
  /** Makes the recoverable upstream write its sessions to disk (SIGUSR1) and waits for the file. */
  snapshotUpstream(name: string): Promise<void>;
  /** SIGKILLs an upstream; resolves once it is gone. */
  killUpstream(name: string): Promise<void>;
  /** Starts a killed upstream again on the same port and config; resolves with its pid once it listens. */
  restartUpstream(name: string): Promise<number>;
}

export function daemonEntry(): string {
  // dist/loadtest/targets.js -> dist/src/cli.js
  return path.resolve(__dirname, '..', 'src', 'cli.js');
}

interface UpstreamProc {
  ref: UpstreamRef;
  conf: string;
  /** Snapshot file of a recoverable upstream. */
  dbFile: string | null;
}

function persistDir(dir: string): string {
  // A mosquitto started as root drops to the `mosquitto` user, which must reach and write this dir.
  const p = path.join(dir, 'persist');
  fs.mkdirSync(p, { mode: 0o777 });
  fs.chmodSync(p, 0o777);
  fs.chmodSync(dir, 0o711);
  return p;
}

export async function startTarget(kind: TargetKind, opts: TargetOptions): Promise<Target> {
  const dir = makeTempDir(`loadtest-${kind}`);
  const procs: Managed[] = [];
  const ups = new Map<string, UpstreamProc>();
  // The front process (daemon or bridge) stops first so it cannot log upstream disconnects as failures.
  const stop = async (keep = false): Promise<string[]> => {
    const notes: string[] = [];
    for (const p of [...procs].reverse()) {
      // A bridge closes its broker connections on SIGTERM, and on a loaded machine that has been
      // seen to take more than 5 s.
      const info = await p.stop(p.name === 'bridge' ? 15_000 : 5000);
      const expectZero = p.name === 'mqtt-fanout' || p.name.startsWith('upstream') || p.name === 'bridge';
      if (expectZero && (info.code !== 0 || info.killed)) notes.push(`${p.name} exit: ${describeExit(info)} (log ${p.logPath})`);
    }
    if (keep || notes.length > 0 || opts.keepLogs) {
      keepTempDir(dir);
      notes.push(`logs kept in ${dir}`);
    } else {
      removeTempDir(dir);
    }
    return notes;
  };
  const find = (name: string): { up: UpstreamProc; proc: Managed | undefined } => {
    const up = ups.get(name);
    if (!up) throw new Error(`no upstream ${name}`);
    return { up, proc: procs.find((p) => p.name === `upstream-${name}`) };
  };
  try {
    const recoverable = opts.recoverable ?? null;
    const direct = kind === 'mosquitto-direct' || kind === 'sink-direct';
    const upstreamKind: UpstreamKind = kind === 'sink-direct' ? 'sink' : kind === 'mosquitto-direct' ? 'mosquitto' : (opts.upstream ?? 'mosquitto');
    if (upstreamKind === 'sink' && recoverable !== null) throw new Error('a sink cannot be killed and restarted with its sessions: broker-outage needs mosquitto upstreams');
    const upstreams: UpstreamRef[] = [];
    for (let i = 1; i <= (direct ? 1 : opts.upstreams); i++) {
      if (upstreamKind === 'sink') {
        const { proc, port } = await startSink(`upstream-b${i}`, dir);
        procs.push(proc);
        upstreams.push({ name: `b${i}`, port });
        continue;
      }
      const ref = { name: `b${i}`, port: await allocatePort() };
      const persist = ref.name === recoverable ? { dir: persistDir(dir), file: `${ref.name}.db` } : null;
      const conf = writeConf(dir, `upstream-${ref.name}`, upstreamConf(ref.port, persist));
      procs.push(await startMosquitto(`upstream-${ref.name}`, conf, ref.port, dir));
      ups.set(ref.name, { ref, conf, dbFile: persist ? path.join(persist.dir, persist.file) : null });
      upstreams.push(ref);
    }
    const devicePort = direct ? upstreams[0].port : await allocatePort();
    if ((opts.ws && direct) || (opts.http && !isFanout(kind)) || (opts.tls && direct)) {
      throw new Error(`${kind} has no ${opts.http ? 'HTTP' : opts.ws ? 'WebSocket' : 'TLS'} listener here`);
    }
    if ((kind === 'fanout-auth') !== (opts.auth != null)) throw new Error(`${kind}: the auth files go with fanout-auth, and only with it`);
    let wsPort: number | null = null;
    let wsPath = '/mqtt';
    let wsServer: string | null = null;
    let httpPort: number | null = null;
    let tlsPort: number | null = null;
    const certs = opts.tls ? makeServerCerts(dir) : null;
    // mosquitto-direct and sink-direct start nothing in front: b1 is the target.
    if (isFanout(kind)) {
      const auth = opts.auth ? writeAuthFiles(dir, opts.auth.users, opts.auth.topicPattern) : null;
      const daemon = await startDaemon({
        entry: daemonEntry(),
        port: devicePort,
        brokers: upstreams,
        shards: opts.shards,
        logLevel: opts.daemonLogLevel,
        dir,
        ws: opts.ws,
        http: opts.http,
        tls: certs,
        cpuProfDir: opts.cpuProfDir ?? null,
        env: {
          ...(auth ? { FANOUT_PASSWORD_FILE: auth.passwordFile, FANOUT_ACL_FILE: auth.aclFile } : {}),
          ...(kind === 'fanout-per-device' ? { FANOUT_UPSTREAM_MODE: 'per-device' } : {}),
          ...(kind === 'fanout-per-device' && opts.upstreamRate != null ? { FANOUT_UPSTREAM_CONNECT_RATE: String(opts.upstreamRate) } : {}),
        },
      });
      procs.push(daemon.proc);
      ({ wsPort, wsServer, httpPort, tlsPort } = daemon);
      wsPath = daemon.wsPath ?? wsPath;
    } else if (kind === 'mosquitto') {
      wsPort = opts.ws ? await allocatePort() : null;
      tlsPort = certs ? await allocatePort() : null;
      const tls = certs && tlsPort !== null ? { port: tlsPort, certPath: certs.certPath, keyPath: certs.keyPath } : null;
      const conf = writeConf(dir, 'bridge', bridgeConf(devicePort, upstreams, opts.qos, recoverable !== null, wsPort, tls));
      const bridge = await startMosquitto('bridge', conf, devicePort, dir);
      procs.push(bridge);
      if (wsPort !== null) {
        await waitForPort(wsPort, bridge);
        wsServer = 'mosquitto';
      }
      if (tlsPort !== null) await waitForPort(tlsPort, bridge);
    }
    const endpoint = (transport: Transport): DeviceEndpoint => {
      if (transport === 'tcp') return { transport, host: '127.0.0.1', port: devicePort, path: wsPath };
      if (transport === 'tls') {
        if (tlsPort === null || certs === null) throw new Error(`${kind} was started without a TLS listener`);
        return { transport, host: '127.0.0.1', port: tlsPort, path: wsPath, ca: certs.caPem };
      }
      if (wsPort === null) throw new Error(`${kind} was started without a WebSocket listener`);
      return { transport, host: '127.0.0.1', port: wsPort, path: wsPath };
    };
    const front = direct ? procs[0] : procs[procs.length - 1];
    const watched = (): WatchedProc[] =>
      procs.flatMap((p) => (p.child.pid === undefined ? [] : [{ name: p.name, role: p === front ? ('target' as const) : ('upstream' as const), pid: p.child.pid }]));
    const casualties = (): string[] =>
      procs.flatMap((p) => (p.exitInfo ? [`${p.name} exited during the run (${describeExit(p.exitInfo)}); log ${p.logPath}`] : []));
    const snapshotUpstream = async (name: string): Promise<void> => {
      const { up, proc } = find(name);
      if (!up.dbFile || !proc?.child.pid) throw new Error(`upstream ${name} is not recoverable or not running`);
      const before = fs.existsSync(up.dbFile) ? fs.statSync(up.dbFile).mtimeMs : -1;
      process.kill(proc.child.pid, 'SIGUSR1');
      // mosquitto writes <file>.new and renames it, so an existing file is a complete one.
      const deadline = Date.now() + 5000;
      while (!fs.existsSync(up.dbFile) || fs.statSync(up.dbFile).mtimeMs === before) {
        if (Date.now() > deadline) throw new Error(`upstream ${name} wrote no snapshot to ${up.dbFile} within 5 s`);
        await sleep(20);
      }
    };
    const killUpstream = async (name: string): Promise<void> => {
      const { proc } = find(name);
      if (!proc) throw new Error(`upstream ${name} is not running`);
      // Out of the registry first: an intended death is no casualty and needs no exit note.
      procs.splice(procs.indexOf(proc), 1);
      proc.child.kill('SIGKILL');
      await proc.exited;
    };
    const restartUpstream = async (name: string): Promise<number> => {
      if (upstreamKind === 'sink') throw new Error(`upstream ${name} is a sink: it cannot be restarted`);
      const { up, proc } = find(name);
      if (proc) throw new Error(`upstream ${name} is still running`);
      const started = await startMosquitto(`upstream-${name}`, up.conf, up.ref.port, dir);
      // Upstreams stay ahead of the front process so stop() still stops the front first.
      procs.splice(procs.indexOf(front), 0, started);
      return started.child.pid ?? 0;
    };
    return {
      kind,
      devicePort,
      wsPort,
      wsPath,
      wsServer,
      httpPort,
      tlsPort,
      endpoint,
      upstreams,
      upstreamKind,
      sink: (name) => (upstreamKind === 'sink' ? (procs.find((p) => p.name === `upstream-${name}`) ?? null) : null),
      dir,
      shards: isFanout(kind) ? opts.shards : null,
      watched,
      stop,
      casualties,
      snapshotUpstream,
      killUpstream,
      restartUpstream,
    };
  } catch (err) {
    const notes = await stop(true);
    throw new Error(`${(err as Error).message}\n${notes.join('\n')}`, { cause: err });
  }
}
