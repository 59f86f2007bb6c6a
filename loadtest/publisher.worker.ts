// Worker thread that plays a share of the devices. Each device writes at most
// once per event-loop turn: every PUBACK that arrived in one poll phase is
// answered by a single write of the frames it unblocked, which keeps syscalls
// (and therefore our own CPU use) far below the target's. Over WebSocket
// (--transport ws) that write is one binary frame (mqtt-ws.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { encodeHistogram, Histogram, newHistogram, recordMs } from './latency';
import { ackFrame, ackRefused, disconnect, MqttSocket, PACKET, PINGREQ_FRAME, publishLayout, PublishLayout, Qos, topicFor } from './mqtt-wire';
import { deviceCredentials } from './auth-files';
import { connectLink } from './mqtt-ws';
import { openPaced } from './pacing';
import type { FromWorker, PublisherStats, PublisherWorkerConfig, QosStats, ToWorker } from './publisher';

const cfg = workerData as PublisherWorkerConfig;
const port = parentPort;
if (!port) throw new Error('publisher.worker must run as a worker thread');
// QoS 0 has no acks to pace it; this many frames per write keeps each device fair to the others.
const QOS0_BATCH = 64;
// Paced devices (and duration limits) are checked this often.
const TICK_MS = 10;
const paced = cfg.ratePerDevice > 0;
const queue: Device[] = [];
let flushScheduled = false;
let unfinished = 0;
let unexpectedAcks = 0;
let startedAt = 0;
const errors: string[] = [];
const hists: Histogram[] = [newHistogram(), newHistogram(), newHistogram()];

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

function qosOf(id: number): Qos {
  return cfg.qos === 'mixed' ? ((id % 3) as Qos) : cfg.qos;
}

class Device {
  socket: MqttSocket | null = null;
  queued = false;
  finished = false;
  readonly qos: Qos;
  /** Messages this device sends in all; lowered to `sent` when the duration is over. */
  limit = cfg.messages;
  sent = 0;
  acked = 0;
  /** MQTT 5 acks with a failure reason code. */
  refused = 0;
  firstSendAt = 0;
  lastAckAt = 0;
  lastWriteAt = 0;
  /** performance.now() of the last write of any kind, for keep-alive. */
  lastTxAt = 0;
  private window = cfg.inflight;
  private inflight = 0;
  private blocked = false;
  private pendingWrites = 0;
  private slab: Buffer | null = null;
  private used = 0;
  private readonly free: Buffer[] = [];
  private readonly layout: PublishLayout;
  private readonly slabBytes: number;
  /** Spreads paced devices over the send interval instead of all firing on the same tick. */
  private readonly phase: number;
  // Indexed by packet id: when it was sent (performance.now) and its state (1 = awaiting PUBACK/PUBREC, 2 = awaiting PUBCOMP).
  private readonly sendTimes: Float64Array;
  private readonly outstanding: Uint8Array;

  constructor(readonly id: number) {
    this.qos = qosOf(id);
    this.layout = publishLayout(topicFor(cfg.topicPattern, id), this.qos, cfg.payload, id, cfg.protocol);
    const frames = this.qos === 0 ? QOS0_BATCH : cfg.inflight;
    // Room for a turn's publishes plus the PUBRELs that QoS 2 interleaves with them.
    this.slabBytes = frames * (this.layout.template.length + 4) + 64;
    this.phase = (id * 0.6180339887) % 1;
    this.sendTimes = new Float64Array(this.qos > 0 ? 65536 : 0);
    this.outstanding = new Uint8Array(this.qos > 0 ? 65536 : 0);
  }

  async connect(): Promise<void> {
    const socket = await connectLink(cfg.endpoint, `${cfg.clientPrefix}${this.id}`, (h, b, s, l) => this.onFrame(h, b, s, l), {
      protocol: cfg.protocol,
      keepalive: cfg.keepalive,
      ...(cfg.auth ? deviceCredentials(this.id) : {}),
      // A target that allows fewer unacknowledged publishes than asked for would disconnect us for exceeding it.
      onConnack: (info) => (this.window = Math.min(cfg.inflight, info.receiveMaximum)),
    });
    this.socket = socket;
    this.lastTxAt = performance.now();
    socket.on('drain', () => {
      this.blocked = false;
      schedule(this);
    });
    socket.on('error', (err) => this.fail(`device ${this.id}: ${err.message}`));
    socket.on('close', () => this.fail(`device ${this.id}: connection closed by peer`));
  }

