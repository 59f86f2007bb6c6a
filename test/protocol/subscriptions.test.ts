// Unit tests for the subscription index (src/protocol/subscriptions.ts), checked against the
// reference matcher matchTopic (src/protocol/topic.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { levelHash, TopicTrie } from '../../src/protocol/subscriptions';
import { matchTopic } from '../../src/protocol/topic';
import { mulberry32 as prng } from '../helpers/prng';

/** Every (filter, value) visit of one match, as sorted "filter\tvalue" strings. */
function visits<T>(trie: TopicTrie<T>, topic: string): string[] {
  const out: string[] = [];
  trie.match(topic, (value, filter) => out.push(`${filter}\t${String(value)}`));
  return out.sort();
}

/** The visits of `topic` are `expected`, in any order. */
function expectVisits<T>(trie: TopicTrie<T>, topic: string, expected: string[]): void {
  assert.deepEqual(visits(trie, topic), [...expected].sort(), `topic ${JSON.stringify(topic)}`);
}


test('add, has, size, filters and remove keep track of (filter, value) pairs', () => {
  const trie = new TopicTrie<string>();
  assert.equal(trie.size, 0);
  assert.equal(trie.nodeCount(), 1);
  assert.equal(trie.add('a/b', 'x'), true);
  assert.equal(trie.add('a/b', 'x'), false);
  assert.equal(trie.add('a/b', 'y'), true);
  assert.equal(trie.add('a/#', 'x'), true);
  assert.equal(trie.add('a/+', 'x'), true);
  assert.equal(trie.size, 4);
  assert.deepEqual(trie.filters().sort(), ['a/#', 'a/+', 'a/b']);
  assert.equal(trie.has('a/b'), true);
  assert.equal(trie.has('a'), false); // an inner node without values of its own
  assert.equal(trie.has('a/#'), true);
  assert.equal(trie.has('#'), false);
  assert.equal(trie.has('a/b/c'), false);
  assert.equal(trie.hasValue('a/b', 'y'), true);
  assert.equal(trie.hasValue('a/b', 'z'), false);

  assert.equal(trie.remove('a/b', 'z'), false);
  assert.equal(trie.remove('a/c', 'x'), false);
  assert.equal(trie.remove('a/#/x', 'x'), false); // invalid filters are simply absent
  assert.equal(trie.remove('', 'x'), false);
  assert.equal(trie.remove('a/b', 'x'), true);
  assert.equal(trie.remove('a/b', 'x'), false);
  assert.equal(trie.size, 3);
  assert.equal(trie.has('a/b'), true);
  assert.equal(trie.remove('a/b', 'y'), true);
  assert.equal(trie.has('a/b'), false);
  assert.deepEqual(trie.filters().sort(), ['a/#', 'a/+']);
  assert.equal(trie.remove('a/#', 'x'), true);
  assert.equal(trie.remove('a/+', 'x'), true);
  assert.equal(trie.size, 0);
  assert.deepEqual(trie.filters(), []);
  assert.equal(trie.nodeCount(), 1);
});

test('a value subscribed with overlapping filters is visited once per filter', () => {
  const trie = new TopicTrie<number>();
  for (const f of ['sport/tennis/player1', 'sport/tennis/+', 'sport/#', '#', '+/tennis/#', 'sport/+/player1', 'sport/tennis/player1/#']) trie.add(f, 7);
  trie.add('sport/tennis/player2', 7);
  trie.add('sport/tennis/+', 8);
  expectVisits(trie, 'sport/tennis/player1', [
    '#\t7', '+/tennis/#\t7', 'sport/#\t7', 'sport/+/player1\t7', 'sport/tennis/+\t7', 'sport/tennis/+\t8', 'sport/tennis/player1\t7',
    'sport/tennis/player1/#\t7',
  ]);
  expectVisits(trie, 'sport', ['#\t7', 'sport/#\t7']);
  expectVisits(trie, 'news', ['#\t7']);
});

