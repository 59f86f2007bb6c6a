// FANOUT_UPSTREAM_CONNECT_RATE (src/broker/connect-pacer.ts): sessions start at most `rate` a
// second, first come first served, with a tenth of a second's worth at once.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConnectPacer } from '../../src/broker/connect-pacer';

function clocked(rate: number): { pacer: ConnectPacer<number>; started: number[]; at: number[]; clock: { now: number } } {
  const clock = { now: 0 };
  const started: number[] = [];
  const at: number[] = [];
  const pacer = new ConnectPacer<number>(rate, (n) => {
    started.push(n);
    at.push(clock.now);
  }, () => clock.now);
  return { pacer, started, at, clock };
}

test('rate 0 starts everything at once, in order', () => {
  const { pacer, started } = clocked(0);
  for (let i = 0; i < 5; i++) pacer.push(i);
  assert.deepEqual(started, [0, 1, 2, 3, 4]);
  assert.equal(pacer.waiting, 0);
});

test('a burst of a tenth of a second passes at once; the rest waits for tokens, in order', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { pacer, started, at, clock } = clocked(100);
  for (let i = 0; i < 30; i++) pacer.push(i);
  assert.deepEqual(started, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'capacity: 10 at 100/s');
  assert.equal(pacer.waiting, 20);
  for (let ms = 0; ms < 200 && pacer.waiting > 0; ms++) {
    clock.now++;
    t.mock.timers.tick(1);
  }
  assert.deepEqual(started, Array.from({ length: 30 }, (_, i) => i));
  // 20 more at 100/s: the last one 200 ms after the first.
  assert.ok(at[29] >= 195 && at[29] <= 205, `the 30th started at ${at[29]} ms`);
  for (let i = 11; i < 30; i++) assert.ok(at[i] - at[i - 1] >= 9, `item ${i} started ${at[i] - at[i - 1]} ms after the one before`);
  pacer.stop();
});

test('an item taken out of the queue never starts', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { pacer, started, clock } = clocked(10);
  pacer.push(1);
  pacer.push(2);
  pacer.push(3);
  assert.equal(pacer.remove(2), true);
  assert.equal(pacer.remove(2), false);
  assert.equal(pacer.remove(1), false, 'started already');
  for (let ms = 0; ms < 1000; ms++) {
    clock.now++;
    t.mock.timers.tick(1);
  }
  assert.deepEqual(started, [1, 3]);
});
