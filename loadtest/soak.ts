// `npm run soak -- --minutes N`: mqtt-fanout under steady load for N minutes. It first measures
// the maximum QoS 1 rate of the job on this machine (an unpaced run), then streams at half of it
// to two upstream mosquittos whose receivers count every message by device and sequence. Every
// minute it prints the daemon's resident memory and, per thread, its event-loop delay (p99, max
// over the last second) and heap (in use, committed, and memory outside it that JS objects own),
// from /metrics. The run fails (exit 1) when the resident
// memory grew by more than 10 % from the end of the warm-up to the end, or when any message is
// missing at either broker.
import { parseArgs } from 'node:util';
import { installCleanupHandlers, sleep } from './procs';
import { startTarget, type Target } from './targets';
import { runUplink, type UplinkJob } from './uplink';
import { readRssKB } from './proc-usage';
import * as fs from 'node:fs';

const HELP = `usage: npm run soak -- [--minutes N] [options]

  --minutes N      length of the steady run (default 30)
  --devices N      device connections (default 100)
  --rate N         msg/s of the steady run (default: half the rate measured first)
  --calibrate S    seconds of the unpaced run that measures the maximum (default 15)
  --warmup M       minutes at the start not counted in the memory check (default: 2, or a fifth of a shorter run)
  --payload B      payload bytes (default 64)
  --shards N       FANOUT_SHARDS (default 2)
  --json FILE      every figure, for machines
`;

interface Sample {
  minute: number;
  rssMb: number;
  delivered: number;
  threads: { thread: string; loopP99Ms: number; loopMaxMs: number; heapMb: number; committedMb: number; externalMb: number }[];
}

function metricsOf(text: string): Map<string, { labels: Record<string, string>; value: number }[]> {
  const out = new Map<string, { labels: Record<string, string>; value: number }[]>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]] = l[2];
    const list = out.get(m[1]) ?? [];
    list.push({ labels, value: Number(m[3]) });
    out.set(m[1], list);
  }
  return out;
}

async function sample(target: Target, minute: number, delivered: number): Promise<Sample> {
  const m = metricsOf(await (await fetch(`http://127.0.0.1:${target.httpPort}/metrics`)).text());
  const byThread = new Map<string, Sample['threads'][number]>();
  const entry = (thread: string): Sample['threads'][number] => {
    let e = byThread.get(thread);
    if (e === undefined) byThread.set(thread, e = { thread, loopP99Ms: 0, loopMaxMs: 0, heapMb: 0, committedMb: 0, externalMb: 0 });
    return e;
  };
  for (const s of m.get('fanout_thread_event_loop_delay_seconds') ?? []) {
    if (s.labels.stat === 'p99') entry(s.labels.thread).loopP99Ms = s.value * 1000;
    else entry(s.labels.thread).loopMaxMs = s.value * 1000;
  }
  for (const s of m.get('fanout_thread_heap_used_bytes') ?? []) entry(s.labels.thread).heapMb = s.value / 1048576;
  for (const s of m.get('fanout_thread_heap_committed_bytes') ?? []) entry(s.labels.thread).committedMb = s.value / 1048576;
  for (const s of m.get('fanout_thread_external_bytes') ?? []) entry(s.labels.thread).externalMb = s.value / 1048576;
  const pid = target.watched().find((w) => w.role === 'target')!.pid;
  return { minute, rssMb: (readRssKB(pid) ?? 0) / 1024, delivered, threads: [...byThread.values()] };
}

