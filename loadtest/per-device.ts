// Scenario "per-device": what per-device upstream mode costs next to pooled mode. The same two
// jobs run against `fanout` (pooled: devices share the daemon's pool of broker connections) and
// `fanout-per-device` (FANOUT_UPSTREAM_MODE=per-device: each device has a session of its own at
// both upstreams, opened before its CONNACK): first a connect storm of --devices connections,
// held while the daemon's RSS is read (RSS per device), then a QoS 1 uplink stream from as many
// devices. The two jobs share one target, one after the other, as in the auth scenario.
import { ConnectionJob, runConnectStorm, StormResult } from './connect-storm';
import { openFileLimit, readRssKB } from './proc-usage';
import { sleep } from './procs';
import type { Target } from './targets';
import { Progress, runUplink, ScenarioResult, UplinkJob } from './uplink';

export interface PerDeviceJob {
  connection: ConnectionJob;
  uplink: UplinkJob;
}

export interface PerDeviceResult {
  /** fanout-per-device: each device had its own sessions upstream. */
  perDevice: boolean;
  devices: number;
  storm: StormResult;
  /** Daemon VmRSS before the storm and with every connection of it held, KB. */
  rssBeforeKB: number;
  rssHeldKB: number;
  /** (held - before) / connections held. */
  rssPerDeviceKB: number;
  uplink: ScenarioResult;
}

/** Lets a freshly started target finish its start-up allocations before the baseline is read. */
const SETTLE_MS = 500;

export async function runPerDevice(target: Target, job: PerDeviceJob, onProgress?: (text: string) => void): Promise<PerDeviceResult> {
  const perDevice = target.kind === 'fanout-per-device';
  const front = target.watched().find((p) => p.role === 'target');
  if (!front) throw new Error('target has no front process to measure');
  const devices = job.connection.connections;
  // Per device: its socket, and in per-device mode one more per upstream.
  const files = devices * (perDevice ? 1 + target.upstreams.length : 1) + 200;
  const limit = openFileLimit(front.pid);
  if (limit !== null && files > limit) throw new Error(`${devices} devices need ~${files} open files in the daemon, it may hold ${limit} (ulimit -n)`);
  await sleep(SETTLE_MS);
  const rssBeforeKB = readRssKB(front.pid) ?? NaN;
  let rssHeldKB = NaN;
  const storm = await runConnectStorm(target, {
    ...job.connection, steps: 1,
    whileHeld: async () => {
      await sleep(SETTLE_MS);
      rssHeldKB = readRssKB(front.pid) ?? NaN;
    },
  }, (text) => onProgress?.(`connect storm ${text}`));
  const uplink = await runUplink(target, job.uplink, (p: Progress) =>
    onProgress?.(`uplink ${p.elapsedS.toFixed(1)}s sent ${p.sent} acked ${p.acked} recv ${p.received.join(' ')}`),
  );
  return {
    perDevice, devices, storm, rssBeforeKB, rssHeldKB, rssPerDeviceKB: storm.ok > 0 ? (rssHeldKB - rssBeforeKB) / storm.ok : NaN, uplink,
  };
}