  /** Messages the schedule allows by `now` (performance.now()). */
  private allowed(now: number): number {
    if (!paced) return this.limit;
    return Math.min(this.limit, Math.floor(((now - startedAt) * cfg.ratePerDevice) / 1000 + this.phase));
  }

  get due(): boolean {
    return !this.finished && this.sent < this.allowed(performance.now());
  }

  pump(): void {
    if (this.finished || this.blocked || !this.socket) return;
    const now = performance.now();
    if (cfg.durationMs > 0 && now - startedAt >= cfg.durationMs && this.limit > this.sent) this.stop();
    const allowed = this.allowed(now);
    if (this.sent < allowed && this.firstSendAt === 0) this.firstSendAt = performance.timeOrigin + now;
    if (this.qos === 0) {
      const n = Math.min(QOS0_BATCH, allowed - this.sent);
      for (let i = 0; i < n; i++) this.appendPublish(now);
      this.writeSlab();
      if (this.sent < allowed && !this.blocked) schedule(this);
    } else {
      while (this.inflight < this.window && this.sent < allowed) this.appendPublish(now);
      this.writeSlab();
    }
  }

  /** The duration is over: send nothing more, finish once what was sent is settled. */
  stop(): void {
    this.limit = this.sent;
    this.checkFinished();
  }

  private checkFinished(): void {
    if (this.sent < this.limit) return;
    if (this.qos === 0 ? this.pendingWrites === 0 : this.acked + this.refused === this.limit) this.finish();
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
    this.lastTxAt = performance.now();
    // The slab is reused only after the write callback: until then libuv may still read from it.
    const ok = socket.write(chunk, (err) => {
      this.pendingWrites--;
      if (err) return;
      this.free.push(slab);
      this.lastWriteAt = performance.timeOrigin + performance.now();
      if (this.qos === 0) this.checkFinished();
    });
    if (!ok) this.blocked = true;
  }

  /** Keep-alive: a PINGREQ when nothing else was written for `idleMs`. */
  ping(now: number, idleMs: number): void {
    if (this.socket === null || this.socket.destroyed || now - this.lastTxAt < idleMs) return;
    this.lastTxAt = now;
    this.socket.write(PINGREQ_FRAME);
  }