test('topics beginning with $ are not matched by a first-level + or #', () => {
  const trie = new TopicTrie<string>();
  for (const f of ['#', '+', '+/#', '+/monitor/Clients', '$SYS/#', '$SYS/monitor/+', '$SYS', 'a/+', 'a/#']) trie.add(f, f);
  expectVisits(trie, '$SYS/monitor/Clients', ['$SYS/#\t$SYS/#', '$SYS/monitor/+\t$SYS/monitor/+']);
  expectVisits(trie, '$SYS', ['$SYS\t$SYS', '$SYS/#\t$SYS/#']);
  expectVisits(trie, '$other', []);
  expectVisits(trie, 'a/$b', ['#\t#', '+/#\t+/#', 'a/#\ta/#', 'a/+\ta/+']);
  expectVisits(trie, 'x/monitor/Clients', ['#\t#', '+/#\t+/#', '+/monitor/Clients\t+/monitor/Clients']);
});

test('empty levels and a/# matching a', () => {
  const trie = new TopicTrie<number>();
  for (const [i, f] of ['a//b', 'a/+/b', '/', '/#', '+/+', 'a/#', 'a/', '//'].entries()) trie.add(f, i);
  expectVisits(trie, 'a//b', ['a/#\t5', 'a/+/b\t1', 'a//b\t0']);
  expectVisits(trie, '/', ['+/+\t4', '/#\t3', '/\t2']);
  expectVisits(trie, 'a', ['a/#\t5']);
  expectVisits(trie, 'a/', ['+/+\t4', 'a/#\t5', 'a/\t6']);
  expectVisits(trie, '//', ['/#\t3', '//\t7']);
});

test('add refuses invalid and shared filters', () => {
  const trie = new TopicTrie<number>();
  for (const f of ['', 'a#', 'a/#/b', 'a+', 'a\u0000', '$share/g/a', '$share/g/#', '$share//a', 'a'.repeat(65536)]) {
    assert.throws(() => trie.add(f, 1), RangeError, JSON.stringify(f.slice(0, 20)));
  }
  assert.equal(trie.size, 0);
  assert.equal(trie.nodeCount(), 1);
  // '$share' alone is an ordinary filter.
  assert.equal(trie.add('$share', 1), true);
  expectVisits(trie, '$share', ['$share\t1']);
});

test('many values on one filter: swap-removal keeps the index right', () => {
  const trie = new TopicTrie<object>();
  const values = Array.from({ length: 100 }, (_, i) => ({ i }));
  for (const v of values) {
    assert.equal(trie.add('fleet/+/#', v), true);
    assert.equal(trie.add('fleet/eu', v), true);
  }
  for (const v of values) assert.equal(trie.add('fleet/+/#', v), false);
  assert.equal(trie.size, 200);
  const seen = (topic: string): number[] => {
    const out: number[] = [];
    trie.match(topic, (v) => out.push((v as { i: number }).i));
    return out.sort((a, b) => a - b);
  };
  assert.deepEqual(seen('fleet/eu/x'), values.map((v) => v.i));
  for (const v of values) if (v.i % 3 !== 0) assert.equal(trie.remove('fleet/+/#', v), true);
  for (const v of values) assert.equal(trie.hasValue('fleet/+/#', v), v.i % 3 === 0);
  assert.deepEqual(seen('fleet/eu/x'), values.filter((v) => v.i % 3 === 0).map((v) => v.i));
  assert.equal(seen('fleet/eu').length, 100 + 34);
  for (const v of values) {
    trie.remove('fleet/+/#', v);
    trie.remove('fleet/eu', v);
  }
  assert.equal(trie.size, 0);
  assert.equal(trie.nodeCount(), 1);
});

test('levels whose hashes collide stay apart', () => {
  // Birthday search for two short levels with the same 30-bit hash (deterministic).
  const seen = new Map<number, string>();
  let pair: [string, string] | null = null;
  for (let i = 0; pair === null; i++) {
    const s = `k${i.toString(36)}`;
    const h = levelHash(s, 0, s.length);
    const other = seen.get(h);
    if (other !== undefined) pair = [other, s];
    else seen.set(h, s);
  }
  const [p, q] = pair;
  assert.notEqual(p, q);
  assert.equal(levelHash(p, 0, p.length), levelHash(q, 0, q.length));
  // A level hashes the same inside a topic.
  assert.equal(levelHash(`x/${p}/y`, 2, 2 + p.length), levelHash(p, 0, p.length));

  const trie = new TopicTrie<string>();
  const filters = [p, q, `${p}/x`, `${q}/x`, `a/${p}`, `a/${q}`, `a/${q}/#`, `${q}/+`];
  for (const f of filters) trie.add(f, f);
  for (const t of [p, q, `${p}/x`, `${q}/x`, `a/${p}`, `a/${q}`, `a/${q}/z`, `${q}/z`, `${p}/z`]) {
    assert.deepEqual(visits(trie, t), filters.filter((f) => matchTopic(f, t)).map((f) => `${f}\t${f}`).sort(), t);
  }
  // Remove the head and the tail of the collision chains, in both orders.
  for (const f of [p, `${q}/x`, `a/${q}`, `a/${p}`]) assert.equal(trie.remove(f, f), true);
  expectVisits(trie, q, [`${q}\t${q}`]);
  expectVisits(trie, p, []);
  expectVisits(trie, `${p}/x`, [`${p}/x\t${p}/x`]);
  expectVisits(trie, `a/${q}`, [`a/${q}/#\ta/${q}/#`]);
  for (const f of [q, `${p}/x`, `a/${q}/#`, `${q}/+`]) assert.equal(trie.remove(f, f), true);
  assert.equal(trie.nodeCount(), 1);
});

