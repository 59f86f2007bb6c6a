// Moving messages between two worker threads: the SharedArrayBuffer ring with its doorbells
// (src/ring/spsc.ts, src/ring/doorbell.ts) against postMessage over a MessageChannel.
//
//   node dist/bench/ring.bench.js
//
// A producer thread sends `count` messages of one size, a consumer thread copies each one out
// (as a writer copies a record into its socket buffer). The ring producer commits and rings
// every 32 messages, or when the ring is full; the consumer releases every 256 messages or when
// it runs dry, and sleeps on the doorbell. postMessage gets credit-based flow control (at most
// 1024 messages in flight), without which the producer would just queue everything up.
// Timing: from the main thread's start message to the consumer's "done".

import { MessageChannel, Worker, isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { createRing, RingConsumer, RingProducer, type RingBuffers } from '../src/ring/spsc';
import { createDoorbell, Doorbell } from '../src/ring/doorbell';
import { emit, median, si, table } from './common';

const SIZES = [16, 64, 256, 1024, 16384];
const RUNS = 5;
const RUN_SECONDS = 0.15;
const RING_BYTES = 4 << 20; // the FANOUT_RING_BYTES default
const COMMIT_EVERY = 32;
const RELEASE_EVERY = 256;
const WINDOW = 1024;
const CREDIT_EVERY = 128;

type Role = 'sab-producer' | 'sab-consumer' | 'pm-producer' | 'pm-consumer';

interface WorkerData {
  role: Role;
  ring?: RingBuffers;
  consumerBell?: SharedArrayBuffer;
  producerBell?: SharedArrayBuffer;
  port?: MessagePort;
}

interface Run {
  t: 'run';
  id: number;
  size: number;
  count: number;
}

// ---------------------------------------------------------------------------------------------
// Worker side

/** A pending Atomics.waitAsync does not keep the event loop alive by itself. */
async function waitBell(bell: Doorbell, seen: number): Promise<void> {
  const keep = setTimeout(() => {}, 10_000);
  await bell.wait(seen, 1000);
  clearTimeout(keep);
}

function sabProducer(data: WorkerData): void {
  const p = new RingProducer(data.ring!);
  const consumerBell = new Doorbell(data.consumerBell!);
  const producerBell = new Doorbell(data.producerBell!);
  const buf = p.buffer;
  let src = Buffer.alloc(0);
  parentPort!.on('message', async (m: Run) => {
    if (src.length !== m.size) src = Buffer.alloc(m.size, 0x5a);
    for (let i = 0; i < m.count; i++) {
      let at = p.reserve(m.size);
      while (at < 0) {
        if (p.commit()) consumerBell.ring();
        const seen = producerBell.prepare();
        at = p.reserve(m.size);
        if (at < 0) {
          await waitBell(producerBell, seen);
          at = p.reserve(m.size);
        }
        producerBell.awake();
      }
      src.copy(buf, at);
      if (m.size >= 4) buf.writeUInt32LE(i, at);
      if (i % COMMIT_EVERY === COMMIT_EVERY - 1 && p.commit()) consumerBell.ring();
    }
    if (p.commit()) consumerBell.ring();
    parentPort!.postMessage('sent');
  });
}

function sabConsumer(data: WorkerData): void {
  const c = new RingConsumer(data.ring!);
  const consumerBell = new Doorbell(data.consumerBell!);
  const producerBell = new Doorbell(data.producerBell!);
  const buf = c.buffer;
  const scratch = Buffer.alloc(RING_BYTES);
  parentPort!.on('message', async (m: Run) => {
    parentPort!.postMessage({ t: 'ready' });
    let n = 0;
    let sinceRelease = 0;
    let check = 0;
    while (n < m.count) {
      const at = c.next();
      if (at >= 0) {
        buf.copy(scratch, 0, at, at + c.lastLength);
        if (m.size >= 4) check += scratch.readUInt32LE(0) === n ? 0 : 1;
        n++;
        if (++sinceRelease === RELEASE_EVERY) {
          sinceRelease = 0;
          if (c.release()) producerBell.ring();
        }
        continue;
      }
      if (c.release()) producerBell.ring();
      const seen = consumerBell.prepare();
      if (c.hasData()) {
        consumerBell.awake();
        continue;
      }
      await waitBell(consumerBell, seen);
      consumerBell.awake();
    }
    if (c.release()) producerBell.ring();
    parentPort!.postMessage({ t: 'done', errors: check });
  });
}

function pmProducer(data: WorkerData): void {
  const port = data.port!;
  let acked = 0;
  let runId = -1;
  let wake: (() => void) | null = null;
  port.on('message', ([id, n]: [number, number]) => {
    if (id !== runId) return; // a late credit of the previous run
    acked = n;
    const w = wake;
    wake = null;
    w?.();
  });
  parentPort!.on('message', async (m: Run) => {
    const src = new Uint8Array(m.size).fill(0x5a); // its own ArrayBuffer: only m.size bytes are cloned
    runId = m.id;
    acked = 0;
    let sent = 0;
    while (sent < m.count) {
      while (sent < m.count && sent - acked < WINDOW) {
        if (m.size >= 4) new DataView(src.buffer).setUint32(0, sent, true);
        port.postMessage(src);
        sent++;
      }
      if (sent < m.count) await new Promise<void>((r) => { wake = r; });
    }
    parentPort!.postMessage('sent');
  });
}

function pmConsumer(data: WorkerData): void {
  const port = data.port!;
  const scratch = Buffer.alloc(RING_BYTES);
  let run: Run | null = null;
  let n = 0;
  let errors = 0;
  parentPort!.on('message', (m: Run) => {
    run = m;
    n = 0;
    errors = 0;
    parentPort!.postMessage({ t: 'ready' });
  });
  port.on('message', (msg: Uint8Array) => {
    scratch.set(msg);
    if (msg.length >= 4) errors += scratch.readUInt32LE(0) === n ? 0 : 1;
    n++;
    if (n % CREDIT_EVERY === 0 && run !== null) port.postMessage([run.id, n]);
    if (run !== null && n === run.count) {
      run = null;
      parentPort!.postMessage({ t: 'done', errors });
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Main thread

interface Pair {
  producer: Worker;
  consumer: Worker;
}

function spawn(data: WorkerData, transfer: MessagePort[] = []): Worker {
  const w = new Worker(__filename, { workerData: data, transferList: transfer });
  w.on('error', (err) => {
    console.error(err);
    process.exit(1);
  });
  return w;
}

function sabPair(): Pair {
  const ring = createRing(RING_BYTES);
  const consumerBell = createDoorbell();
  const producerBell = createDoorbell();
  return {
    producer: spawn({ role: 'sab-producer', ring, consumerBell, producerBell }),
    consumer: spawn({ role: 'sab-consumer', ring, consumerBell, producerBell }),
  };
}

function pmPair(): Pair {
  const { port1, port2 } = new MessageChannel();
  return {
    producer: spawn({ role: 'pm-producer', port: port1 }, [port1]),
    consumer: spawn({ role: 'pm-consumer', port: port2 }, [port2]),
  };
}

let runs = 0;

/** One run; returns seconds. The consumer is told first and says when it is ready. */
function timedRun(pair: Pair, size: number, count: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const run: Run = { t: 'run', id: ++runs, size, count };
    let start = 0n;
    const onMessage = (m: { t: string; errors: number }): void => {
      if (m.t === 'ready') {
        start = process.hrtime.bigint();
        pair.producer.postMessage(run);
        return;
      }
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      pair.consumer.off('message', onMessage);
      if (m.errors !== 0) reject(new Error(`${m.errors} messages arrived out of order`));
      else resolve(seconds);
    };
    pair.consumer.on('message', onMessage);
    pair.consumer.postMessage(run);
  });
}

async function measurePair(pair: Pair, size: number): Promise<{ msgs: number[]; mbs: number[] }> {
  // Calibrate the count so one run takes about RUN_SECONDS.
  const probe = Math.max(500, Math.min(50_000, Math.floor((32 << 20) / size)));
  await timedRun(pair, size, probe); // warm-up
  const seconds = await timedRun(pair, size, probe);
  const count = Math.max(1000, Math.min(20_000_000, Math.round((probe / seconds) * RUN_SECONDS)));
  const msgs: number[] = [];
  const mbs: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const s = await timedRun(pair, size, count);
    msgs.push(count / s);
    mbs.push((count * size) / s / 1e6);
  }
  return { msgs, mbs };
}

async function main(): Promise<void> {
  const sab = sabPair();
  const pm = pmPair();
  const rows: string[][] = [];
  for (const size of SIZES) {
    const ringResult = await measurePair(sab, size);
    const pmResult = await measurePair(pm, size);
    const label = size >= 1024 ? `${size / 1024} KiB` : `${size} B`;
    const pmMedian = median(pmResult.msgs);
    for (const [variant, r] of [['SAB ring + doorbell', ringResult], ['postMessage', pmResult]] as const) {
      const msgs = median(r.msgs);
      const mbs = median(r.mbs);
      rows.push([label, variant, `${si(msgs)}/s`, `${mbs.toFixed(0)} MB/s`, `${(msgs / pmMedian).toFixed(1)}x`]);
      emit({ bench: 'ring', case: label, variant, value: msgs, unit: 'msgs/s', runs: r.msgs.length, extra: { value: mbs, unit: 'MB/s' } });
    }
  }
  await Promise.all([sab.producer, sab.consumer, pm.producer, pm.consumer].map((w) => w.terminate()));
  console.log(`Thread to thread, producer and consumer in two worker threads (median of ${RUNS} runs of ~${RUN_SECONDS * 1000} ms)\n`);
  console.log(table(['message', 'transport', 'msgs/s', 'MB/s', 'vs postMessage'], rows, 2));
}

if (isMainThread) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else {
  const data = workerData as WorkerData;
  ({ 'sab-producer': sabProducer, 'sab-consumer': sabConsumer, 'pm-producer': pmProducer, 'pm-consumer': pmConsumer })[data.role](data);
}
