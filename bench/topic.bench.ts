// Topic matching: the TopicTrie subscription index (src/protocol/subscriptions.ts) against a
// naive loop of matchTopic (src/protocol/topic.ts) over every distinct filter, on the same
// subscriptions and topics.
//
//   node dist/bench/topic.bench.js
//
// Subscriptions, one value (a session number) each: per-device ones and a fixed few aggregators
//   80 %  devices/{id}/cmd        18 %  devices/{id}/config/#     2 %  sites/{site}/+/temp (1000 sites)
//   and 3 x '#', 1 x '$SYS/#', 20 x 'devices/+/status', 40 x 'fleet/{region}/#' (8 regions),
//   10 x 'fleet/+/alerts/+'.
// Topics: 4096 drawn from a seeded PRNG: per-device commands, config and telemetry (1 to 4
// visits, the three '#' included), site temperatures, fleet alerts (18) and device status (23
// visits) and a $SYS topic. Each match call visits every matching (filter, value) pair, so both
// matchers do the same visits; "visits/match" is their mean.

import { TopicTrie } from '../src/protocol/subscriptions';
import { matchTopic } from '../src/protocol/topic';
import { consume, emit, measure, median, si, table } from './common';
import { mulberry32 as prng } from '../test/helpers/prng';

const REGIONS = ['eu-west', 'eu-central', 'us-east', 'us-west', 'ap-south', 'ap-east', 'sa-east', 'af-south'];
const TOPICS = 4096;


function subscriptions(n: number): Array<[string, number]> {
  // The aggregators: a fixed few, whatever the number of devices.
  const subs: Array<[string, number]> = [['#', -1], ['#', -2], ['#', -3], ['$SYS/#', -4]];
  for (let i = 0; i < 20; i++) subs.push(['devices/+/status', -100 - i]);
  for (let i = 0; i < 40; i++) subs.push([`fleet/${REGIONS[i % REGIONS.length]}/#`, -200 - i]);
  for (let i = 0; i < 10; i++) subs.push(['fleet/+/alerts/+', -300 - i]);
  for (let i = 0; subs.length < n; i++) {
    const r = i % 100;
    let f: string;
    if (r < 80) f = `devices/dev-${i}/cmd`;
    else if (r < 98) f = `devices/dev-${i}/config/#`;
    else f = `sites/site-${i % 1000}/+/temp`;
    subs.push([f, i]);
  }
  return subs;
}

function topics(n: number): string[] {
  const rnd = prng(n);
  const dev = (): string => `dev-${Math.floor(rnd() * n)}`;
  const out: string[] = [];
  for (let i = 0; i < TOPICS; i++) {
    const r = rnd() * 100;
    if (r < 50) out.push(`devices/${dev()}/cmd`);
    else if (r < 70) out.push(`devices/${dev()}/config/network/wifi`);
    else if (r < 85) out.push(`devices/${dev()}/telemetry`);
    else if (r < 94) out.push(`sites/site-${Math.floor(rnd() * 1000)}/sensor-${Math.floor(rnd() * 16)}/temp`);
    else if (r < 97) out.push(`fleet/${REGIONS[Math.floor(rnd() * REGIONS.length)]}/alerts/overheat`);
    else if (r < 99) out.push(`devices/${dev()}/status`);
    else out.push('$SYS/broker/clients/connected');
  }
  return out;
}

function main(): void {
  const rows: string[][] = [];
  const notes: string[] = [];
  const started = Date.now();
  for (const n of [10_000, 100_000]) {
    const subs = subscriptions(n);
    const trie = new TopicTrie<number>();
    const t0 = process.hrtime.bigint();
    for (const [f, v] of subs) trie.add(f, v);
    const buildMs = Number(process.hrtime.bigint() - t0) / 1e6;
    // The naive index: every distinct filter with its values, scanned in full for each topic.
    const byFilter = new Map<string, number[]>();
    for (const [f, v] of subs) {
      const vs = byFilter.get(f);
      if (vs === undefined) byFilter.set(f, [v]);
      else vs.push(v);
    }
    const naive = [...byFilter];
    const ts = topics(n);

    let sum = 0;
    let count = 0;
    const visit = (v: number): void => {
      sum = (sum + v) | 0;
      count++;
    };
    const naiveMatch = (topic: string): void => {
      for (let i = 0; i < naive.length; i++) {
        const [f, vs] = naive[i];
        if (matchTopic(f, topic)) for (let j = 0; j < vs.length; j++) visit(vs[j]);
      }
    };

    // Sanity: both visit the same pairs (count and value sum), checked on a sample of the topics
    // (the naive loop is slow), with the $SYS one included.
    let visits = 0;
    for (let i = 0; i < TOPICS; i++) {
      const t = ts[i];
      sum = 0;
      count = 0;
      trie.match(t, visit);
      visits += count;
      if (i % 32 !== 0 && !t.startsWith('$')) continue;
      const [s1, c1] = [sum, count];
      sum = 0;
      count = 0;
      naiveMatch(t);
      if (s1 !== sum || c1 !== count) throw new Error(`TopicTrie and matchTopic disagree on ${t}: ${c1} vs ${count} visits`);
    }

    let k = 0;
    const fast = measure(() => {
      trie.match(ts[k++ & (TOPICS - 1)], visit);
    }, 1);
    const slow = measure(() => {
      naiveMatch(ts[k++ & (TOPICS - 1)]);
    }, 1);
    consume(sum);

    const label = `${si(n).replace(' ', '')} subs, ${si(byFilter.size).replace(' ', '')} filters`;
    const ref = median(slow);
    for (const [variant, rates] of [['TopicTrie.match', fast], ['naive matchTopic loop', slow]] as const) {
      const m = median(rates);
      rows.push([label, variant, `${si(m)}/s`, `${(m / ref).toFixed(0)}x`, (visits / TOPICS).toFixed(1)]);
      emit({ bench: 'topic', case: `${n} subscriptions`, variant, value: m, unit: 'matches/s', runs: rates.length, extra: { value: m / ref, unit: 'x naive' } });
    }
    notes.push(`${label}: TopicTrie.add of all ${subs.length} took ${buildMs.toFixed(0)} ms, ${trie.nodeCount()} trie nodes`);
  }
  console.log('Topic matching, match calls/s (median of 5 runs of 200 ms; each call visits all matching pairs)\n');
  console.log(table(['subscriptions', 'matcher', 'matches/s', 'vs naive', 'visits/match'], rows, 2));
  console.log(`\n${notes.join('\n')}\n(${((Date.now() - started) / 1000).toFixed(1)} s in all)`);
}

main();
