import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { idleGoal, stormGoal, uplinkGoals } from '../../loadtest/goals';
import { sinkGoal, sweepGoals, sweepTable } from '../../loadtest/report-sweep';
import type { ResourceReport } from '../../loadtest/proc-usage';
import { parseOptions } from '../../loadtest/options';
import { readProfile } from '../../loadtest/profile';
import type { UplinkSummary } from '../../loadtest/report';
import type { LatencySummary } from '../../loadtest/latency';

const lat = (p99Ms: number): LatencySummary => ({ count: 1, p50Ms: 1, p90Ms: 1, p99Ms, p999Ms: p99Ms, maxMs: p99Ms, hdr: '' });

function summary(target: 'fanout' | 'mosquitto', qos: number, shards: number | null, deliveredPerSec: number, over: Partial<UplinkSummary> = {}): UplinkSummary {
  return {
    target, transport: 'tcp', qos, shards, runs: 1, failed: 0, msgPerSec: deliveredPerSec, deliveredPerSec,
    ack: qos === 0 ? null : lat(10), e2e: lat(10), resources: null, missing: { b1: 0, b2: 0 }, duplicates: { b1: 0, b2: 0 },
    rate: 0, gcMaxMs: NaN, upstream: 'sink', ...over,
  };
}

test('uplink targets: the ratio to the bridge, latency and loss, from the run with the most shards; shard counts against each other', () => {
  const goals = uplinkGoals([
    summary('fanout', 1, 1, 30_000),
    summary('fanout', 1, 2, 60_000, { ack: lat(25), missing: { b1: 0, b2: 3 } }),
    summary('mosquitto', 1, null, 5_000),
    summary('fanout', 0, 2, 600_000, { e2e: lat(20) }),
  ]);
  const by = new Map(goals.map((g) => [g.what, g]));
  const bridge = by.get("QoS 1: >= 10x the bridge's lossless deliv/s")!;
  assert.equal(bridge.met, true, '60,000 / 5,000 = 12x');
  assert.match(bridge.measured, /^12\.00x/);
  assert.deepEqual([by.get('QoS 1: 0 lost')!.met, by.get('QoS 1: 0 lost')!.measured], [false, '3 missing']);
  assert.deepEqual([by.get('QoS 1: ack p99 <= 20 ms')!.met, by.get('QoS 1: ack p99 <= 20 ms')!.gap], [false, '+5 ms']);
  assert.equal(by.get('QoS 0: >= 500,000 msg/s to both brokers')!.met, true);
  assert.equal(by.get('QoS 0: end-to-end p99 <= 25 ms')!.met, true);
  const shards = by.get('QoS 1: FANOUT_SHARDS=2 >= 1.6x FANOUT_SHARDS=1')!;
  assert.deepEqual([shards.met, shards.measured.slice(0, 5)], [true, '2.00x']);
  // QoS 0 ran with one shard count only: no shard goal for it.
  assert.equal(by.has('QoS 0: FANOUT_SHARDS=2 >= 1.6x FANOUT_SHARDS=1'), false);
  const short = uplinkGoals([summary('fanout', 1, 2, 10_000), summary('mosquitto', 1, null, 5_000)]).find((g) => g.what.includes('bridge'))!;
  assert.deepEqual([short.met, short.gap], [false, '5.0x short']);
});

const res = (targetCpuUs: number, upstreamCpuUs = 1): ResourceReport =>
  ({ unit: 'msg', units: 1, windowS: 1, processes: [], targetCpuUs, upstreamCpuUs, targetPeakRssKB: 1 });