function printSample(s: Sample): void {
  const threads = s.threads.map((t) => `${t.thread} ${t.loopP99Ms.toFixed(1)}/${t.loopMaxMs.toFixed(1)} ms ${t.heapMb.toFixed(0)}/${t.committedMb.toFixed(0)}/${t.externalMb.toFixed(0)} MB`).join(', ');
  process.stdout.write(`minute ${String(s.minute).padStart(3)}: RSS ${s.rssMb.toFixed(1)} MB, delivered ${s.delivered}; loop delay p99/max, heap used/committed/external: ${threads}\n`);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '30' }, devices: { type: 'string', default: '100' }, rate: { type: 'string' },
      calibrate: { type: 'string', default: '15' }, warmup: { type: 'string' }, payload: { type: 'string', default: '64' },
      shards: { type: 'string', default: '2' }, json: { type: 'string' }, help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const num = (name: string, raw: string | undefined, min: number): number => {
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number of at least ${min}, got ${raw}`);
    return n;
  };
  const minutes = num('minutes', values.minutes, 1);
  const devices = num('devices', values.devices, 1);
  const calibrateS = num('calibrate', values.calibrate, 5);
  const warmup = values.warmup === undefined ? Math.min(2, minutes / 5) : num('warmup', values.warmup, 0);
  const payload = num('payload', values.payload, 48);
  const shards = num('shards', values.shards, 1);
  installCleanupHandlers();

  const target = await startTarget('fanout', { upstreams: 2, qos: 1, shards, daemonLogLevel: 'info', keepLogs: false, http: true });
  let failed = false;
  const samples: Sample[] = [];
  try {
    const base: UplinkJob = {
      devices, messages: 0, payload, qos: 1, inflight: 16, threads: 2, topicPattern: 'soak/{id}', idleTimeoutS: 60, runTag: `soak${process.pid}c-`,
    };
    let rate = values.rate === undefined ? 0 : num('rate', values.rate, 1);
    if (rate === 0) {
      process.stdout.write(`calibrating: ${devices} devices, QoS 1, unpaced for ${calibrateS} s ...\n`);
      const max = await runUplink(target, { ...base, durationS: calibrateS, messages: 2e6 });
      rate = Math.max(1, Math.round(max.deliveredPerSec / 2));
      process.stdout.write(`maximum ${Math.round(max.deliveredPerSec)} msg/s delivered to both brokers; soaking at ${rate} msg/s for ${minutes} min\n`);
    }
    const durationS = minutes * 60;
    const perDevice = Math.ceil((rate * durationS * 1.2) / devices) + 100;
    const started = Date.now();
    let delivered = 0;
    const result = await runUplink(target, { ...base, runTag: `soak${process.pid}s-`, rate, durationS, messages: perDevice }, {
      onProgress: (p) => { delivered = Math.min(...p.received); },
      during: async () => {
        for (let minute = 1; minute <= minutes; minute++) {
          await sleep(started + minute * 60_000 - Date.now());
          const s = await sample(target, minute, delivered);
          samples.push(s);
          printSample(s);
        }
      },
    });
    const missing = result.brokers.map((b) => `${b.broker} ${b.missing} missing, ${b.duplicates} duplicates of ${b.expected}`);
    const afterWarmup = samples.find((s) => s.minute >= Math.max(1, Math.ceil(warmup))) ?? samples[0];
    const last = samples[samples.length - 1];
    const growth = afterWarmup && last ? (last.rssMb - afterWarmup.rssMb) / afterWarmup.rssMb : 0;
    const lost = result.brokers.reduce((n, b) => n + b.missing, 0);
    process.stdout.write(`\n${result.publisher.acked} messages acknowledged at ${Math.round(result.msgPerSec)} msg/s; ${missing.join('; ')}\n`);
    process.stdout.write(`RSS after warm-up (minute ${afterWarmup?.minute}) ${afterWarmup?.rssMb.toFixed(1)} MB, at the end ${last?.rssMb.toFixed(1)} MB: ${(growth * 100).toFixed(1)} % growth\n`);
    if (growth > 0.1) {
      process.stdout.write('FAIL: resident memory grew by more than 10 % after the warm-up\n');
      failed = true;
    }
    if (lost > 0) {
      process.stdout.write(`FAIL: ${lost} messages missing\n`);
      failed = true;
    }
    if (!failed) process.stdout.write('PASS\n');
    if (values.json) fs.writeFileSync(values.json, `${JSON.stringify({ minutes, devices, rate, warmup, samples, result, growth, lost }, null, 2)}\n`);
  } finally {
    const notes = await target.stop(failed);
    for (const n of notes) process.stdout.write(`note: ${n}\n`);
  }
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (err: Error) => {
  process.stderr.write(`soak: ${err.message}\n`);
  process.exit(2);
});