test('deeply nested + filters match without recursion limits', () => {
  const trie = new TopicTrie<number>();
  const k = 30_000; // 59,999 bytes: a valid filter
  const plus = Array(k).fill('+').join('/');
  trie.add(plus, 1);
  trie.add(`${plus}/#`, 2);
  trie.add(`a/${Array(k - 1).fill('+').join('/')}`, 3);
  expectVisits(trie, Array(k).fill('a').join('/'), [`${plus}\t1`, `${plus}/#\t2`, `a/${Array(k - 1).fill('+').join('/')}\t3`]);
  expectVisits(trie, Array(k + 1).fill('a').join('/'), [`${plus}/#\t2`]);
  expectVisits(trie, Array(k - 1).fill('a').join('/'), []);
  trie.remove(plus, 1);
  trie.remove(`${plus}/#`, 2);
  trie.remove(`a/${Array(k - 1).fill('+').join('/')}`, 3);
  assert.equal(trie.nodeCount(), 1);
});

test('visit may call match again, and may throw', () => {
  const trie = new TopicTrie<string>();
  for (const f of ['+/+/+', 'a/+/+', '+/b/+', 'a/b/c', '#', 'x/+', 'x/y']) trie.add(f, f);
  const outer: string[] = [];
  const inner: string[][] = [];
  trie.match('a/b/c', (v) => {
    outer.push(v);
    const seen: string[] = [];
    trie.match('x/y', (w) => seen.push(w));
    inner.push(seen.sort());
  });
  assert.deepEqual(outer.sort(), ['#', '+/+/+', '+/b/+', 'a/+/+', 'a/b/c']);
  for (const seen of inner) assert.deepEqual(seen, ['#', 'x/+', 'x/y']);

  assert.throws(() => trie.match('a/b/c', () => {
    throw new Error('boom');
  }), /boom/);
  expectVisits(trie, 'a/b/c', ['#\t#', '+/+/+\t+/+/+', '+/b/+\t+/b/+', 'a/+/+\ta/+/+', 'a/b/c\ta/b/c']);
});

test('emptied nodes are pruned at once', () => {
  const trie = new TopicTrie<number>();
  trie.add('a/b/c', 1);
  trie.add('a/b', 1);
  assert.equal(trie.nodeCount(), 4); // root, a, b, c
  trie.remove('a/b/c', 1);
  assert.equal(trie.nodeCount(), 3);
  trie.add('a/+/#', 1);
  assert.equal(trie.nodeCount(), 4); // root, a, b, +
  trie.remove('a/b', 1);
  assert.equal(trie.nodeCount(), 3); // root, a, +
  trie.add('#', 1);
  assert.equal(trie.nodeCount(), 3); // '#' lives on the root
  trie.remove('a/+/#', 1);
  assert.equal(trie.nodeCount(), 1);
  trie.remove('#', 1);
  assert.equal(trie.nodeCount(), 1);
  assert.equal(trie.size, 0);

  // A larger set removed in a random order.
  const rnd = prng(42);
  const pairs: Array<[string, number]> = [];
  for (let i = 0; i < 2000; i++) {
    const f = Array.from({ length: 1 + Math.floor(rnd() * 5) }, () => ['x', 'y', '', '+', `n${Math.floor(rnd() * 50)}`][Math.floor(rnd() * 5)]).join('/');
    const filter = rnd() < 0.2 ? `${f}/#` : f || '#'; // '' is no filter
    if (trie.add(filter, i % 7)) pairs.push([filter, i % 7]);
  }
  assert.equal(trie.size, pairs.length);
  assert.ok(trie.nodeCount() > 100);
  for (let i = pairs.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [pairs[i], pairs[j]] = [pairs[j], pairs[i]];
  }
  for (const [f, v] of pairs) assert.equal(trie.remove(f, v), true);
  assert.equal(trie.size, 0);
  assert.equal(trie.nodeCount(), 1);
});

