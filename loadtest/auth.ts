// Scenario "auth": what authentication (FANOUT_PASSWORD_FILE) and authorisation
// (FANOUT_ACL_FILE) cost mqtt-fanout. The same two jobs run against `fanout`
// (neither file) and `fanout-auth` (both; targets.ts writes them): first a
// connect storm, where every CONNECT of fanout-auth waits for a PBKDF2-SHA512
// verification on the supervisor's pool, then a QoS 1 uplink stream, where
// every PUBLISH is checked against the ACL before it is forwarded. The two jobs
// share one target, one after the other, so a run needs one set of processes.
import { ConnectionJob, runConnectStorm, StormResult } from './connect-storm';
import type { Target } from './targets';
import { Progress, runUplink, ScenarioResult, UplinkJob } from './uplink';

export interface AuthJob {
  /** The connect storm: opened in one step, as fast as --concurrency allows. */
  connection: ConnectionJob;
  /** The QoS 1 stream, after the storm's connections are closed. */
  uplink: UplinkJob;
}

export interface AuthResult {
  /** The devices gave user names and passwords (the target is fanout-auth). */
  auth: boolean;
  storm: StormResult;
  uplink: ScenarioResult;
}

export async function runAuth(target: Target, job: AuthJob, onProgress?: (text: string) => void): Promise<AuthResult> {
  const auth = target.kind === 'fanout-auth';
  const storm = await runConnectStorm(target, { ...job.connection, steps: 1, auth }, (text) => onProgress?.(`connect storm ${text}`));
  const uplink = await runUplink(target, { ...job.uplink, auth }, (p: Progress) =>
    onProgress?.(`uplink ${p.elapsedS.toFixed(1)}s sent ${p.sent} acked ${p.acked} recv ${p.received.join(' ')}`),
  );
  return { auth, storm, uplink };
}
