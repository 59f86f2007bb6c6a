// Entry point: `cli.js [scenario] [options]`. Alternates the targets round by
// round (A B A B ...) so slow drift of the machine (thermal, page cache, other
// tenants) hits both alike.
import { HELP, NotAvailableError, Options, parseOptions, UsageError } from './options';
import { ProgressLine, RunRecord, writeJson } from './output';
import { installCleanupHandlers } from './procs';
import { SCENARIO_DEFS, ScenarioDef, UPSTREAM_COUNT } from './scenarios';
import { startTarget, Target, TargetKind } from './targets';
import type { Qos } from './mqtt-wire';

async function runOne(def: ScenarioDef<unknown>, opts: Options, round: number, kind: TargetKind, qos: Qos | null, progress: ProgressLine): Promise<RunRecord> {
  const label = `[${opts.scenario} round ${round}/${opts.rounds} ${kind}${qos === null ? '' : ` qos${qos}`}]`;
  const record: RunRecord = { scenario: opts.scenario, round, target: kind, qos, shards: kind === 'fanout' ? opts.shards : null, error: null, result: null, notes: [] };
  let target: Target | null = null;
  progress.write(`${label} starting`);
  try {
    const setup = def.targetSetup(opts, qos);
    target = await startTarget(kind, { upstreams: UPSTREAM_COUNT, qos: setup.qos, recoverable: setup.recoverable, shards: opts.shards, daemonLogLevel: 'info', keepLogs: opts.keepLogs });
    const runTag = `lt${process.pid}r${round}${kind[0]}${qos ?? 'x'}-`;
    record.result = await def.run(target, opts, qos, { runTag, label, progress });
  } catch (err) {
    record.error = (err as Error).message;
  }
  // Logs of a run that lost messages or devices are the first thing anyone will want to read.
  const suspicious = record.error !== null || (record.result !== null && def.suspicious(record.result));
  if (target) record.notes.push(...(await target.stop(suspicious)));
  progress.clear();
  progress.line(`${label} ${record.result !== null ? def.line(record.result) : 'FAILED'}`);
  return record;
}

async function main(): Promise<number> {
  let opts: Options | null;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    if (err instanceof NotAvailableError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`${err.message}\n\n${HELP}`);
    return 2;
  }
  if (opts === null) {
    process.stdout.write(HELP);
    return 0;
  }
  installCleanupHandlers();
  const def = SCENARIO_DEFS[opts.scenario];
  const startedAt = new Date();
  const progress = new ProgressLine();
  const records: RunRecord[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    for (const qos of def.variants(opts)) {
      for (const kind of opts.targets) records.push(await runOne(def, opts, round, kind, qos, progress));
    }
  }
  process.stdout.write(def.render(records));
  if (opts.json) writeJson(opts.json, opts, records, startedAt, def.summary(records));
  return records.some((r) => r.error !== null) ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`loadtest failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
