// One doorbell per consuming thread: producers ring it after committing to any of that thread's
// rings. The consumer waits with Atomics.waitAsync (never Atomics.wait: it owns sockets), and a
// producer only pays for Atomics.notify when the consumer said it is about to sleep.

const COUNT = 0;
const SLEEPING = 16;

export function createDoorbell(): SharedArrayBuffer {
  return new SharedArrayBuffer(128);
}

export class Doorbell {
  private readonly words: Int32Array;

  constructor(sab: SharedArrayBuffer) {
    this.words = new Int32Array(sab);
  }

  /** Producer side: call after commit(). */
  ring(): void {
    Atomics.add(this.words, COUNT, 1);
    if (Atomics.load(this.words, SLEEPING) !== 0) Atomics.notify(this.words, COUNT);
  }

  /** Consumer side, step 1: announce the intent to sleep and take the count to wait on. The
   *  consumer must look at its rings again after this and before wait(). */
  prepare(): number {
    Atomics.store(this.words, SLEEPING, 1);
    return Atomics.load(this.words, COUNT);
  }

  /** Consumer side, step 2: resolves when the count moves past `seen` (or after timeoutMs). */
  wait(seen: number, timeoutMs: number): Promise<unknown> {
    const r = Atomics.waitAsync(this.words, COUNT, seen, timeoutMs);
    return r.async ? r.value : Promise.resolve(r.value);
  }

  awake(): void {
    Atomics.store(this.words, SLEEPING, 0);
  }
}
