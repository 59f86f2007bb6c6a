// Scenario "broker-outage": a paced QoS 1 stream while upstream b1 is
// SIGKILLed and, after a while, started again on the same port. Nothing may be
// missing at either broker. b1 restarts from a snapshot taken before the
// stream (SIGUSR1) holding our subscriber's persistent session, so messages
// the target re-sends before our subscriber is back are queued for it rather
// than dropped by b1: a loss then is the target's, not the harness's.
import { sleep } from './procs';
import type { UpstreamCounter } from './tally';
import type { Target } from './targets';
import { Progress, runUplink, ScenarioResult, UplinkJob } from './uplink';

export const VICTIM = 'b1';

export interface OutageJob extends UplinkJob {
  killAtS: number;
  downForS: number;
}

export interface OutageFigures {
  victim: string;
  /** Seconds after the stream started. */
  killedAtS: number;
  restartedAtS: number;
  /**
   * From the restart (spawn of the new b1) to b1 delivering the first message
   * sent after the kill, ms; NaN if none arrived.
   */
  recoveryMs: number;
  /** Times our subscriber reconnected to b1 (1 expected). */
  reconnects: number;
}

export interface OutageResult extends ScenarioResult {
  outage: OutageFigures;
}

export async function runBrokerOutage(target: Target, job: OutageJob, onProgress?: (p: Progress) => void): Promise<OutageResult> {
  const victimProc = `upstream-${VICTIM}`;
  const outage: OutageFigures = { victim: VICTIM, killedAtS: NaN, restartedAtS: NaN, recoveryMs: NaN, reconnects: 0 };
  let restartWall = 0;
  let victim: UpstreamCounter | null = null;
  const result = await runUplink(target, job, {
    onProgress,
    survivors: [VICTIM],
    beforeStart: () => target.snapshotUpstream(VICTIM),
    during: async (run) => {
      const wall = (): number => performance.timeOrigin + performance.now();
      const receiver = run.receivers.find((r) => r.broker === VICTIM);
      if (!receiver) throw new Error(`no subscriber on ${VICTIM}`);
      victim = receiver;
      await sleep(Math.max(0, run.startedAt + job.killAtS * 1000 - wall()));
      run.meter?.retire(victimProc);
      await target.killUpstream(VICTIM);
      // Taken once b1 is gone, so no message stamped after it can have reached the old b1.
      const killWall = wall();
      receiver.watchSentAfter(killWall);
      outage.killedAtS = (killWall - run.startedAt) / 1000;
      await sleep(Math.max(0, killWall + job.downForS * 1000 - wall()));
      restartWall = wall();
      const pid = await target.restartUpstream(VICTIM);
      run.meter?.attach(victimProc, pid);
      outage.restartedAtS = (restartWall - run.startedAt) / 1000;
    },
  });
  const receiverTally = result.brokers.find((b) => b.broker === VICTIM);
  outage.reconnects = receiverTally?.reconnects ?? 0;
  const firstAfter = (victim as UpstreamCounter | null)?.firstAfterAt ?? 0;
  outage.recoveryMs = firstAfter > 0 && restartWall > 0 ? firstAfter - restartWall : NaN;
  return { ...result, outage };
}
