// Scenario "connect-storm": open connections (TCP + CONNECT/CONNACK) as fast
// as the target takes them, in steps up to the total, keeping every one open,
// so each step shows the rate at a higher number already held.
import { ConnectionPool, HoldStats, StepResult } from './connections';
import { mergeEncoded, newHistogram, summarize, LatencySummary } from './latency';
import type { ProtocolLevel } from './mqtt-wire';
import { share } from './pacing';
import { openFileLimit, ResourceReport, resourceReport, UsageMeter } from './proc-usage';
import type { Target } from './targets';

export interface ConnectionJob {
  connections: number;
  threads: number;
  protocol: ProtocolLevel;
  keepalive: number;
  /** Connections per second; 0 = as fast as `concurrency` allows. */
  ramp: number;
  concurrency: number;
  timeoutMs: number;
  runTag: string;
  /** Connections give user names and passwords (deviceCredentials): the target is fanout-auth. */
  auth?: boolean;
}

export interface StormJob extends ConnectionJob {
  steps: number;
  /** Runs once every step is done, while all the connections are still held. */
  whileHeld?: () => Promise<void>;
}

export interface StormStep extends StepResult {
  step: number;
  /** Connections held open when the step began. */
  heldBefore: number;
}

export interface StormResult {
  connections: number;
  steps: StormStep[];
  ok: number;
  refused: number;
  timeouts: number;
  errors: number;
  /** First attempt of the first step to the last outcome of the last step. */
  timeToAllMs: number;
  connPerSec: number;
  connect: LatencySummary;
  errorSamples: string[];
  /** Pings and drops while the connections were held (between steps). */
  hold: HoldStats;
  /** CPU per connection opened, over the steps. */
  resources: ResourceReport;
}

/** Open files the harness needs besides the connections (workers, pipes, logs, receivers). */
const FD_MARGIN = 200;

/** Fails early, with the reason, where the open-file limit would fail the run halfway. */
export function checkFileLimits(target: Target, connections: number): void {
  const own = openFileLimit();
  if (own !== null && connections + FD_MARGIN > own) {
    throw new Error(`${connections} connections need ~${connections + FD_MARGIN} open files, this process may hold ${own} (ulimit -n)`);
  }
  const front = target.watched().find((p) => p.role === 'target');
  const theirs = front ? openFileLimit(front.pid) : null;
  if (theirs !== null && connections + 50 > theirs) {
    throw new Error(`${connections} connections exceed the target's open-file limit of ${theirs}`);
  }
}

export function startConnections(target: Target, job: ConnectionJob): Promise<ConnectionPool> {
  return ConnectionPool.start({
    host: '127.0.0.1',
    port: target.devicePort,
    clientPrefix: `${job.runTag}conn-`,
    connections: job.connections,
    threads: job.threads,
    protocol: job.protocol,
    keepalive: job.keepalive,
    timeoutMs: job.timeoutMs,
    concurrency: job.concurrency,
    ramp: job.ramp,
    auth: job.auth,
  });
}

export async function runConnectStorm(target: Target, job: StormJob, onStep?: (text: string) => void): Promise<StormResult> {
  checkFileLimits(target, job.connections);
  const pool = await startConnections(target, job);
  let meter: UsageMeter | null = null;
  let closed = false;
  try {
    meter = new UsageMeter(target.watched()).start();
    const steps: StormStep[] = [];
    const stepCount = Math.min(job.steps, job.connections);
    let held = 0;
    for (let s = 0; s < stepCount; s++) {
      const r = await pool.open(share(job.connections, stepCount, s));
      steps.push({ ...r, step: s + 1, heldBefore: held });
      held += r.ok;
      onStep?.(`step ${s + 1}/${stepCount}: ${held} open, ${Math.round(r.connPerSec)} conn/s`);
    }
    const procs = meter.stop();
    meter = null;
    await job.whileHeld?.();
    const hist = newHistogram();
    for (const st of steps) if (st.connect.hdr) mergeEncoded(hist, st.connect.hdr);
    const connect = summarize(hist);
    hist.destroy();
    const firstStartAt = steps.find((st) => st.firstStartAt > 0)?.firstStartAt ?? 0;
    const lastDoneAt = Math.max(0, ...steps.map((st) => st.lastDoneAt));
    const timeToAllMs = firstStartAt > 0 ? lastDoneAt - firstStartAt : 0;
    const hold = await pool.close();
    closed = true;
    const ok = steps.reduce((n, st) => n + st.ok, 0);
    return {
      connections: job.connections,
      steps,
      ok,
      refused: steps.reduce((n, st) => n + st.refused, 0),
      timeouts: steps.reduce((n, st) => n + st.timeouts, 0),
      errors: steps.reduce((n, st) => n + st.errors, 0),
      timeToAllMs,
      connPerSec: timeToAllMs > 0 ? (ok * 1000) / timeToAllMs : 0,
      connect,
      errorSamples: [...new Set(steps.flatMap((st) => st.errorSamples))].slice(0, 10),
      hold,
      resources: resourceReport(procs, 'conn', ok, timeToAllMs / 1000),
    };
  } finally {
    meter?.stop();
    if (!closed) await pool.terminate();
  }
}
