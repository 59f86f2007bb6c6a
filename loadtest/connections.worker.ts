// Worker thread holding a share of connect-storm / idle connections. After
// CONNACK a connection sends nothing but PINGREQ every keep-alive period.
import type * as net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { deviceCredentials } from './auth-files';
import { encodeHistogram, newHistogram, recordMs } from './latency';
import { ConnectError, connectRaw, disconnect, PACKET, PINGREQ_FRAME } from './mqtt-wire';
import { openPaced } from './pacing';
import type { ConnWorkerConfig, FromConnWorker, HoldStats, StepStats, ToConnWorker } from './connections';

const cfg = workerData as ConnWorkerConfig;
const port = parentPort;
if (!port) throw new Error('connections.worker must run as a worker thread');

interface Conn {
  socket: net.Socket;
  lastTxAt: number;
}

const conns: Conn[] = [];
let next = 0;
let closing = false;
const hold: HoldStats = { open: 0, pingsSent: 0, pongs: 0, dropped: 0, errorSamples: [] };

function post(msg: FromConnWorker): void {
  port?.postMessage(msg);
}

async function openStep(count: number): Promise<StepStats> {
  const hist = newHistogram();
  const step: StepStats = { attempted: 0, ok: 0, refused: 0, timeouts: 0, errors: 0, firstStartAt: 0, lastDoneAt: 0, histogram: '', errorSamples: [] };
  const from = next;
  const to = Math.min(cfg.ids.length, next + count);
  next = to;
  await openPaced(
    from,
    to,
    async (i) => {
      const t0 = performance.now();
      if (step.firstStartAt === 0) step.firstStartAt = performance.timeOrigin + t0;
      step.attempted++;
      try {
        const socket = await connectRaw(cfg.host, cfg.port, `${cfg.clientPrefix}${cfg.ids[i]}`, onFrame, {
          protocol: cfg.protocol,
          keepalive: cfg.keepalive,
          timeoutMs: cfg.timeoutMs,
          ...(cfg.auth ? deviceCredentials(cfg.ids[i]) : {}),
        });
        const t1 = performance.now();
        recordMs(hist, t1 - t0);
        step.ok++;
        const conn: Conn = { socket, lastTxAt: t1 };
        conns.push(conn);
        socket.on('error', (err) => note(hold.errorSamples, err.message));
        socket.once('close', () => {
          if (!closing) hold.dropped++;
        });
      } catch (err) {
        const kind = err instanceof ConnectError ? err.kind : 'error';
        if (kind === 'refused') step.refused++;
        else if (kind === 'timeout') step.timeouts++;
        else step.errors++;
        note(step.errorSamples, (err as Error).message);
      }
      step.lastDoneAt = performance.timeOrigin + performance.now();
    },
    { concurrency: cfg.concurrency, ratePerSec: cfg.ramp },
  );
  step.histogram = encodeHistogram(hist);
  hist.destroy();
  return step;
}

function note(samples: string[], message: string): void {
  if (samples.length < 5 && !samples.includes(message)) samples.push(message);
}

function onFrame(header: number): void {
  if (header >> 4 === PACKET.PINGRESP) hold.pongs++;
}

let pingTimer: NodeJS.Timeout | null = null;
if (cfg.keepalive > 0) {
  const periodMs = cfg.keepalive * 1000;
  // Each connection pings one keep-alive period after its last write: spread as their connects were.
  pingTimer = setInterval(() => {
    const now = performance.now();
    for (const c of conns) {
      if (now - c.lastTxAt >= periodMs && !c.socket.destroyed) {
        c.lastTxAt = now;
        c.socket.write(PINGREQ_FRAME);
        hold.pingsSent++;
      }
    }
  }, Math.min(250, periodMs / 4));
}

port.on('message', (msg: ToConnWorker) => {
  if (msg.type === 'open') {
    openStep(msg.count).then(
      (step) => {
        // Ping figures describe the hold after the last step, not the connecting.
        hold.pingsSent = 0;
        hold.pongs = 0;
        post({ type: 'opened', step });
      },
      (err: Error) => post({ type: 'fatal', message: err.message }),
    );
  } else if (msg.type === 'close') {
    closing = true;
    if (pingTimer) clearInterval(pingTimer);
    hold.open = conns.filter((c) => !c.socket.destroyed).length;
    void Promise.all(conns.map((c) => disconnect(c.socket))).then(() => {
      post({ type: 'closed', hold });
      port.close();
    });
  }
});

post({ type: 'ready' });
