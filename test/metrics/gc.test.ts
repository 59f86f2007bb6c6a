// GC pauses per thread (src/metrics/gc.ts): real collections are counted, the thread's own forced
// ones are not, and the figures reach a stats row and /metrics under the thread's name.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { MetricsCollector } from '../../src/metrics/collector';
import { GcPauses } from '../../src/metrics/gc';
import { createStats, readShardStats, setVitals, ShardStats } from '../../src/metrics/stats';
import { ThreadVitals } from '../../src/metrics/vitals';
import { sleep } from '../helpers/wait';

v8.setFlagsFromString('--expose-gc'); // as the daemon's entry point does
const gc = vm.runInNewContext('gc') as () => void;

/** Short-lived garbage: enough for several scavenges of the young generation. */
function churn(): void {
  const keep: object[] = [];
  for (let i = 0; i < 400_000; i++) {
    keep.push({ i, s: `x${i}` });
    if (keep.length > 1000) keep.length = 0;
  }
}

/** Waits for the observer's batch of entries (delivered after the collections, asynchronously). */
async function settle(until: () => boolean): Promise<void> {
  for (let i = 0; i < 50 && !until(); i++) await sleep(20);
}

test('GcPauses counts the collections allocation causes, with their longest and total pause', async () => {
  const p = new GcPauses();
  try {
    churn();
    await settle(() => p.pauses > 0);
    assert.ok(p.pauses > 0, 'no collection seen after allocating');
    assert.ok(p.pauseMaxMs > 0 && p.pauseTotalMs >= p.pauseMaxMs, `max ${p.pauseMaxMs} total ${p.pauseTotalMs}`);
  } finally {
    p.stop();
  }
});

test('GcPauses leaves out collections the thread forces (the idle collection)', async () => {
  const p = new GcPauses();
  try {
    await sleep(50); // entries of anything before this test
    const before = p.pauses;
    for (let i = 0; i < 3; i++) gc();
    await sleep(100);
    assert.equal(p.pauses, before, 'forced collections were counted');
    // And a real one is still seen after them: the observer was live all along.
    churn();
    await settle(() => p.pauses > before);
    assert.ok(p.pauses > before);
  } finally {
    p.stop();
  }
});

test('a thread\'s GC figures go into its stats row and out of /metrics by thread', async () => {
  const vitals = new ThreadVitals();
  churn();
  await sleep(100);
  const v = vitals.sample();
  assert.ok(v.gcPauses > 0 && v.gcPauseMaxMs > 0, JSON.stringify(v));
  const sab = createStats(1);
  setVitals(new ShardStats(sab, 0), { ...v, gcPauseMaxMs: 3.5, gcPauses: 7, gcPauseTotalMs: 12 });
  const rows = readShardStats(sab, 1);
  const collector = new MetricsCollector({
    brokers: [], shards: 1, shardStats: () => rows, writerStats: () => [], uplinkRings: [[]], downlinkRings: [[]],
    pullLatency: () => Promise.resolve({ ack: [], rtt: [] }), connectionAddresses: () => [], ready: () => true,
  });
  const text = collector.prometheus();
  assert.match(text, /^# TYPE fanout_thread_gc_pause_max_seconds gauge$/m);
  assert.match(text, /^fanout_thread_gc_pause_max_seconds\{thread="shard-0"\} 0\.0035$/m);
  assert.match(text, /^fanout_thread_gc_pauses_total\{thread="shard-0"\} 7$/m);
  assert.match(text, /^fanout_thread_gc_pause_seconds_total\{thread="shard-0"\} 0\.012$/m);
  // The supervisor's own thread is there too, with what its vitals saw (0 before its first sample).
  assert.match(text, /^fanout_thread_gc_pause_max_seconds\{thread="main"\} [\d.e-]+$/m);
});
