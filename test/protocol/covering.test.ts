// TopicTrie.forEachCovering (src/protocol/subscriptions.ts): the filters that cover a filter,
// checked against the definition through intersectFilters (a covers b when a ∩ b is b) on
// generated filters, and against matchTopic on the topics a literal filter names.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TopicTrie } from '../../src/protocol/subscriptions';
import { intersectFilters } from '../../src/protocol/intersect';
import { matchTopic } from '../../src/protocol/topic';

/** A small deterministic generator (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

const LEVELS = ['a', 'b', '$x', '', '+'];

function filterOf(r: () => number): string {
  const n = 1 + Math.floor(r() * 4);
  const levels: string[] = [];
  for (let i = 0; i < n; i++) levels.push(LEVELS[Math.floor(r() * LEVELS.length)]);
  if (r() < 0.3) levels.push('#');
  const f = levels.join('/');
  return f === '' ? 'a' : f;
}

function covering(trie: TopicTrie<string>, f: string): string[] {
  const out: string[] = [];
  trie.forEachCovering(f, (v) => out.push(v));
  return out.sort();
}

test('forEachCovering visits exactly the held filters whose intersection with the filter is the filter', () => {
  const r = rng(20261202);
  const held = [...new Set(Array.from({ length: 300 }, () => filterOf(r)))];
  const trie = new TopicTrie<string>();
  for (const f of held) trie.add(f, f);
  let nonTrivial = 0;
  for (let i = 0; i < 2000; i++) {
    const f = filterOf(r);
    const want = held.filter((h) => intersectFilters(h, f) === f).sort();
    if (want.some((h) => h !== f)) nonTrivial++;
    assert.deepEqual(covering(trie, f), want, `covers of ${JSON.stringify(f)}`);
  }
  assert.ok(nonTrivial > 500, `most queries have covers (${nonTrivial})`);
});

test('forEachCovering: a literal filter is covered by exactly the filters matching its topic; the $ rule holds', () => {
  const trie = new TopicTrie<string>();
  const held = ['#', '+', '+/#', 'a/#', 'a/+', 'a/b', 'a/b/#', '+/b', '$SYS/#', '$SYS/+', 'a/b/c'];
  for (const f of held) trie.add(f, f);
  for (const topic of ['a', 'a/b', 'a/b/c', 'x/b', '$SYS/load', '$SYS', 'a/', '/b']) {
    assert.deepEqual(covering(trie, topic), held.filter((f) => matchTopic(f, topic)).sort(), topic);
  }
  assert.deepEqual(covering(trie, 'a/+'), ['#', '+/#', 'a/#', 'a/+']);
  assert.deepEqual(covering(trie, 'a/#'), ['#', '+/#', 'a/#']);
  assert.deepEqual(covering(trie, '#'), ['#']);
  assert.deepEqual(covering(trie, '$SYS/+'), ['$SYS/#', '$SYS/+']);
  trie.remove('#', '#');
  assert.deepEqual(covering(trie, '#'), []);
});
