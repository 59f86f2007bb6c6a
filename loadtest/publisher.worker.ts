// Worker thread that plays a share of the devices. Each device writes at most
// once per event-loop turn: every PUBACK that arrived in one poll phase is
// answered by a single write of the frames it unblocked, which keeps syscalls
// (and therefore our own CPU use) far below the target's.
import * as net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { encodeHistogram, newHistogram, recordMs } from './latency';
import { ackFrame, connectRaw, disconnect, PACKET, publishLayout, PublishLayout, topicFor } from './mqtt-wire';
import type { FromWorker, PublisherStats, PublisherWorkerConfig, ToWorker } from './publisher';

const cfg = workerData as PublisherWorkerConfig;
const port = parentPort;
if (!port) throw new Error('publisher.worker must run as a worker thread');
const hist = newHistogram();
// QoS 0 has no acks to pace it; this many frames per write keeps each device fair to the others.
const QOS0_BATCH = 64;
const queue: Device[] = [];
let flushScheduled = false;
let unfinished = 0;
let unexpectedAcks = 0;
const errors: string[] = [];

function post(msg: FromWorker): void {
  port?.postMessage(msg);
}

function schedule(d: Device): void {
  if (d.queued) return;
  d.queued = true;
  queue.push(d);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
}

function flush(): void {
  flushScheduled = false;
  const batch = queue.splice(0);
  for (const d of batch) {
    d.queued = false;
    d.pump();
  }
}

class Device {
  socket: net.Socket | null = null;
  queued = false;
  finished = false;
  sent = 0;
  acked = 0;
  firstSendAt = 0;
  lastAckAt = 0;
  lastWriteAt = 0;
  private inflight = 0;
  private blocked = false;
  private pendingWrites = 0;
  private slab: Buffer | null = null;
  private used = 0;
  private readonly free: Buffer[] = [];
  private readonly layout: PublishLayout;
  private readonly slabBytes: number;
  // Indexed by packet id: when it was sent (performance.now) and its state (1 = awaiting PUBACK/PUBREC, 2 = awaiting PUBCOMP).
  private readonly sendTimes = new Float64Array(65536);
  private readonly outstanding = new Uint8Array(65536);

  constructor(readonly id: number) {
    this.layout = publishLayout(topicFor(cfg.topicPattern, id), cfg.qos, cfg.payload, id);
    const frames = cfg.qos === 0 ? QOS0_BATCH : cfg.inflight;
    // Room for a turn's publishes plus the PUBRELs that QoS 2 interleaves with them.
    this.slabBytes = frames * (this.layout.template.length + 4) + 64;
  }

  async connect(): Promise<void> {
    const socket = await connectRaw(cfg.host, cfg.port, `${cfg.clientPrefix}${this.id}`, (h, b, s, l) => this.onFrame(h, b, s, l));
    this.socket = socket;
    socket.on('drain', () => {
      this.blocked = false;
      schedule(this);
    });
    socket.on('error', (err) => this.fail(`device ${this.id}: ${err.message}`));
    socket.on('close', () => this.fail(`device ${this.id}: connection closed by peer`));
  }

  pump(): void {
    if (this.finished || this.blocked || !this.socket) return;
    const now = performance.now();
    if (this.firstSendAt === 0) this.firstSendAt = performance.timeOrigin + now;
    if (cfg.qos === 0) {
      const n = Math.min(QOS0_BATCH, cfg.messages - this.sent);
      for (let i = 0; i < n; i++) this.appendPublish(now);
      this.writeSlab();
      if (this.sent < cfg.messages && !this.blocked) schedule(this);
    } else {
      while (this.inflight < cfg.inflight && this.sent < cfg.messages) this.appendPublish(now);
      this.writeSlab();
    }
  }

  private take(bytes: number): Buffer {
    if (this.slab !== null && this.used + bytes <= this.slab.length) return this.slab;
    this.writeSlab();
    const slab = this.free.pop() ?? Buffer.allocUnsafeSlow(Math.max(this.slabBytes, bytes));
    this.slab = slab;
    this.used = 0;
    return slab;
  }

  private appendPublish(now: number): void {
    const { template, pidOffset, payloadOffset } = this.layout;
    const slab = this.take(template.length);
    const o = this.used;
    template.copy(slab, o);
    const seq = this.sent++;
    if (pidOffset >= 0) {
      const pid = (seq % 65535) + 1;
      slab.writeUInt16BE(pid, o + pidOffset);
      this.sendTimes[pid] = now;
      this.outstanding[pid] = 1;
      this.inflight++;
    }
    slab.writeUInt32BE(seq, o + payloadOffset + 4);
    slab.writeDoubleBE(performance.timeOrigin + now, o + payloadOffset + 8);
    this.used += template.length;
  }

