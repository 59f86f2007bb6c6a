// Entry point: `cli.js [scenario] [options]`. Alternates the targets round by
// round (A B A B ...) so slow drift of the machine (thermal, page cache, other
// tenants) hits both alike; with --transport both, each target runs over TCP
// and then over WebSocket within the round (likewise TLS).
import type { Transport } from './mqtt-ws';
import { HELP, Options, parseOptions, UsageError } from './options';
import { ProgressLine, RunRecord, writeJson } from './output';
import { installCleanupHandlers } from './procs';
import { SCENARIO_DEFS, ScenarioDef, UPSTREAM_COUNT } from './scenarios';
import { isFanout, startTarget, Target, TargetKind } from './targets';
import { readProfiles, renderProfiles } from './profile';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Qos } from './mqtt-wire';

/** One letter each in client ids, which MQTT 3.1.1 servers need only accept up to 23 bytes long. */
const KIND_TAG: Record<TargetKind, string> = { fanout: 'f', 'fanout-auth': 'a', 'fanout-per-device': 'p', mosquitto: 'm', 'mosquitto-direct': 'd', 'sink-direct': 'k' };
const TRANSPORT_TAG: Record<Transport, string> = { tcp: 't', ws: 'w', tls: 's' };

async function runOne(def: ScenarioDef<unknown>, opts: Options, round: number, kind: TargetKind, transport: Transport, qos: Qos | null, progress: ProgressLine,
  devices: number | null = null): Promise<RunRecord> {
  const via = opts.transports.length > 1 || transport !== 'tcp' ? `/${transport}` : '';
  const sweep = opts.rateSteps.length > 1 ? ` rate ${opts.rate === 0 ? 'max' : opts.rate}` : '';
  const label = `[${opts.scenario} round ${round}/${opts.rounds}${devices === null ? '' : ` ${devices} devices`}${sweep} ${kind}${opts.shardCounts.length > 1 && isFanout(kind) ? ` shards ${opts.shards}` : ''}${via}${qos === null ? '' : ` qos${qos}`}]`;
  if (devices !== null) opts = { ...opts, devices, connections: devices };
  const record: RunRecord = {
    scenario: opts.scenario,
    round,
    target: kind,
    transport,
    qos,
    shards: isFanout(kind) ? opts.shards : null,
    rate: opts.scenario === 'uplink' || opts.scenario === 'mixed' ? opts.rate : null,
    devices,
    error: null,
    result: null,
    notes: [],
  };
  let target: Target | null = null;
  const profDir = opts.cpuProf !== null && isFanout(kind)
    ? path.resolve(opts.cpuProf, `r${round}-${kind}-${transport}${qos === null ? '' : `-qos${qos}`}${devices === null ? '' : `-${devices}`}-shards${opts.shards}`)
    : null;
  progress.write(`${label} starting`);
  try {
    const setup = def.targetSetup(opts, qos, kind);
    target = await startTarget(kind, {
      upstreams: UPSTREAM_COUNT,
      qos: setup.qos,
      recoverable: setup.recoverable,
      shards: opts.shards,
      daemonLogLevel: 'info',
      keepLogs: opts.keepLogs,
      ws: setup.ws,
      http: setup.http,
      upstream: setup.upstream,
      tls: setup.tls,
      auth: setup.auth,
      upstreamRate: opts.upstreamRate,
      cpuProfDir: profDir,
    });
    const runTag = `lt${process.pid}r${round}${KIND_TAG[kind]}${TRANSPORT_TAG[transport]}${qos ?? 'x'}-`;
    record.result = await def.run(target, opts, qos, { runTag, label, progress, transport });
  } catch (err) {
    record.error = (err as Error).message;
  }
  // Logs of a run that lost messages or devices are the first thing anyone will want to read.
  const suspicious = record.error !== null || (record.result !== null && def.suspicious(record.result));
  if (target) record.notes.push(...(await target.stop(suspicious)));
  progress.clear();
  progress.line(`${label} ${record.result !== null ? def.line(record.result) : 'FAILED'}`);
  // The daemon writes its profiles as it exits (target.stop above).
  if (profDir !== null && fs.existsSync(profDir)) {
    process.stdout.write(`\n${label} CPU profiles in ${profDir}:\n${renderProfiles(readProfiles(profDir))}\n`);
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
  const def = SCENARIO_DEFS[opts.scenario];
  const startedAt = new Date();
  const progress = new ProgressLine();
  const records: RunRecord[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    // per-device: each device count of --devices in turn, every target for each.
    for (const devices of opts.scenario === 'per-device' ? opts.deviceCounts : [null]) {
      for (const qos of def.variants(opts)) {
        // A load sweep: each offered rate with every target in turn, so a rate's runs stand close together.
        for (const step of opts.rateSteps) {
          const atRate = { ...opts, ...step };
          // Same job, same round: each target over every transport asked for, back to back (tcp, then ws).
          for (const kind of opts.targets) {
            for (const shards of isFanout(kind) ? opts.shardCounts : [opts.shards]) {
              const o = shards === opts.shards ? atRate : { ...atRate, shards };
              for (const transport of opts.transports) records.push(await runOne(def, o, round, kind, transport, qos, progress, devices));
            }
          }
        }
      }
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