test('TopicTrie matches exactly like matchTopic: 20,000 random (filter set, topic) checks with churn', () => {
  const rnd = prng(0x5eed);
  const pick = <X>(xs: readonly X[]): X => xs[Math.floor(rnd() * xs.length)];
  const LEVELS = ['a', 'b', 'c', ''];
  const FIRST = [...LEVELS, '$SYS', '$x'];
  const randomFilter = (): string => {
    if (rnd() < 0.03) return '#';
    const n = 1 + Math.floor(rnd() * 4);
    const levels: string[] = [];
    for (let i = 0; i < n; i++) levels.push(rnd() < 0.3 ? '+' : pick(i === 0 ? FIRST : LEVELS));
    if (rnd() < 0.25) levels.push('#');
    return levels.join('/') || '/'; // '' is no filter
  };
  const randomTopic = (): string => {
    const n = 1 + Math.floor(rnd() * 4);
    const levels: string[] = [];
    for (let i = 0; i < n; i++) levels.push(pick(i === 0 ? FIRST : LEVELS));
    return levels.join('/');
  };

  const trie = new TopicTrie<number>();
  const model = new Map<string, Set<number>>();
  const modelSize = (): number => [...model.values()].reduce((s, vs) => s + vs.size, 0);
  let checks = 0;
  let matched = 0;
  let dollarMatched = 0;
  for (let round = 0; round < 400; round++) {
    // Churn: adds and removes (of present and absent pairs), the add share varying by round.
    const addShare = round % 20 < 10 ? 0.75 : 0.35;
    for (let op = 0; op < 8; op++) {
      if (rnd() < addShare || model.size === 0) {
        const f = randomFilter();
        const v = Math.floor(rnd() * 4);
        const vs = model.get(f) ?? new Set<number>();
        const fresh = !vs.has(v);
        vs.add(v);
        model.set(f, vs);
        assert.equal(trie.add(f, v), fresh, `add ${f} ${v}`);
      } else {
        const present = rnd() < 0.8;
        const f = present ? pick([...model.keys()]) : randomFilter();
        const v = present ? pick([...(model.get(f) as Set<number>)]) : Math.floor(rnd() * 4);
        const vs = model.get(f);
        const had = vs !== undefined && vs.has(v);
        if (had) {
          vs.delete(v);
          if (vs.size === 0) model.delete(f);
        }
        assert.equal(trie.remove(f, v), had, `remove ${f} ${v}`);
      }
    }
    assert.equal(trie.size, modelSize());
    assert.deepEqual(trie.filters().sort(), [...model.keys()].sort());

    for (let k = 0; k < 50; k++) {
      const topic = randomTopic();
      const expected: string[] = [];
      for (const [f, vs] of model) if (matchTopic(f, topic)) for (const v of vs) expected.push(`${f}\t${v}`);
      expected.sort();
      const got = visits(trie, topic);
      assert.deepEqual(got, expected, `topic ${JSON.stringify(topic)} with filters ${JSON.stringify([...model.keys()])}`);
      checks++;
      if (got.length > 0) {
        matched++;
        if (topic.startsWith('$')) dollarMatched++;
      }
    }

    // Every 50 rounds: empty the trie completely, which must prune it back to its root.
    if (round % 50 === 49) {
      for (const [f, vs] of model) for (const v of vs) assert.equal(trie.remove(f, v), true);
      model.clear();
      assert.equal(trie.size, 0);
      assert.equal(trie.nodeCount(), 1);
    }
  }
  assert.equal(checks, 20_000);
  // The alphabet is small so that most checks have matches, $-topics included.
  assert.ok(matched > 10_000, `only ${matched} checks with matches`);
  assert.ok(dollarMatched > 500, `only ${dollarMatched} $-topic checks with matches`);
});
