// The project's performance targets, next to what a run measured, so that a report says plainly
// which are met and by how much the others are missed. The targets are those of the default jobs
// (uplink: 100 devices, 64 B, 16 in flight, 2 brokers; idle: 19,000 connections); a run of another
// job is still compared, and says which job it was.
import { int } from './format';
import type { UplinkSummary } from './report';

export interface Goal {
  what: string;
  /** The measured figure, as shown. */
  measured: string;
  met: boolean;
  /** How far off, when missed (`2.3x short`, `+14 ms`). */
  gap: string;
}

const ratioGap = (have: number, want: number): string => (have >= want ? '' : `${(want / Math.max(have, 1e-9)).toFixed(1)}x short`);

/** Uplink targets, from the medians of a run (mqtt-fanout with the most shards, over TCP). */
export function uplinkGoals(sums: UplinkSummary[]): Goal[] {
  const goals: Goal[] = [];
  const most = Math.max(0, ...sums.map((s) => s.shards ?? 0));
  const fan = (qos: number, shards = most): UplinkSummary | undefined =>
    sums.find((s) => s.target === 'fanout' && s.transport === 'tcp' && s.qos === qos && s.shards === shards);
  const bridge = (qos: number): UplinkSummary | undefined => sums.find((s) => s.target === 'mosquitto' && s.transport === 'tcp' && s.qos === qos);
  const lost = (s: UplinkSummary): number => Object.values(s.missing).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
  const q1 = fan(1);
  if (q1 !== undefined) {
    goals.push({ what: 'QoS 1: 0 lost', measured: `${int(lost(q1))} missing`, met: lost(q1) === 0, gap: '' });
    const b = bridge(1);
    if (b !== undefined && b.deliveredPerSec > 0) {
      const r = q1.deliveredPerSec / b.deliveredPerSec;
      goals.push({ what: "QoS 1: >= 10x the bridge's lossless deliv/s", measured: `${r.toFixed(2)}x (${int(q1.deliveredPerSec)} / ${int(b.deliveredPerSec)})`, met: r >= 10, gap: ratioGap(r, 10) });
    }
    if (q1.ack !== null) {
      const p99 = q1.ack.p99Ms;
      goals.push({ what: 'QoS 1: ack p99 <= 20 ms', measured: `${p99.toFixed(1)} ms`, met: p99 <= 20, gap: p99 <= 20 ? '' : `+${(p99 - 20).toFixed(0)} ms` });
    }
  }
  const q0 = fan(0);
  if (q0 !== undefined) {
    goals.push({ what: 'QoS 0: >= 500,000 msg/s to both brokers', measured: `${int(q0.deliveredPerSec)} deliv/s`, met: q0.deliveredPerSec >= 500_000, gap: ratioGap(q0.deliveredPerSec, 500_000) });
    goals.push({ what: 'QoS 0: 0 lost', measured: `${int(lost(q0))} missing`, met: lost(q0) === 0, gap: '' });
    if (q0.e2e !== null) {
      const p99 = q0.e2e.p99Ms;
      goals.push({ what: 'QoS 0: end-to-end p99 <= 25 ms', measured: `${p99.toFixed(1)} ms`, met: p99 <= 25, gap: p99 <= 25 ? '' : `+${(p99 - 25).toFixed(0)} ms` });
    }
  }
  const fewest = Math.min(...sums.filter((s) => s.target === 'fanout').map((s) => s.shards ?? Infinity));
  if (Number.isFinite(fewest) && fewest < most) {
    for (const qos of [1, 0]) {
      const a = fan(qos, most);
      const b = fan(qos, fewest);
      if (a === undefined || b === undefined || b.deliveredPerSec <= 0) continue;
      const r = a.deliveredPerSec / b.deliveredPerSec;
      goals.push({ what: `QoS ${qos}: FANOUT_SHARDS=${most} >= 1.6x FANOUT_SHARDS=${fewest}`, measured: `${r.toFixed(2)}x (${int(a.deliveredPerSec)} / ${int(b.deliveredPerSec)} deliv/s)`, met: r >= 1.6, gap: ratioGap(r, 1.6) });
    }
  }
  return goals;
}

/** idle: KB of daemon RSS per held connection, at 19,000 connections. */
export function idleGoal(connections: number, kbPerConn: number): Goal {
  const met = kbPerConn <= 3.5 && connections >= 19_000;
  const gap = kbPerConn > 3.5 ? `${(kbPerConn / 3.5).toFixed(1)}x over` : connections < 19_000 ? `${int(connections)} of 19,000 connections` : '';
  return { what: '19,000 idle connections at <= 3.5 KB RSS each', measured: `${kbPerConn.toFixed(2)} KB/conn at ${int(connections)}`, met, gap };
}

export function stormGoal(connPerSec: number): Goal {
  return { what: 'connect storm >= 10,000 conn/s', measured: `${int(connPerSec)} conn/s`, met: connPerSec >= 10_000, gap: ratioGap(connPerSec, 10_000) };
}

export function goalLines(goals: Goal[], cores: number): string[] {
  if (goals.length === 0) return [];
  const width = Math.max(...goals.map((g) => g.what.length));
  return [
    '',
    `Targets (mqtt-fanout; this machine: ${cores} cores, shared by the target, its brokers and the load):`,
    ...goals.map((g) => `  ${g.met ? 'met   ' : 'MISSED'}  ${g.what.padEnd(width)}  ${g.measured}${g.gap === '' ? '' : `  (${g.gap})`}`),
  ];
}
