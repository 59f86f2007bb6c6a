// The idle collection of ThreadVitals: a thread that was busy and then goes idle collects once,
// a thread that stayed idle does not. Real event-loop utilisation, sampled as the threads do.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as v8 from 'node:v8';
import { ThreadVitals } from '../../src/metrics/vitals';
import { sleep } from '../helpers/wait';

v8.setFlagsFromString('--expose-gc'); // as the daemon's entry point does

/** Keeps the event loop busy for ms (a busy second for the utilisation figure). */
function spin(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) { /* busy */ }
}

/** Idle seconds, sampled once each as the threads do; stops early once `until` holds. */
async function idleFor(v: ThreadVitals, seconds: number, until: () => boolean = () => false): Promise<void> {
  for (let i = 0; i < seconds && !until(); i++) {
    await sleep(1000);
    v.sample();
  }
}

test('busy for two seconds, then idle for five: one idle collection; idle all along: none', { timeout: 30_000 }, async () => {
  const quiet = new ThreadVitals();
  await idleFor(quiet, 6);
  assert.equal(quiet.collections, 0, 'a thread that was never busy collected');

  const v = new ThreadVitals();
  for (let i = 0; i < 2; i++) {
    spin(1000);
    await sleep(10);
    v.sample();
  }
  assert.equal(v.collections, 0, 'collected while busy');
  await idleFor(v, 4);
  assert.equal(v.collections, 0, 'collected before five idle seconds');
  await idleFor(v, 3, () => v.collections > 0);
  assert.equal(v.collections, 1, 'no collection after the busy stretch went idle');
  // Idle on: no second one without new work.
  await idleFor(v, 3);
  assert.equal(v.collections, 1);
});
