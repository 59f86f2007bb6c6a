// Unit tests for the doorbell (src/ring/doorbell.ts). Worker threads run this same file (the
// !isMainThread branch) so no helper script lands in dist/test/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { createDoorbell, Doorbell } from '../../src/ring/doorbell';
import { alive } from '../helpers/wait';

type Job =
  | { job: 'ring-on-go'; bell: SharedArrayBuffer; go: SharedArrayBuffer }
  | { job: 'burst'; bell: SharedArrayBuffer; data: SharedArrayBuffer; count: number };

function startWorker(data: Job): { worker: Worker; done: Promise<void> } {
  const worker = new Worker(__filename, { workerData: data });
  const done = new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  return { worker, done };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

if (isMainThread) {
  test('createDoorbell gives a SharedArrayBuffer a Doorbell can use', () => {
    const sab = createDoorbell();
    assert.ok(sab instanceof SharedArrayBuffer);
    const bell = new Doorbell(sab);
    bell.ring();
    bell.awake();
  });

  test('wait() resolves with "ok" when another thread rings while the consumer sleeps', async () => {
    const sab = createDoorbell();
    const go = new SharedArrayBuffer(4);
    const { worker, done } = startWorker({ job: 'ring-on-go', bell: sab, go });
    const bell = new Doorbell(sab);
    const seen = bell.prepare();
    let settled = false;
    const started = Date.now();
    const waiting = bell.wait(seen, 10_000).then((r) => {
      settled = true;
      return r;
    });
    for (let i = 0; i < 5; i++) await tick();
    assert.equal(settled, false, 'wait() really waits while nobody rings');
    Atomics.store(new Int32Array(go), 0, 1);
    Atomics.notify(new Int32Array(go), 0);
    assert.equal(await alive(waiting), 'ok');
    assert.ok(Date.now() - started < 5_000, 'woken by the ring, not by the timeout');
    bell.awake();
    await done;
    await worker.terminate();
  });

  test('prepare/awake: a ring() after prepare() makes wait(seen) return "not-equal" at once', async () => {
    const bell = new Doorbell(createDoorbell());
    const seen = bell.prepare();
    bell.ring();
    const started = Date.now();
    assert.equal(await alive(bell.wait(seen, 10_000)), 'not-equal');
    assert.ok(Date.now() - started < 1_000);
    bell.awake();
  });

  test('prepare/awake: a ring() from another thread between prepare() and wait() is not lost', async () => {
    const sab = createDoorbell();
    const go = new SharedArrayBuffer(4);
    const { worker, done } = startWorker({ job: 'ring-on-go', bell: sab, go });
    const bell = new Doorbell(sab);
    const seen = bell.prepare();
    Atomics.store(new Int32Array(go), 0, 1);
    Atomics.notify(new Int32Array(go), 0);
    await done; // the worker has rung
    const started = Date.now();
    assert.equal(await alive(bell.wait(seen, 10_000)), 'not-equal');
    assert.ok(Date.now() - started < 1_000);
    bell.awake();
    await worker.terminate();
  });

  test('wait() times out with "timed-out" when nobody rings', async () => {
    const bell = new Doorbell(createDoorbell());
    const seen = bell.prepare();
    assert.equal(await alive(bell.wait(seen, 20)), 'timed-out');
    bell.awake();
  });

  test('a ring() before prepare() is counted: the next prepare() takes the new count', async () => {
    const bell = new Doorbell(createDoorbell());
    const before = bell.prepare();
    bell.awake();
    bell.ring();
    bell.ring();
    const after = bell.prepare();
    assert.notEqual(after, before);
    assert.equal(await alive(bell.wait(after, 20)), 'timed-out', 'old rings do not wake a new wait');
    bell.awake();
  });

  test('ring() skips Atomics.notify while the consumer is awake (and notifies once it prepared)', async () => {
    const sab = createDoorbell();
    const bell = new Doorbell(sab);
    const count = new Int32Array(sab); // word 0 is the count (src/ring/doorbell.ts layout)
    // A raw waiter on the count stands in for a consumer that did not announce its sleep.
    const raw = Atomics.waitAsync(count, 0, Atomics.load(count, 0), 200);
    assert.equal(raw.async, true);
    bell.awake();
    bell.ring();
    assert.equal(await alive(raw.value as Promise<string>), 'timed-out', 'no notify without a sleeping consumer');
    const seen = bell.prepare();
    const waiting = bell.wait(seen, 10_000);
    bell.ring();
    assert.equal(await alive(waiting), 'ok');
    bell.awake();
  });

  test('stress: 20,000 rings in bursts from another thread, the prepare/awake loop never misses one', async () => {
    const COUNT = 20_000;
    const sab = createDoorbell();
    const data = new SharedArrayBuffer(4);
    const words = new Int32Array(data);
    const { worker, done } = startWorker({ job: 'burst', bell: sab, data, count: COUNT });
    const bell = new Doorbell(sab);
    let seenData = 0;
    let timeouts = 0;
    let sleeps = 0;
    while (seenData < COUNT) {
      bell.awake();
      seenData = Atomics.load(words, 0); // "drain the rings"
      if (seenData >= COUNT) break;
      const seen = bell.prepare();
      if (Atomics.load(words, 0) !== seenData) continue; // look again after prepare()
      sleeps++;
      if ((await alive(bell.wait(seen, 3_000))) === 'timed-out') timeouts++;
    }
    bell.awake();
    await done;
    await worker.terminate();
    assert.equal(seenData, COUNT);
    assert.equal(timeouts, 0, `a wake-up was lost (${timeouts} timeouts in ${sleeps} sleeps)`);
    assert.ok(sleeps > 0);
  });
} else {
  const job = workerData as Job;
  const bell = new Doorbell(job.bell);
  if (job.job === 'ring-on-go') {
    const go = new Int32Array(job.go);
    while (Atomics.load(go, 0) === 0) Atomics.wait(go, 0, 0, 50);
    bell.ring();
    parentPort!.postMessage('rung');
  } else {
    const words = new Int32Array(job.data);
    const pause = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 1; i <= job.count; i++) {
      Atomics.store(words, 0, i); // "commit"
      bell.ring();
      if (i % 97 === 0) Atomics.wait(pause, 0, 0, 1); // let the consumer fall asleep now and then
      else if (i % 7 === 0) for (let k = 0; k < 200; k++) Atomics.load(words, 0);
    }
    parentPort!.postMessage('done');
  }
}