  private onFrame(header: number, buf: Buffer, start: number, length: number): void {
    const type = header >> 4;
    if (length < 2 || (type !== PACKET.PUBACK && type !== PACKET.PUBREC && type !== PACKET.PUBCOMP)) return;
    const pid = buf.readUInt16BE(start);
    const state = this.qos > 0 ? this.outstanding[pid] : 0;
    const refused = ackRefused(buf, start, length);
    if (type === PACKET.PUBREC && this.qos === 2 && state !== 0 && !refused) {
      // A repeated PUBREC (state 2) just gets its PUBREL again.
      this.outstanding[pid] = 2;
      const slab = this.take(4);
      this.used = ackFrame(PACKET.PUBREL, pid, slab, this.used);
      schedule(this);
    } else if (
      (type === PACKET.PUBACK && this.qos === 1 && state === 1) ||
      (type === PACKET.PUBCOMP && this.qos === 2 && state === 2) ||
      (type === PACKET.PUBREC && this.qos === 2 && state === 1 && refused)
    ) {
      const now = performance.now();
      this.outstanding[pid] = 0;
      this.inflight--;
      if (refused) this.refused++;
      else {
        this.acked++;
        recordMs(hists[this.qos], now - this.sendTimes[pid]);
        this.lastAckAt = performance.timeOrigin + now;
      }
      this.checkFinished();
      if (!this.finished && this.sent < this.limit) schedule(this);
    } else {
      unexpectedAcks++;
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (--unfinished === 0) post({ type: 'done', sent: devices.reduce((n, d) => n + d.sent, 0) });
  }

  fail(message: string): void {
    if (this.finished || closing) return;
    if (errors.length < 20) errors.push(message);
    this.limit = this.sent;
    this.finish();
  }
}

let closing = false;
const devices = cfg.ids.map((id) => new Device(id));
unfinished = devices.length;

function qosStats(qos: Qos): QosStats | null {
  const mine = devices.filter((d) => d.qos === qos);
  if (mine.length === 0) return null;
  return {
    qos,
    devices: mine.length,
    sent: mine.reduce((n, d) => n + d.sent, 0),
    acked: mine.reduce((n, d) => n + d.acked, 0),
    refused: mine.reduce((n, d) => n + d.refused, 0),
    firstSendAt: mine.reduce((m, d) => (d.firstSendAt > 0 && (m === 0 || d.firstSendAt < m) ? d.firstSendAt : m), 0),
    lastAckAt: mine.reduce((m, d) => Math.max(m, d.lastAckAt), 0),
    lastWriteAt: mine.reduce((m, d) => Math.max(m, d.lastWriteAt), 0),
    histogram: encodeHistogram(hists[qos]),
  };
}

function stats(): PublisherStats {
  const byQos = ([0, 1, 2] as const).flatMap((q) => qosStats(q) ?? []);
  // reduce, not Math.min(...spread): a spread of 100k devices overflows the argument limit.
  return {
    devices: devices.length,
    sent: byQos.reduce((n, s) => n + s.sent, 0),
    acked: byQos.reduce((n, s) => n + s.acked, 0),
    refused: byQos.reduce((n, s) => n + s.refused, 0),
    finishedDevices: devices.filter((d) => d.finished).length,
    firstSendAt: byQos.reduce((m, s) => (s.firstSendAt > 0 && (m === 0 || s.firstSendAt < m) ? s.firstSendAt : m), 0),
    lastAckAt: byQos.reduce((m, s) => Math.max(m, s.lastAckAt), 0),
    lastWriteAt: byQos.reduce((m, s) => Math.max(m, s.lastWriteAt), 0),
    unexpectedAcks,
    errors: errors.slice(),
    byQos,
  };
}

async function closeAll(): Promise<void> {
  closing = true;
  await Promise.all(devices.map((d) => disconnect(d.socket)));
}

const timers: NodeJS.Timeout[] = [];

function startTimers(): void {
  timers.push(
    setInterval(() => {
      post({ type: 'progress', sent: devices.reduce((n, d) => n + d.sent, 0), acked: devices.reduce((n, d) => n + d.acked, 0) });
    }, 250),
  );
  if (paced || cfg.durationMs > 0) {
    timers.push(
      setInterval(() => {
        const over = cfg.durationMs > 0 && performance.now() - startedAt >= cfg.durationMs;
        for (const d of devices) if (!d.finished && (over || d.due)) schedule(d);
      }, TICK_MS),
    );
  }
  if (cfg.keepalive > 0) {
    // A busy device never pings; one idle for 3/4 of the keep-alive does, well inside the server's 1.5x grace.
    const idleMs = cfg.keepalive * 750;
    timers.push(
      setInterval(() => {
        const now = performance.now();
        for (const d of devices) d.ping(now, idleMs);
      }, Math.max(100, cfg.keepalive * 250)),
    );
  }
}

port.on('message', (msg: ToWorker) => {
  if (msg.type === 'start') {
    startedAt = performance.now();
    startTimers();
    for (const d of devices) schedule(d);
  } else if (msg.type === 'close') {
    for (const t of timers) clearInterval(t);
    const final = stats();
    void closeAll().then(() => {
      post({ type: 'closed', stats: final });
      port.close();
    });
  }
});

openPaced(0, devices.length, (i) => devices[i].connect(), { concurrency: cfg.concurrency, ratePerSec: cfg.ramp }).then(
  () => post({ type: 'connected' }),
  (err: Error) => {
    post({ type: 'fatal', message: err.message });
    for (const d of devices) d.socket?.destroy();
    port.close();
  },
);