  private writeSlab(): void {
    const slab = this.slab;
    const socket = this.socket;
    if (slab === null || this.used === 0 || socket === null) return;
    const chunk = slab.subarray(0, this.used);
    this.slab = null;
    this.used = 0;
    this.pendingWrites++;
    // The slab is reused only after the write callback: until then libuv may still read from it.
    const ok = socket.write(chunk, (err) => {
      this.pendingWrites--;
      if (err) return;
      this.free.push(slab);
      this.lastWriteAt = performance.timeOrigin + performance.now();
      if (cfg.qos === 0 && this.sent === cfg.messages && this.pendingWrites === 0) this.finish();
    });
    if (!ok) this.blocked = true;
  }

  private onFrame(header: number, buf: Buffer, start: number, length: number): void {
    const type = header >> 4;
    if (length < 2 || (type !== PACKET.PUBACK && type !== PACKET.PUBREC && type !== PACKET.PUBCOMP)) return;
    const pid = buf.readUInt16BE(start);
    const state = this.outstanding[pid];
    if (type === PACKET.PUBREC && cfg.qos === 2 && state !== 0) {
      // A repeated PUBREC (state 2) just gets its PUBREL again.
      this.outstanding[pid] = 2;
      const slab = this.take(4);
      this.used = ackFrame(PACKET.PUBREL, pid, slab, this.used);
      schedule(this);
    } else if ((type === PACKET.PUBACK && cfg.qos === 1 && state === 1) || (type === PACKET.PUBCOMP && cfg.qos === 2 && state === 2)) {
      const now = performance.now();
      this.outstanding[pid] = 0;
      this.inflight--;
      this.acked++;
      recordMs(hist, now - this.sendTimes[pid]);
      this.lastAckAt = performance.timeOrigin + now;
      if (this.acked === cfg.messages) this.finish();
      else if (this.sent < cfg.messages) schedule(this);
    } else {
      unexpectedAcks++;
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (--unfinished === 0) post({ type: 'done' });
  }

  private fail(message: string): void {
    if (this.finished || closing) return;
    if (errors.length < 20) errors.push(message);
    this.finish();
  }
}

let closing = false;
const devices = cfg.ids.map((id) => new Device(id));
unfinished = devices.length;

async function connectAll(): Promise<void> {
  // Bounded concurrency: thousands of simultaneous SYNs would measure the accept backlog, not steady state.
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < devices.length) await devices[next++].connect();
  };
  await Promise.all(Array.from({ length: Math.min(64, devices.length) }, lane));
}

function stats(): PublisherStats {
  // reduce, not Math.min(...spread): a spread of 100k devices overflows the argument limit.
  const firstSendAt = devices.reduce((m, d) => (d.firstSendAt > 0 && (m === 0 || d.firstSendAt < m) ? d.firstSendAt : m), 0);
  return {
    devices: devices.length,
    sent: devices.reduce((n, d) => n + d.sent, 0),
    acked: devices.reduce((n, d) => n + d.acked, 0),
    finishedDevices: devices.filter((d) => d.finished).length,
    firstSendAt,
    lastAckAt: devices.reduce((m, d) => Math.max(m, d.lastAckAt), 0),
    lastWriteAt: devices.reduce((m, d) => Math.max(m, d.lastWriteAt), 0),
    unexpectedAcks,
    errors: errors.slice(),
    histogram: encodeHistogram(hist),
  };
}

async function closeAll(): Promise<void> {
  closing = true;
  await Promise.all(devices.map((d) => disconnect(d.socket)));
}

let progressTimer: NodeJS.Timeout | null = null;

port.on('message', (msg: ToWorker) => {
  if (msg.type === 'start') {
    progressTimer = setInterval(() => {
      post({ type: 'progress', sent: devices.reduce((n, d) => n + d.sent, 0), acked: devices.reduce((n, d) => n + d.acked, 0) });
    }, 250);
    for (const d of devices) schedule(d);
  } else if (msg.type === 'close') {
    if (progressTimer) clearInterval(progressTimer);
    const final = stats();
    void closeAll().then(() => {
      post({ type: 'closed', stats: final });
      port.close();
    });
  }
});

connectAll().then(
  () => post({ type: 'connected' }),
  (err: Error) => {
    post({ type: 'fatal', message: err.message });
    for (const d of devices) d.socket?.destroy();
    port.close();
  },
);
