// Reports of the connection scenarios: connect-storm (rate per step, refusals,
// time to all connected) and idle (RSS per held connection).
import type { StormResult } from './connect-storm';
import { fixed, int, latencyCells, latencyHead, machineLine, median, RESOURCE_LEGEND, resourceCells, resourceHead, table } from './format';
import type { IdleResult } from './idle';
import type { RunRecord } from './output';
import * as os from 'node:os';
import { goalLines, idleGoal, stormGoal } from './goals';

const shard = (r: RunRecord): string => (r.shards === null ? '-' : String(r.shards));

function notesOf(records: RunRecord<StormResult | IdleResult>[], samples: (x: StormResult | IdleResult) => string[]): string[] {
  return records.flatMap((r) => {
    const tag = `round ${r.round} ${r.target}`;
    return [
      ...(r.error ? [`${tag}: ${r.error}`] : []),
      ...(r.result ? samples(r.result).map((s) => `${tag}: ${s}`) : []),
      ...r.notes.map((n) => `${tag}: ${n}`),
    ];
  });
}

function medianRows<R>(records: RunRecord<R>[], cells: (ok: R[]) => string[]): string[][] {
  return [...new Set(records.map((r) => r.target))].map((target) => {
    const group = records.filter((r) => r.target === target);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    return [target, ok.length === group.length ? String(group.length) : `${ok.length}/${group.length}`, ...cells(ok)];
  });
}

/** The results of the mqtt-fanout runs (the targets are its). */
function fanoutOk<T>(records: RunRecord<T>[]): T[] {
  return records.filter((r) => r.target === 'fanout').flatMap((r) => (r.result ? [r.result] : []));
}

export function renderStorm(records: RunRecord<StormResult>[]): string {
  const head = ['round', 'target', 'shards', 'connected', 'conn/s', 'time to all s', 'refused', 'timeouts', 'errors', 'dropped'];
  const rows = records.map((r) => {
    const x = r.result;
    if (!x) return [String(r.round), r.target, shard(r), 'FAILED', '-', '-', '-', '-', '-', '-'];
    return [String(r.round), r.target, shard(r), `${int(x.ok)}/${int(x.connections)}`, int(x.connPerSec), fixed(x.timeToAllMs / 1000, 2), int(x.refused), int(x.timeouts), int(x.errors), int(x.hold.dropped)];
  });
  const stepHead = ['round', 'target', 'step', 'held before', 'opened', 'conn/s', 'failed', ...latencyHead('connect')];
  const stepRows = records.flatMap((r) =>
    (r.result?.steps ?? []).map((s) => [String(r.round), r.target, String(s.step), int(s.heldBefore), int(s.ok), int(s.connPerSec), int(s.refused + s.timeouts + s.errors), ...latencyCells(s.connect)]),
  );
  const resHead = ['round', 'target', ...resourceHead('conn')];
  const resRows = records.map((r) => [String(r.round), r.target, ...resourceCells(r.result?.resources)]);
  const medRows = medianRows(records, (ok) => [
    int(median(ok.map((x) => x.connPerSec))),
    fixed(median(ok.map((x) => x.timeToAllMs / 1000)), 2),
    int(median(ok.map((x) => x.refused + x.timeouts + x.errors))),
    fixed(median(ok.map((x) => x.resources.targetCpuUs)), 1),
    fixed(median(ok.map((x) => x.resources.targetPeakRssKB / 1024)), 1),
  ]);
  const parts = [
    machineLine(records.map((r) => r.shards)),
    '',
    'Runs. conn/s: connections with CONNACK / first attempt..last outcome; refused: ECONNREFUSED or CONNACK code != 0;',
    'dropped: established connections the target closed while they were held.',
    table(head, rows, 2),
    '',
    'Steps (each opens its share as fast as allowed while the earlier ones stay open); connect latency in ms: TCP connect to CONNACK',
    table(stepHead, stepRows, 2),
    '',
    'Resources. ' + RESOURCE_LEGEND('conn', 'all steps, per connection opened'),
    table(resHead, resRows, 2),
    '',
    'Medians over rounds',
    table(['target', 'runs', 'conn/s', 'time to all s', 'failed', 'cpu µs/conn', 'peak RSS MB'], medRows, 1),
    ...goalLines(fanoutOk(records).length === 0 ? [] : [stormGoal(median(fanoutOk(records).map((x) => x.connPerSec)))], os.availableParallelism()),
  ];
  const notes = notesOf(records, (x) => (x as StormResult).errorSamples);
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}

export function renderIdle(records: RunRecord<IdleResult>[]): string {
  const head = ['round', 'target', 'shards', 'connected', 'hold s', 'RSS before MB', 'RSS after MB', 'KB/conn', 'pings', 'pongs', 'dropped'];
  const rows = records.map((r) => {
    const x = r.result;
    if (!x) return [String(r.round), r.target, shard(r), 'FAILED', '-', '-', '-', '-', '-', '-', '-'];
    return [
      String(r.round),
      r.target,
      shard(r),
      `${int(x.connected.ok)}/${int(x.connections)}`,
      fixed(x.holdS, 1),
      fixed(x.rssBeforeKB / 1024, 1),
      fixed(x.rssAfterKB / 1024, 1),
      fixed(x.rssPerConnKB, 2),
      int(x.hold.pingsSent),
      int(x.hold.pongs),
      int(x.hold.dropped),
    ];
  });
  const resHead = ['round', 'target', ...resourceHead('ping')];
  const resRows = records.map((r) => [String(r.round), r.target, ...resourceCells(r.result?.resources)]);
  const medRows = medianRows(records, (ok) => [
    fixed(median(ok.map((x) => x.rssPerConnKB)), 2),
    fixed(median(ok.map((x) => x.rssAfterKB / 1024)), 1),
    fixed(median(ok.map((x) => x.resources.targetCpuUs)), 1),
  ]);
  const parts = [
    machineLine(records.map((r) => r.shards)),
    '',
    'Runs. KB/conn: target VmRSS (fanout daemon / bridge mosquitto) at the end of the hold minus before connecting, per connection.',
    'Connections send only PINGREQ, one per keep-alive period.',
    table(head, rows, 2),
    '',
    'Resources over the hold. ' + RESOURCE_LEGEND('ping', 'the hold, per PINGRESP received'),
    table(resHead, resRows, 2),
    '',
    'Medians over rounds',
    table(['target', 'runs', 'KB/conn', 'RSS after MB', 'cpu µs/ping'], medRows, 1),
    ...goalLines(fanoutOk(records).length === 0 ? []
      : [idleGoal(median(fanoutOk(records).map((x) => x.connected.ok)), median(fanoutOk(records).map((x) => x.rssPerConnKB)))], os.availableParallelism()),
  ];
  const notes = notesOf(records, (x) => {
    const i = x as IdleResult;
    const lines = [...i.connected.errorSamples, ...i.hold.errorSamples];
    if (i.hold.pingsSent > i.hold.pongs) lines.push(`${i.hold.pingsSent - i.hold.pongs} PINGREQ without PINGRESP`);
    return lines;
  });
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}
