// Worker thread playing a share of the downlink devices. Each connects,
// subscribes and waits for its SUBACK; from then on it only receives: every
// sequence number gets a bit per device (exact missing and duplicate counts)
// and the QoS 1 deliveries of one incoming chunk are acknowledged with one
// write, so 10,000 devices cost the harness little more than their reads.
import type * as net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { generate } from 'mqtt-packet';
import { encodeHistogram, newHistogram, recordMs } from './latency';
import { ackFrame, connectRaw, disconnect, PACKET, PAYLOAD_HEADER_BYTES, PINGREQ_FRAME, readVarint } from './mqtt-wire';
import { openPaced } from './pacing';
import type { DeviceStats, DeviceWorkerConfig, FromDeviceWorker, SubscribeStats, ToDeviceWorker } from './downlink';

const cfg = workerData as DeviceWorkerConfig;
const port = parentPort;
if (!port) throw new Error('downlink.worker must run as a worker thread');

const count = cfg.ids.length;
const perDevice = cfg.messages;
const v5 = cfg.protocol === 5;
const seen = new Uint8Array(Math.ceil((count * perDevice) / 8));
const distinctOf = new Uint32Array(count);
const sockets: (net.Socket | null)[] = new Array<net.Socket | null>(count).fill(null);
const lastTxAt = new Float64Array(count);
const subackWaiters: (((code: number) => void) | null)[] = new Array<((code: number) => void) | null>(count).fill(null);
const e2e = newHistogram();
const stats: Omit<DeviceStats, 'histogram' | 'incomplete' | 'firstMissing' | 'lastMissing'> = {
  devices: count,
  received: 0,
  distinct: 0,
  duplicates: 0,
  foreign: 0,
  qosMismatch: 0,
  firstReceiveAt: 0,
  lastReceiveAt: 0,
  dropped: 0,
  errors: [],
};
const subscribeFrame = generate(
  { cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: cfg.filter, qos: cfg.qos }], ...(v5 ? { properties: {} } : {}) },
  { protocolVersion: cfg.protocol },
);
// PUBACKs owed for the chunk being framed; a chunk belongs to one device and is framed whole before the next.
let ackScratch = Buffer.allocUnsafe(4096);
let ackLen = 0;
let closing = false;

function post(msg: FromDeviceWorker): void {
  port?.postMessage(msg);
}

function note(message: string): void {
  if (stats.errors.length < 10 && !stats.errors.includes(message)) stats.errors.push(message);
}

function onPublish(i: number, header: number, buf: Buffer, start: number, length: number): void {
  const qos = (header >> 1) & 3;
  const end = start + length;
  let p = start + 2 + buf.readUInt16BE(start);
  if (qos > 0) {
    if (ackLen + 4 > ackScratch.length) {
      const bigger = Buffer.allocUnsafe(ackScratch.length * 2);
      ackScratch.copy(bigger, 0, 0, ackLen);
      ackScratch = bigger;
    }
    ackLen = ackFrame(PACKET.PUBACK, buf.readUInt16BE(p), ackScratch, ackLen);
    p += 2;
  }
  if (v5) {
    const props = readVarint(buf, p);
    p = props.next + props.value;
  }
  if (qos !== cfg.qos) stats.qosMismatch++;
  if (end - p < PAYLOAD_HEADER_BYTES || buf.readUInt32BE(p) !== 0) {
    stats.foreign++;
    return;
  }
  const seq = buf.readUInt32BE(p + 4);
  if (seq >= perDevice) {
    stats.foreign++;
    return;
  }
  stats.received++;
  const bit = i * perDevice + seq;
  const byte = bit >>> 3;
  const mask = 1 << (bit & 7);
  if (seen[byte] & mask) {
    stats.duplicates++;
    return;
  }
  seen[byte] |= mask;
  distinctOf[i]++;
  stats.distinct++;
  const now = performance.timeOrigin + performance.now();
  if (stats.firstReceiveAt === 0) stats.firstReceiveAt = now;
  stats.lastReceiveAt = now;
  recordMs(e2e, now - buf.readDoubleBE(p + 8));
}

function onFrame(i: number, header: number, buf: Buffer, start: number, length: number): void {
  const type = header >> 4;
  if (type === PACKET.PUBLISH) onPublish(i, header, buf, start, length);
  else if (type === PACKET.SUBACK) {
    // 3.1.1: packet id, return codes; 5: packet id, properties, reason codes.
    let at = start + 2;
    if (v5) {
      const props = readVarint(buf, at);
      at = props.next + props.value;
    }
    subackWaiters[i]?.(at < start + length ? buf[at] : 0x80);
  }
}

function flushAcks(i: number): void {
  if (ackLen === 0) return;
  const socket = sockets[i];
  // The scratch is reused at once; the socket may hold on to what it is given.
  if (socket && !socket.destroyed) socket.write(Buffer.from(ackScratch.subarray(0, ackLen)));
  ackLen = 0;
  lastTxAt[i] = performance.now();
}

