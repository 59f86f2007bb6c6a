// Unit tests for the reconnect delay (src/broker/backoff.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nextBackoff } from '../../src/broker/backoff';

const fixed = (x: number) => (): number => x;
const ALMOST_ONE = 1 - 2 ** -53;

test('growth: the delay doubles per attempt (random fixed at its top)', () => {
  const delays = [0, 1, 2, 3, 4, 5].map((a) => nextBackoff(a, 100, 100_000, fixed(ALMOST_ONE)));
  assert.deepEqual(delays, [100, 200, 400, 800, 1600, 3200]);
  const low = [0, 1, 2, 3].map((a) => nextBackoff(a, 100, 100_000, fixed(0)));
  assert.deepEqual(low, [100, 100, 200, 400], 'equal jitter: the fixed half doubles too, floored at the minimum');
});

test('growth is monotonic in the attempt for a fixed random value', () => {
  for (const r of [0, 0.25, 0.5, 0.99]) {
    let prev = 0;
    for (let a = 0; a < 40; a++) {
      const d = nextBackoff(a, 10, 3_600_000, fixed(r));
      assert.ok(d >= prev, `attempt ${a}, random ${r}: ${d} < ${prev}`);
      prev = d;
    }
  }
});

test('cap: never more than maxMs, also for huge attempt counts', () => {
  for (const attempt of [10, 30, 31, 64, 1000, 1e9, Number.MAX_SAFE_INTEGER]) {
    for (const r of [0, 0.5, ALMOST_ONE]) {
      const d = nextBackoff(attempt, 100, 10_000, fixed(r));
      assert.ok(Number.isFinite(d) && d <= 10_000, `attempt ${attempt}: ${d}`);
      assert.ok(d >= 5_000, `at the cap the delay keeps its fixed half: ${d}`);
    }
  }
  assert.equal(nextBackoff(1e9, 600_000, 3_600_000, fixed(ALMOST_ONE)), 3_600_000);
});

test('jitter: the delay spans [base/2, base] linearly in the injected random value', () => {
  const base = 1600; // attempt 4 from 100
  for (const r of [0, 0.1, 0.25, 0.5, 0.75, 0.9, ALMOST_ONE]) {
    assert.equal(nextBackoff(4, 100, 100_000, fixed(r)), Math.round(base / 2 + r * (base / 2)), `random ${r}`);
  }
  let calls = 0;
  nextBackoff(3, 100, 1000, () => {
    calls++;
    return 0.5;
  });
  assert.equal(calls, 1, 'one random draw per delay');
  // Math.random by default: values stay in range.
  for (let i = 0; i < 1000; i++) {
    const d = nextBackoff(2, 100, 10_000);
    assert.ok(d >= 200 && d <= 400, String(d));
  }
});

test('results are whole milliseconds', () => {
  for (let a = 0; a < 20; a++) {
    for (const r of [0.1234, 0.777]) assert.ok(Number.isInteger(nextBackoff(a, 33, 10_007, fixed(r))));
  }
});

test('bounds: every delay lies within [FANOUT_RECONNECT_MIN_MS, FANOUT_RECONNECT_MAX_MS]', () => {
  // README: FANOUT_RECONNECT_MIN_MS is the "Shortest delay before reconnecting to a broker",
  // FANOUT_RECONNECT_MAX_MS the "Longest delay between attempts".
  for (const [min, max] of [[100, 10_000], [10, 10], [250, 1000], [600_000, 3_600_000]]) {
    for (let attempt = 0; attempt < 40; attempt++) {
      for (const r of [0, 0.3, ALMOST_ONE]) {
        const d = nextBackoff(attempt, min, max, fixed(r));
        assert.ok(d >= min && d <= max, `min ${min}, max ${max}, attempt ${attempt}, random ${r}: ${d}`);
      }
    }
  }
});
