// What a Node.js thread pays for the device side of one QoS 1 publish, and nothing else: read the
// PUBLISH from its socket and write a 4-byte PUBACK back, for 100 devices at a paced total rate.
// No parsing, no rings, no brokers. Every shard does at least this per message, so this is the
// floor under the daemon's CPU per message at each offered rate (and a mosquitto bridge does
// the same two socket operations per message, plus its two brokers').
//
//   node dist/bench/socket-floor.bench.js
//
// The devices run in a child process, so the figure is the server process alone: utime+stime
// from process.cpuUsage() over the paced window, per message. Cases: reading only ("read"),
// reading and answering each read with one write ("read+write").

import { fork, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import { emit, median, table } from './common';

const DEVICES = 100;
const RATES = [5000, 20000, 50000];
const RUN_MS = 3000;
const RUNS = 3;
const PUBLISH_BYTES = 70; // a 64 B payload on a short topic
const PUBACK = Buffer.from([0x40, 0x02, 0x00, 0x01]);

type Mode = 'read' | 'read+write';

interface DevicesDone {
  t: 'done';
  sent: number;
}

/** Child: DEVICES connections, each sending its share of `rate` msg/s in 1 ms ticks. */
function devices(port: number, rate: number, ms: number): void {
  const sockets: net.Socket[] = [];
  let up = 0;
  const msg = Buffer.alloc(PUBLISH_BYTES, 0x30);
  const go = (): void => {
    process.send!({ t: 'start' });
    const t0 = Date.now();
    let sent = 0;
    let next = 0;
    const tick = (): void => {
      const elapsed = Date.now() - t0;
      if (elapsed >= ms) {
        process.send!({ t: 'done', sent } satisfies DevicesDone);
        return;
      }
      const due = (elapsed * rate) / 1000;
      while (sent < due) {
        sockets[next].write(msg);
        next = (next + 1) % DEVICES;
        sent++;
      }
      setTimeout(tick, 1);
    };
    tick();
  };
  for (let i = 0; i < DEVICES; i++) {
    const s = net.connect(port, '127.0.0.1', () => {
      if (++up === DEVICES) go();
    });
    s.setNoDelay(true);
    s.on('data', () => undefined);
    sockets.push(s);
  }
}

function measure(mode: Mode, rate: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer({ noDelay: true }, (socket) => {
      socket.on('data', mode === 'read' ? () => undefined : () => socket.write(PUBACK));
      socket.on('error', () => undefined);
    });
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      const child: ChildProcess = fork(__filename, ['devices', String(port), String(rate), String(RUN_MS)]);
      let start: NodeJS.CpuUsage | null = null;
      child.on('message', (m: { t: string; sent?: number }) => {
        if (m.t === 'start') start = process.cpuUsage();
        else if (m.t === 'done' && start !== null) {
          const used = process.cpuUsage(start);
          child.kill();
          server.close();
          // Sockets of the killed child close on their own; close() waits for none.
          resolve((used.user + used.system) / (m.sent ?? 1));
        }
      });
      child.on('error', reject);
    });
  });
}

async function main(): Promise<void> {
  const rows: string[][] = [];
  for (const rate of RATES) {
    const cells = [String(rate)];
    for (const mode of ['read', 'read+write'] as const) {
      const runs: number[] = [];
      for (let r = 0; r < RUNS; r++) runs.push(await measure(mode, rate));
      const value = median(runs);
      cells.push(value.toFixed(1));
      emit({ bench: 'socket-floor', case: `${rate} msg/s`, variant: mode, value, unit: 'µs/msg', runs: RUNS });
    }
    rows.push(cells);
  }
  process.stdout.write(`Server CPU per message, ${DEVICES} devices, medians of ${RUNS} runs of ${RUN_MS / 1000} s\n`);
  process.stdout.write(`${table(['offered msg/s', 'read µs/msg', 'read+write µs/msg'], rows)}\n`);
}

if (process.argv[2] === 'devices') devices(Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5]));
else void main();
