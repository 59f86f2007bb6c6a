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

test('busy for two seconds, then idle for five: one idle collection; idle all along: none', { timeout: 30_000 }, async () => {
  const quiet = new ThreadVitals();
  for (let i = 0; i < 6; i++) {
    await sleep(1000);
    quiet.sample();
  }
  assert.equal(quiet.collections, 0, 'a thread that was never busy collected');

  const v = new ThreadVitals();
  for (let i = 0; i < 2; i++) {
    spin(1000);
    await sleep(10);
    v.sample();
  }
  assert.equal(v.collections, 0, 'collected while busy');
  for (let i = 0; i < 4; i++) {
    await sleep(1000);
    v.sample();
  }
  assert.equal(v.collections, 0, 'collected before five idle seconds');
  for (let i = 0; i < 3 && v.collections === 0; i++) {
    await sleep(1000);
    v.sample();
  }
  assert.equal(v.collections, 1, 'no collection after the busy stretch went idle');
  // Idle on: no second one without new work.
  for (let i = 0; i < 3; i++) {
    await sleep(1000);
    v.sample();
  }
  assert.equal(v.collections, 1);
});
