// Entry point: alternate the targets round by round (A B A B ...) so slow
// drift of the machine (thermal, page cache, other tenants) hits both alike.
import { HELP, Options, parseOptions, UsageError } from './options';
import { installCleanupHandlers } from './procs';
import { ProgressLine, renderReport, RunRecord, writeJson } from './report';
import { startTarget, Target, TargetKind } from './targets';
import { runUplink } from './uplink';
import type { Qos } from './mqtt-wire';

const UPSTREAMS = 2;

async function runOne(opts: Options, round: number, kind: TargetKind, qos: Qos, progress: ProgressLine): Promise<RunRecord> {
  const label = `[round ${round}/${opts.rounds} ${kind} qos${qos}]`;
  const record: RunRecord = { round, target: kind, qos, error: null, result: null, notes: [] };
  let target: Target | null = null;
  progress.write(`${label} starting`);
  try {
    target = await startTarget(kind, { upstreams: UPSTREAMS, qos, shards: 2, daemonLogLevel: 'info', keepLogs: opts.keepLogs });
    record.result = await runUplink(
      target,
      {
        devices: opts.devices,
        messages: opts.messages,
        payload: opts.payload,
        qos,
        inflight: opts.inflight,
        threads: opts.threads,
        topicPattern: opts.topic,
        idleTimeoutS: opts.idleTimeoutS,
        runTag: `lt${process.pid}r${round}${kind[0]}q${qos}-`,
      },
      (p) => progress.update(label, p),
    );
  } catch (err) {
    record.error = (err as Error).message;
  }
  const r = record.result;
  // Logs of a run that lost messages or devices are the first thing anyone will want to read.
  const suspicious = record.error !== null || (r !== null && (r.endedBy !== 'complete' || r.publisher.errors.length > 0));
  if (target) record.notes.push(...(await target.stop(suspicious)));
  progress.clear();
  if (process.stderr.isTTY) {
    const missing = r ? r.brokers.map((b) => `${b.broker}=${b.missing}`).join(' ') : '';
    process.stderr.write(r ? `${label} ${Math.round(r.msgPerSec)} msg/s, missing ${missing}\n` : `${label} FAILED\n`);
  }
  return record;
}

async function main(): Promise<number> {
  let opts: Options | null;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`${err.message}\n\n${HELP}`);
    return 2;
  }
  if (opts === null) {
    process.stdout.write(HELP);
    return 0;
  }
  installCleanupHandlers();
  const startedAt = new Date();
  const progress = new ProgressLine();
  const records: RunRecord[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    for (const qos of opts.qos) {
      for (const kind of opts.targets) records.push(await runOne(opts, round, kind, qos, progress));
    }
  }
  process.stdout.write(renderReport(records));
  if (opts.json) writeJson(opts.json, opts, records, startedAt);
  return records.some((r) => r.error !== null) ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`loadtest failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
