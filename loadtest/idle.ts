// Scenario "idle": what a held connection costs the target. Connections open,
// then send nothing but PINGREQ every keep-alive period for the hold; the
// target's RSS before connecting and at the end of the hold gives KB per
// connection.
import { ConnectionJob, checkFileLimits, startConnections } from './connect-storm';
import type { HoldStats, StepResult } from './connections';
import { readRssKB, ResourceReport, resourceReport, UsageMeter } from './proc-usage';
import { sleep } from './procs';
import type { Target } from './targets';

export interface IdleJob extends ConnectionJob {
  holdS: number;
}

export interface IdleResult {
  connections: number;
  connected: StepResult;
  holdS: number;
  /** Target VmRSS before the first connection and at the end of the hold, KB. */
  rssBeforeKB: number;
  rssAfterKB: number;
  rssPerConnKB: number;
  hold: HoldStats;
  /** Over the hold only: CPU per PINGREQ answered, peak RSS. */
  resources: ResourceReport;
}

/** Lets a freshly started target finish its start-up allocations before the baseline is read. */
const SETTLE_MS = 500;

export async function runIdle(target: Target, job: IdleJob, onPhase?: (text: string) => void): Promise<IdleResult> {
  checkFileLimits(target, job.connections);
  const front = target.watched().find((p) => p.role === 'target');
  if (!front) throw new Error('target has no front process to measure');
  const pool = await startConnections(target, job);
  let meter: UsageMeter | null = null;
  let closed = false;
  try {
    await sleep(SETTLE_MS);
    const rssBeforeKB = readRssKB(front.pid) ?? NaN;
    onPhase?.(`connecting ${job.connections}`);
    const connected = await pool.open(job.connections);
    onPhase?.(`holding ${connected.ok} for ${job.holdS} s`);
    meter = new UsageMeter(target.watched()).start();
    await sleep(job.holdS * 1000);
    const rssAfterKB = readRssKB(front.pid) ?? NaN;
    const procs = meter.stop();
    meter = null;
    const hold = await pool.close();
    closed = true;
    return {
      connections: job.connections,
      connected,
      holdS: job.holdS,
      rssBeforeKB,
      rssAfterKB,
      rssPerConnKB: connected.ok > 0 ? (rssAfterKB - rssBeforeKB) / connected.ok : NaN,
      hold,
      resources: resourceReport(procs, 'ping', hold.pongs, job.holdS),
    };
  } finally {
    meter?.stop();
    if (!closed) await pool.terminate();
  }
}
