// Report of the auth scenario: the connect storm and the QoS 1 stream of each
// run, medians per target, and what authentication and authorisation cost:
// fanout-auth over fanout as a ratio of medians and round by round (each
// fanout-auth run against the fanout run of its round, just before it).
import { PBKDF2_ITERATIONS } from './auth-files';
import type { AuthResult } from './auth';
import { fixed, int, latencyCells, latencyHead, machineLine, median, perBroker, table } from './format';
import type { RunRecord } from './output';
import { problems } from './report';

/** One figure of a run, the ratios are taken of. */
const FIGURES = {
  'conn/s': (r: AuthResult) => r.storm.connPerSec,
  'connect p50 ms': (r: AuthResult) => r.storm.connect.p50Ms,
  'cpu µs/conn': (r: AuthResult) => r.storm.resources.targetCpuUs,
  'msg/s': (r: AuthResult) => r.uplink.msgPerSec,
  'ack p50 ms': (r: AuthResult) => r.uplink.publisher.ack.p50Ms,
  'cpu µs/msg': (r: AuthResult) => r.uplink.resources.targetCpuUs,
} as const;
type Figure = keyof typeof FIGURES;
const FIGURE_NAMES = Object.keys(FIGURES) as Figure[];

export interface AuthSummary {
  target: string;
  runs: number;
  failed: number;
  medians: Record<Figure, number>;
}

export function summarizeAuth(records: RunRecord<AuthResult>[]): AuthSummary[] {
  return [...new Set(records.map((r) => r.target))].map((target) => {
    const group = records.filter((r) => r.target === target);
    const ok = group.flatMap((r) => (r.result ? [r.result] : []));
    const medians = Object.fromEntries(FIGURE_NAMES.map((f) => [f, median(ok.map(FIGURES[f]))])) as Record<Figure, number>;
    return { target, runs: group.length, failed: group.length - ok.length, medians };
  });
}

/** fanout-auth / fanout of each figure: of the medians, and per round with the median of those. */
export function authRatios(records: RunRecord<AuthResult>[]): { figure: Figure; ofMedians: number; perRound: number[]; median: number }[] {
  const sums = summarizeAuth(records);
  const on = sums.find((s) => s.target === 'fanout-auth');
  const off = sums.find((s) => s.target === 'fanout');
  if (!on || !off) return [];
  const pairs = records.flatMap((a) => {
    if (a.target !== 'fanout-auth' || !a.result) return [];
    const b = records.find((r) => r.target === 'fanout' && r.round === a.round && r.result);
    return b?.result ? [{ on: a.result, off: b.result }] : [];
  });
  return FIGURE_NAMES.map((figure) => {
    const perRound = pairs.map((p) => FIGURES[figure](p.on) / FIGURES[figure](p.off));
    return { figure, ofMedians: on.medians[figure] / off.medians[figure], perRound, median: median(perRound) };
  });
}

export function renderAuth(records: RunRecord<AuthResult>[]): string {
  const key = (r: RunRecord<AuthResult>): string[] => [String(r.round), r.target];
  const first = records.find((r) => r.result)?.result;
  const stormHead = ['round', 'target', 'connected', 'conn/s', ...latencyHead('connect'), 'cpu µs/conn', 'peak RSS MB'];
  const stormRows = records.map((r) => {
    const s = r.result?.storm;
    if (!s) return [...key(r), 'FAILED', ...Array<string>(8).fill('-')];
    return [...key(r), `${int(s.ok)}/${int(s.connections)}`, int(s.connPerSec), ...latencyCells(s.connect), fixed(s.resources.targetCpuUs, 1), fixed(s.resources.targetPeakRssKB / 1024, 1)];
  });
  const upHead = ['round', 'target', 'msg/s', 'deliv/s', ...latencyHead('ack'), 'cpu µs/msg', 'missing', 'duplicates', 'end'];
  const upRows = records.map((r) => {
    const u = r.result?.uplink;
    if (!u) return [...key(r), ...Array<string>(11).fill('-')];
    return [
      ...key(r),
      int(u.msgPerSec),
      int(u.deliveredPerSec),
      ...latencyCells(u.publisher.ack),
      fixed(u.resources.targetCpuUs, 1),
      perBroker(Object.fromEntries(u.brokers.map((b) => [b.broker, b.missing]))),
      perBroker(Object.fromEntries(u.brokers.map((b) => [b.broker, b.duplicates]))),
      u.endedBy,
    ];
  });
  const sums = summarizeAuth(records);
  const medRows = sums.map((s) => [
    s.target,
    s.failed ? `${s.runs - s.failed}/${s.runs}` : String(s.runs),
    int(s.medians['conn/s']),
    fixed(s.medians['connect p50 ms'], 2),
    fixed(s.medians['cpu µs/conn'], 1),
    int(s.medians['msg/s']),
    fixed(s.medians['ack p50 ms'], 2),
    fixed(s.medians['cpu µs/msg'], 1),
  ]);
  const rat = authRatios(records);
  const ratioRows = rat.map((x) => [x.figure, `${fixed(x.ofMedians, 2)}x`, `${fixed(x.median, 2)}x`, x.perRound.map((v) => fixed(v, 2)).join(' ')]);
  const storm = first ? `${int(first.storm.connections)} connections in one step` : 'connect storm';
  const stream = first ? `${int(first.uplink.publisher.expected)} QoS 1 messages from ${int(first.uplink.publisher.byQos.reduce((n, q) => n + q.devices, 0))} devices` : 'QoS 1 stream';
  const parts = [
    machineLine(records.map((r) => r.shards)),
    `fanout-auth: FANOUT_PASSWORD_FILE (a user per device, $7$ PBKDF2-SHA512, ${PBKDF2_ITERATIONS} iterations as mosquitto_passwd writes) and FANOUT_ACL_FILE`,
    '(pattern write on each device\'s topic, pattern read on its commands); fanout: neither. Devices authenticate only against fanout-auth.',
    '',
    `Connect storm (${storm}); connect latency in ms: TCP connect to CONNACK. cpu µs/conn: daemon, all threads.`,
    table(stormHead, stormRows, 2),
    '',
    `QoS 1 uplink (${stream}, after the storm's connections closed); ack latency in ms. cpu µs/msg: daemon, all threads.`,
    table(upHead, upRows, 2),
    '',
    'Medians over rounds',
    table(['target', 'runs', 'conn/s', 'connect p50', 'cpu µs/conn', 'msg/s', 'ack p50', 'cpu µs/msg'], medRows, 2),
    ...(ratioRows.length
      ? ['', 'fanout-auth / fanout', table(['figure', 'of medians', 'by round: median', 'each round'], ratioRows, 1)]
      : []),
  ];
  const notes = [
    ...problems(records.map((r) => ({ ...r, result: r.result?.uplink ?? null }))),
    ...records.flatMap((r) => (r.result?.storm.errorSamples ?? []).map((e) => `round ${r.round} ${r.target} connect storm: ${e}`)),
  ];
  if (notes.length) parts.push('', 'Notes', ...notes);
  return parts.join('\n') + '\n';
}
