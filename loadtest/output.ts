// What a run leaves behind: its record, the optional JSON file with every raw
// figure, and a single self-overwriting progress line when a human is
// watching stderr (never in a pipe or a CI log).
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { Qos } from './mqtt-wire';
import type { Transport } from './mqtt-ws';
import type { Options, ScenarioName } from './options';
import type { TargetKind } from './targets';

export interface RunRecord<R = unknown> {
  scenario: ScenarioName;
  round: number;
  target: TargetKind;
  /** How the devices connected (uplink --transport); tcp for every other scenario. */
  transport: Transport;
  /** The QoS of an uplink or broker-outage run (http: of POST /publish); null where it does not apply (mixed, http's GET /metrics). */
  qos: Qos | null;
  /** FANOUT_SHARDS of the daemon; null for the bridge. */
  shards: number | null;
  /** uplink, mixed: the offered rate of this run, msg/s (0: as fast as it goes; --rate lists several); null elsewhere. */
  rate?: number | null;
  /** per-device: the device count of this run (--devices lists several); null elsewhere. */
  devices?: number | null;
  /** Set when the run could not be measured (target failed to start, probe timed out, ...). */
  error: string | null;
  result: R | null;
  notes: string[];
}

export function writeJson(file: string, opts: Options, records: RunRecord[], startedAt: Date, summary: unknown): void {
  const doc = {
    scenario: opts.scenario,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? null, node: process.version, loadavg: os.loadavg() },
    options: opts,
    runs: records,
    summary,
  };
  // NaN is not JSON; null says "no figure" without breaking parsers.
  fs.writeFileSync(file, JSON.stringify(doc, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
}

/** A single stderr line rewritten in place; silent unless stderr is a terminal. */
export class ProgressLine {
  private readonly enabled = process.stderr.isTTY === true;
  private last = 0;

  /** Throttled: at most five updates a second. */
  update(text: string): void {
    if (!this.enabled || Date.now() - this.last < 200) return;
    this.last = Date.now();
    this.write(text);
  }

  write(text: string): void {
    if (this.enabled) process.stderr.write(`\r\x1b[K${text.slice(0, (process.stderr.columns || 120) - 1)}`);
  }

  /** A line that stays (per-run summary); terminal only, like the progress line. */
  line(text: string): void {
    if (this.enabled) process.stderr.write(`\r\x1b[K${text}\n`);
  }

  clear(): void {
    if (this.enabled) process.stderr.write('\r\x1b[K');
  }
}