async function connectAndSubscribe(i: number, sub: SubscribeStats, hist: ReturnType<typeof newHistogram>): Promise<void> {
  const id = cfg.ids[i];
  const socket = await connectRaw(cfg.host, cfg.port, `${cfg.clientPrefix}${id}`, (h, b, s, l) => onFrame(i, h, b, s, l), {
    protocol: cfg.protocol,
    keepalive: cfg.keepalive,
    timeoutMs: cfg.timeoutMs,
  });
  sockets[i] = socket;
  // After connectRaw's own 'data' listener: runs once the chunk is framed.
  socket.on('data', () => flushAcks(i));
  socket.on('error', (err) => note(`device ${id}: ${err.message}`));
  socket.once('close', () => {
    if (closing) return;
    stats.dropped++;
    note(`device ${id}: connection closed by the target`);
    subackWaiters[i]?.(-1);
  });
  const t0 = performance.now();
  if (sub.firstAt === 0) sub.firstAt = performance.timeOrigin + t0;
  const code = await new Promise<number>((resolve) => {
    const timer = setTimeout(() => resolve(-2), cfg.timeoutMs);
    subackWaiters[i] = (c) => {
      clearTimeout(timer);
      subackWaiters[i] = null;
      resolve(c);
    };
    socket.write(subscribeFrame);
    lastTxAt[i] = t0;
  });
  if (code === -2) throw new Error(`device ${id}: no SUBACK within ${cfg.timeoutMs} ms`);
  if (code === -1) throw new Error(`device ${id}: closed before SUBACK`);
  if (code >= 0x80) throw new Error(`device ${id}: SUBACK refused ${cfg.filter} with code 0x${code.toString(16)}`);
  if (code < cfg.qos) note(`device ${id}: SUBACK granted QoS ${code} for QoS ${cfg.qos}`);
  const t1 = performance.now();
  recordMs(hist, t1 - t0);
  sub.lastAt = Math.max(sub.lastAt, performance.timeOrigin + t1);
}

async function subscribeAll(): Promise<SubscribeStats> {
  const hist = newHistogram();
  const sub: SubscribeStats = { ok: 0, failed: 0, firstAt: 0, lastAt: 0, histogram: '', errors: [] };
  await openPaced(
    0,
    count,
    async (i) => {
      try {
        await connectAndSubscribe(i, sub, hist);
        sub.ok++;
      } catch (err) {
        sub.failed++;
        if (sub.errors.length < 5) sub.errors.push((err as Error).message);
      }
    },
    { concurrency: cfg.concurrency, ratePerSec: cfg.ramp },
  );
  sub.histogram = encodeHistogram(hist);
  hist.destroy();
  return sub;
}

/** Devices lacking sequence numbers below `expected`, and the lowest and highest one missing. */
function missingOf(expected: number): Pick<DeviceStats, 'incomplete' | 'firstMissing' | 'lastMissing'> {
  let incomplete = 0;
  let firstMissing = -1;
  let lastMissing = -1;
  const upTo = Math.min(expected, perDevice);
  for (let i = 0; i < count; i++) {
    if (distinctOf[i] >= upTo) continue;
    incomplete++;
    for (let seq = 0; seq < upTo; seq++) {
      const bit = i * perDevice + seq;
      if (seen[bit >>> 3] & (1 << (bit & 7))) continue;
      if (firstMissing < 0 || seq < firstMissing) firstMissing = seq;
      if (seq > lastMissing) lastMissing = seq;
    }
  }
  return { incomplete, firstMissing, lastMissing };
}

const timers: NodeJS.Timeout[] = [];

function startTimers(): void {
  timers.push(setInterval(() => post({ type: 'progress', received: stats.received, distinct: stats.distinct }), 100));
  if (cfg.keepalive > 0) {
    // A device that acks keeps the connection alive by itself; one idle for 3/4 of the keep-alive pings.
    const idleMs = cfg.keepalive * 750;
    timers.push(
      setInterval(() => {
        const now = performance.now();
        for (let i = 0; i < count; i++) {
          const s = sockets[i];
          if (s === null || s.destroyed || now - lastTxAt[i] < idleMs) continue;
          lastTxAt[i] = now;
          s.write(PINGREQ_FRAME);
        }
      }, Math.max(100, cfg.keepalive * 250)),
    );
  }
}

port.on('message', (msg: ToDeviceWorker) => {
  if (msg.type !== 'close') return;
  closing = true;
  for (const t of timers) clearInterval(t);
  const final: DeviceStats = { ...stats, errors: stats.errors.slice(), ...missingOf(msg.expectedPerDevice), histogram: encodeHistogram(e2e) };
  void Promise.all(sockets.map((s) => disconnect(s))).then(() => {
    post({ type: 'closed', stats: final });
    port.close();
  });
});

subscribeAll().then(
  (sub) => {
    if (sub.failed > 0) {
      post({ type: 'fatal', message: `${sub.failed} of ${count} devices did not subscribe; first: ${sub.errors[0]}` });
      closing = true;
      for (const s of sockets) s?.destroy();
      port.close();
      return;
    }
    startTimers();
    post({ type: 'subscribed', stats: sub });
  },
  (err: Error) => {
    post({ type: 'fatal', message: err.message });
    port.close();
  },
);