test('sweep targets (issue 15): per offered rate against the bridge at that rate; the sink check; what did not run says how to run it', () => {
  const sums = [
    summary('fanout', 1, 2, 5_000, { rate: 5000, resources: res(20), ack: lat(3), e2e: lat(4), gcMaxMs: 1 }),
    summary('mosquitto', 1, null, 5_000, { rate: 5000, resources: res(50), e2e: lat(6) }),
    summary('fanout', 1, 2, 20_000, { rate: 20_000, resources: res(30), ack: lat(7), e2e: lat(9), gcMaxMs: 3.5, missing: { b1: 2, b2: 0 } }),
    summary('mosquitto', 1, null, 20_000, { rate: 20_000, resources: res(40), e2e: lat(8) }),
    summary('fanout', 1, 2, 300_000, { rate: 0, resources: res(8, 1.2) }),
    summary('fanout', 1, 1, 200_000, { rate: 0, resources: res(8) }),
    summary('mosquitto', 1, null, 50_000, { rate: 0, resources: res(18) }),
  ];
  const by = new Map(sweepGoals(sums).map((g) => [g.what, g]));
  const g = (what: string): [boolean, string, string] => {
    const x = by.get(what);
    assert.ok(x, `no goal '${what}' in ${[...by.keys()].join(' | ')}`);
    return [x.met, x.measured, x.gap];
  };
  assert.deepEqual(g("5,000 msg/s: CPU per message <= 0.5x the bridge's"), [true, '0.40x (20.0 / 50.0 µs)', '']);
  assert.deepEqual(g("20,000 msg/s: CPU per message <= 0.5x the bridge's"), [false, '0.75x (30.0 / 40.0 µs)', '1.5x over']);
  assert.deepEqual(g('20,000 msg/s: ack p99 <= 5 ms'), [false, '7.0 ms', '+2.0 ms']);
  assert.deepEqual(g("20,000 msg/s: e2e p99 <= the bridge's"), [false, '9.0 / 8.0 ms', '+1.0 ms']);
  assert.deepEqual(g('20,000 msg/s: 0 missing'), [false, '2 missing', '']);
  assert.deepEqual(g('20,000 msg/s: no GC pause over 2 ms on a shard or writer thread'), [false, '3.50 ms', '+1.50 ms']);
  assert.deepEqual(g("max: >= 5x the bridge's lossless deliv/s"), [true, '6.00x (300,000 / 50,000)', '']);
  assert.deepEqual(g('max: FANOUT_SHARDS=2 >= 1.6x FANOUT_SHARDS=1').slice(0, 2), [false, '1.50x (300,000 / 200,000 deliv/s)']);
  assert.deepEqual(g('50,000 msg/s: CPU <= 0.6x bridge, ack p99 <= 10 ms'), [false, 'not run', '--rate 50000']);
  // The sinks behind the fastest run: 1.2 µs for both per device message = 0.6 µs each, at 300k.
  const sink = sinkGoal(sums)!;
  assert.deepEqual([sink.met, sink.measured], [true, '0.60 µs/msg at 300,000 msg/s (fanout)']);
  assert.match(sweepTable(sums), /^5,000\s+fanout\s+1\s+2\s+5,000\s.*\s0\.40$/m);
});

test('connection targets: 19,000 idle connections at <= 3.5 KB each, >= 10k conn/s', () => {
  assert.equal(idleGoal(19_000, 3.4).met, true);
  assert.deepEqual([idleGoal(19_000, 7).met, idleGoal(19_000, 7).gap], [false, '2.0x over']);
  assert.equal(idleGoal(5_000, 1).met, false, 'too few connections to tell');
  assert.equal(stormGoal(12_000).met, true);
  assert.equal(stormGoal(2_500).gap, '4.0x short');
});

test('--shards takes a list; each count once, the first is the default of the run', () => {
  const o = parseOptions(['uplink', '--shards', '2,1,2'])!;
  assert.deepEqual(o.shardCounts, [2, 1]);
  assert.equal(o.shards, 2);
  assert.throws(() => parseOptions(['uplink', '--shards', '1,0']), /--shards must be an integer/);
});

test('a CPU profile: self time by function and by file, idle left out, the thread named by its worker script', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-prof-'));
  try {
    const file = path.join(dir, 'CPU.20260101.000000.1.3.001.cpuprofile');
    const frame = (functionName: string, url: string, lineNumber = 0): { functionName: string; url: string; lineNumber: number } => ({ functionName, url, lineNumber });
    fs.writeFileSync(file, JSON.stringify({
      nodes: [
        { id: 1, callFrame: frame('(root)', '') },
        { id: 2, callFrame: frame('(idle)', '') },
        { id: 3, callFrame: frame('onData', 'file:///x/dist/src/shard/connection.js', 9) },
        { id: 4, callFrame: frame('', 'file:///x/workers/shard.worker.js') },
        { id: 5, callFrame: frame('parse', 'file:///x/node_modules/mqtt-packet/parser.js', 1) },
      ],
      samples: [2, 3, 3, 5, 2, 4],
      timeDeltas: [5000, 1000, 1000, 2000, 5000, 0],
    }));
    const p = readProfile(file);
    assert.equal(p.thread, 'shard');
    assert.equal(p.totalMs, 14);
    assert.equal(p.busyMs, 4);
    assert.deepEqual(p.functions, [{ name: 'onData src/shard/connection.js:10', ms: 2 }, { name: 'parse mqtt-packet:2', ms: 2 }]);
    assert.deepEqual(p.files.map((f) => f.name), ['src/shard/connection.js', 'mqtt-packet']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('--rate takes a list in uplink (a load sweep): paced steps last 10 s, the unpaced one --messages; sinks by default', () => {
  const o = parseOptions(['uplink', '--rate', '5000,20000,0', '--devices', '100'])!;
  assert.deepEqual(o.rateSteps, [
    { rate: 5000, messages: 500, timeBound: false },
    { rate: 20_000, messages: 2000, timeBound: false },
    { rate: 0, messages: 10_000, timeBound: false },
  ]);
  assert.equal(o.upstream, 'sink');
  assert.equal(parseOptions(['uplink', '--rate', '5000,0', '--duration', '3'])!.rateSteps[1].timeBound, true);
  assert.equal(parseOptions(['broker-outage'])!.upstream, 'mosquitto');
  assert.throws(() => parseOptions(['downlink', '--rate', '1,2']), /uplink only/);
  assert.throws(() => parseOptions(['downlink', '--upstream', 'sink']), /does not apply/);
  assert.deepEqual(parseOptions(['uplink', '--target', 'sink-direct'])!.targets, ['sink-direct']);
});
