// Unit tests for topic filter intersection (src/protocol/intersect.ts), cross-checked against
// the reference matcher matchTopic (src/protocol/topic.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { intersectFilters } from '../../src/protocol/intersect';
import { matchTopic, validateTopicFilter } from '../../src/protocol/topic';
import { mulberry32, type Rng } from '../helpers/prng';

/** a ∩ b is `expected`, whichever way round. */
function expectIntersection(a: string, b: string, expected: string | null): void {
  assert.equal(intersectFilters(a, b), expected, `${a} ∩ ${b}`);
  assert.equal(intersectFilters(b, a), expected, `${b} ∩ ${a}`);
}

test('literals must be equal level by level', () => {
  expectIntersection('a/b', 'a/b', 'a/b');
  expectIntersection('a/b', 'a/c', null);
  expectIntersection('a/b', 'a', null);
  expectIntersection('a/b', 'a/b/c', null);
  expectIntersection('a//b', 'a//b', 'a//b');
  expectIntersection('a//b', 'a/x/b', null);
  expectIntersection('/a', 'a', null);
});

test('+ gives way to a literal and stays against +', () => {
  expectIntersection('a/+', 'a/b', 'a/b');
  expectIntersection('+/+', 'a/+', 'a/+');
  expectIntersection('+/b', 'a/+', 'a/b');
  expectIntersection('+', '+', '+');
  expectIntersection('a/+', 'a//', null);
  expectIntersection('a/+', 'a/', 'a/');
  expectIntersection('+/+', 'a', null);
  expectIntersection('a/+', 'a', null);
});

test('# takes the rest of the other filter, its parent level included', () => {
  expectIntersection('#', 'a/b/c', 'a/b/c');
  expectIntersection('#', '#', '#');
  expectIntersection('#', '+/x/#', '+/x/#');
  expectIntersection('a/#', 'a', 'a');
  expectIntersection('a/#', 'a/+', 'a/+');
  expectIntersection('a/#', '+/b/#', 'a/b/#');
  expectIntersection('a/#', 'b/#', null);
  expectIntersection('a/b/#', 'a/#', 'a/b/#');
  expectIntersection('a/b/#', 'a', null);
  expectIntersection('+/#', 'a', 'a');
  expectIntersection('a/+/#', '+/b', 'a/b');
  // Only the (invalid) empty topic would match both.
  expectIntersection('+', '/#', null);
  expectIntersection('/#', '+/#', '/#');
});

test('a wildcard first level never meets a $ topic', () => {
  expectIntersection('#', '$SYS/#', null);
  expectIntersection('+/x', '$a/x', null);
  expectIntersection('+', '$', null);
  expectIntersection('+/#', '$SYS', null);
  expectIntersection('$SYS/#', '$SYS/+', '$SYS/+');
  expectIntersection('$SYS/#', '$SYS/broker/#', '$SYS/broker/#');
  // '$' elsewhere than at the start of the first level is an ordinary character.
  expectIntersection('#', 'a/$b', 'a/$b');
  expectIntersection('+/+', 'a/$b', 'a/$b');
  expectIntersection('#', 'a$', 'a$');
});

const LEVELS = ['a', 'b', '', '+'];
const TOPIC_LEVELS = ['a', 'b', '', '$s'];

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng() * items.length)];
}

/** A valid filter of 1 to 4 levels over a tiny alphabet, so that filters often overlap. */
function randomFilter(rng: Rng): string {
  for (;;) {
    const depth = 1 + Math.floor(rng() * 4);
    const levels: string[] = [];
    for (let i = 0; i < depth; i++) levels.push(i === 0 && rng() < 0.15 ? '$s' : pick(rng, LEVELS));
    if (rng() < 0.35) levels[depth - 1] = '#';
    const filter = levels.join('/');
    if (validateTopicFilter(filter, { sharedAllowed: false }) === 0) return filter;
  }
}

/** A topic: random, or an instance of `filter` so that matches are common. */
function randomTopic(rng: Rng, filter: string): string {
  for (;;) {
    const levels: string[] = [];
    if (rng() < 0.5) {
      const depth = 1 + Math.floor(rng() * 5);
      for (let i = 0; i < depth; i++) levels.push(pick(rng, TOPIC_LEVELS));
    } else {
      for (const level of filter.split('/')) {
        if (level === '+') levels.push(pick(rng, TOPIC_LEVELS));
        else if (level === '#') for (let n = Math.floor(rng() * 3); n > 0; n--) levels.push(pick(rng, TOPIC_LEVELS));
        else levels.push(level);
      }
    }
    const topic = levels.join('/');
    if (topic !== '') return topic;
  }
}

test('randomised: a topic matches a ∩ b exactly when it matches both a and b', () => {
  const seed = 0x1e75ec7;
  const rng = mulberry32(seed);
  let inBoth = 0;
  let disjoint = 0;
  for (let round = 0; round < 4000; round++) {
    const a = randomFilter(rng);
    const b = randomFilter(rng);
    const both = intersectFilters(a, b);
    const where = `seed ${seed}, round ${round}: ${a} ∩ ${b} = ${String(both)}`;
    assert.equal(intersectFilters(b, a), both, `symmetric, ${where}`);
    if (both === null) {
      disjoint++;
    } else {
      assert.equal(validateTopicFilter(both, { sharedAllowed: false }), 0, `valid filter, ${where}`);
      assert.equal(intersectFilters(a, both), both, `a ∩ (a ∩ b) = a ∩ b, ${where}`);
      assert.equal(intersectFilters(both, b), both, `(a ∩ b) ∩ b = a ∩ b, ${where}`);
    }
    for (let k = 0; k < 24; k++) {
      const t = randomTopic(rng, pick(rng, [a, b, both ?? a]));
      const expected = matchTopic(a, t) && matchTopic(b, t);
      if (expected) inBoth++;
      assert.equal(both !== null && matchTopic(both, t), expected, `topic ${JSON.stringify(t)}, ${where}`);
    }
  }
  // Guards against a generator that only ever produces disjoint (or only overlapping) pairs.
  assert.ok(inBoth > 5000, `only ${inBoth} topics matched both filters`);
  assert.ok(disjoint > 500, `only ${disjoint} disjoint pairs`);
});

test('a filter intersected with itself is itself', () => {
  for (const f of ['#', '+', 'a/+/#', '$SYS/#', '/', 'a//+']) assert.equal(intersectFilters(f, f), f);
});
