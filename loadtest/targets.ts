// The two systems under comparison, each with its own pair of upstream
// brokers, started fresh for every run so no state (queues, sessions, heap)
// carries from one measurement into the next.
import * as path from 'node:path';
import { bridgeConf, upstreamConf, UpstreamRef, writeConf } from './mosquitto-conf';
import type { Qos } from './mqtt-wire';
import {
  allocatePort,
  describeExit,
  keepTempDir,
  makeTempDir,
  Managed,
  removeTempDir,
  startDaemon,
  startMosquitto,
} from './procs';

export type TargetKind = 'fanout' | 'mosquitto';

export interface TargetOptions {
  upstreams: number;
  qos: Qos;
  shards: number;
  daemonLogLevel: string;
  /** Keep the temp dir (configs and logs) after the run. */
  keepLogs: boolean;
}

export interface Target {
  kind: TargetKind;
  devicePort: number;
  upstreams: UpstreamRef[];
  dir: string;
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
}

export function daemonEntry(): string {
  // dist/loadtest/targets.js -> dist/src/cli.js
  return path.resolve(__dirname, '..', 'src', 'cli.js');
}

async function startUpstreams(count: number, dir: string, procs: Managed[]): Promise<UpstreamRef[]> {
  const refs: UpstreamRef[] = [];
  for (let i = 1; i <= count; i++) {
    const ref = { name: `b${i}`, port: await allocatePort() };
    const conf = writeConf(dir, `upstream-${ref.name}`, upstreamConf(ref.port));
    procs.push(await startMosquitto(`upstream-${ref.name}`, conf, ref.port, dir));
    refs.push(ref);
  }
  return refs;
}

export async function startTarget(kind: TargetKind, opts: TargetOptions): Promise<Target> {
  const dir = makeTempDir(`loadtest-${kind}`);
  const procs: Managed[] = [];
  // The front process (daemon or bridge) stops first so it cannot log upstream disconnects as failures.
  const stop = async (keep = false): Promise<string[]> => {
    const notes: string[] = [];
    for (const p of [...procs].reverse()) {
      const info = await p.stop();
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
  try {
    const upstreams = await startUpstreams(opts.upstreams, dir, procs);
    const devicePort = await allocatePort();
    if (kind === 'fanout') {
      procs.push(
        await startDaemon({
          entry: daemonEntry(),
          port: devicePort,
          brokers: upstreams,
          shards: opts.shards,
          logLevel: opts.daemonLogLevel,
          dir,
        }),
      );
    } else {
      const conf = writeConf(dir, 'bridge', bridgeConf(devicePort, upstreams, opts.qos));
      procs.push(await startMosquitto('bridge', conf, devicePort, dir));
    }
    const casualties = (): string[] =>
      procs.flatMap((p) => (p.exitInfo ? [`${p.name} exited during the run (${describeExit(p.exitInfo)}); log ${p.logPath}`] : []));
    return { kind, devicePort, upstreams, dir, stop, casualties };
  } catch (err) {
    const notes = await stop(true);
    throw new Error(`${(err as Error).message}\n${notes.join('\n')}`, { cause: err });
  }
}
