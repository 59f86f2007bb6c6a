// MQTT over WebSocket for one shard [MQTT-6.0]: uWebSockets.js runs one App per shard thread,
// all on the same port (uSockets binds with SO_REUSEPORT), and hands each binary frame to the
// same device-connection code as TCP. Where the native uWS binary does not load (another Node
// version or platform) the package silently swaps in a JavaScript shim exporting only App; that
// is detected (no SSLApp) and the `ws` package serves instead, with a warning in the log.

import * as http from 'node:http';
import type { Logger } from 'pino';
import type * as UWS from 'uWebSockets.js';
import { WebSocketServer, type WebSocket as WsSocket } from 'ws';
import type { DeviceTransport } from './transport';
import { listenShard, type ListenPlan } from './listen';

/** What the WebSocket ingress needs from its shard. */
export interface WsHost<C> {
  readonly draining: boolean;
  attach(transport: DeviceTransport): C;
  onData(conn: C, chunk: Buffer): void;
  onClose(conn: C): void;
  /** Bytes held for a device that is paused (backpressure). */
  heldBytes(conn: C): number;
  /** Ends a device that keeps sending while paused: uWS cannot stop reading a WebSocket. */
  overflow(conn: C): void;
}

export interface WsOptions {
  host: string;
  port: number;
  path: string;
  maxPacketSize: number;
  /** 'reuseport' plan for the `ws` fallback (null: only shard 0 serves WebSocket then). */
  fallbackPlan: ListenPlan | null;
  log: Logger;
}

export interface WsListener {
  readonly port: number;
  readonly implementation: 'uWebSockets.js' | 'ws';
  /** Stops accepting; open connections stay until closeAll(). */
  stopListening(): void;
  /** Closes every connection now (a worker must not exit with live uWS sockets). */
  closeAll(): void;
  readonly open: number;
}

/** What a paused device may have in flight before it is cut off (uWS cannot pause reading). */
const HELD_LIMIT_MIN = 1024 * 1024;
/** uWS drops a send beyond this much backpressure; the connection watches its own well below. */
const MAX_BACKPRESSURE = 64 * 1024 * 1024;
/** Written bytes above this count as backed up (write() returns false). */
const HIGH_WATER = 1024 * 1024;

type Uws = typeof UWS;
let uws: Uws | null | undefined;

/** The native uWebSockets.js, or null where only its JavaScript shim (or nothing) loads. */
export function loadUws(): Uws | null {
  if (uws === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const m = require('uWebSockets.js') as Uws;
      uws = typeof m.SSLApp === 'function' ? m : null;
    } catch {
      uws = null;
    }
  }
  return uws;
}

/** Picks the subprotocol to echo: "mqtt" [MQTT-6.0.0-4], or the MQTT 3.1 era "mqttv3.1". */
export function chooseProtocol(offered: string): string {
  const list = offered.split(',').map((p) => p.trim());
  if (list.includes('mqtt')) return 'mqtt';
  if (list.includes('mqttv3.1')) return 'mqttv3.1';
  return '';
}

class UwsTransport implements DeviceTransport {
  readonly kind = 'ws';
  readonly canPause = false;
  destroyed = false;
  private drainCb: (() => void) | null = null;

  constructor(private readonly ws: UWS.WebSocket<unknown>) {}

  write(chunk: Buffer): boolean {
    if (this.destroyed) return true;
    const status = this.ws.send(chunk, true);
    if (status === 2) {
      // Dropped by uWS: never let that pass silently; the device resends what was unacknowledged.
      this.destroy();
      return true;
    }
    return this.ws.getBufferedAmount() < HIGH_WATER;
  }

  pause(): void { /* uWS 20.30 cannot pause a WebSocket: see WsHost.overflow */ }
  resume(): void { /* see pause() */ }

  end(): void {
    if (!this.destroyed) this.ws.end(1000);
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.ws.close();
  }

  onceDrain(cb: () => void): void {
    this.drainCb = cb;
  }

  drained(): void {
    if (this.destroyed || this.ws.getBufferedAmount() >= HIGH_WATER) return;
    const cb = this.drainCb;
    this.drainCb = null;
    cb?.();
  }
}

class WsPackageTransport implements DeviceTransport {
  readonly kind = 'ws';
  readonly canPause = true;

  constructor(private readonly ws: WsSocket) {}

  get destroyed(): boolean {
    return this.ws.readyState !== this.ws.OPEN;
  }

  write(chunk: Buffer): boolean {
    if (this.destroyed) return true;
    this.ws.send(chunk, { binary: true });
    return this.ws.bufferedAmount < HIGH_WATER;
  }

  pause(): void {
    this.ws.pause();
  }

  resume(): void {
    this.ws.resume();
  }

  end(): void {
    this.ws.close(1000);
  }

  destroy(): void {
    this.ws.terminate();
  }

  onceDrain(cb: () => void): void {
    const check = (): void => {
      if (this.destroyed || this.ws.bufferedAmount < HIGH_WATER) cb();
      else setTimeout(check, 10);
    };
    setTimeout(check, 10);
  }
}

export function listenWebSocket<C>(host: WsHost<C>, opts: WsOptions): Promise<WsListener> {
  const u = loadUws();
  return u !== null ? listenUws(u, host, opts) : listenWsPackage(host, opts);
}

function listenUws<C>(u: Uws, host: WsHost<C>, opts: WsOptions): Promise<WsListener> {
  interface Data { conn: C | null; transport: UwsTransport | null }
  const open = new Set<UWS.WebSocket<Data>>();
  const heldLimit = Math.max(HELD_LIMIT_MIN, opts.maxPacketSize * 2);
  // close() exists at run time but is missing from this build's typings.
  const app = u.App() as UWS.TemplatedApp & { close(): void };
  app.ws<Data>(opts.path, {
    // One frame may carry several packets: allow a little more than one packet.
    maxPayloadLength: Math.min(0x7fffffff, opts.maxPacketSize * 2 + 16),
    maxBackpressure: MAX_BACKPRESSURE,
    closeOnBackpressureLimit: 0,
    // MQTT keep-alive does this job, per device, at the interval it asked for.
    idleTimeout: 0,
    sendPingsAutomatically: false,
    upgrade: (res, req, context) => {
      if (host.draining) {
        res.writeStatus('503 Service Unavailable').end();
        return;
      }
      const data: Data = { conn: null, transport: null };
      res.upgrade(data, req.getHeader('sec-websocket-key'), chooseProtocol(req.getHeader('sec-websocket-protocol')),
        req.getHeader('sec-websocket-extensions'), context);
    },
    open: (ws) => {
      open.add(ws);
      const data = ws.getUserData();
      data.transport = new UwsTransport(ws as UWS.WebSocket<unknown>);
      data.conn = host.attach(data.transport);
    },
    message: (ws, message, isBinary) => {
      const data = ws.getUserData();
      if (data.conn === null) return;
      if (!isBinary) {
        // MQTT travels in binary frames only [MQTT-6.0.0-1].
        data.transport!.destroy();
        return;
      }
      // The ArrayBuffer is only valid during this callback: copy it.
      host.onData(data.conn, Buffer.from(new Uint8Array(message)));
      if (host.heldBytes(data.conn) > heldLimit) host.overflow(data.conn);
    },
    drain: (ws) => ws.getUserData().transport?.drained(),
    close: (ws) => {
      open.delete(ws);
      const data = ws.getUserData();
      if (data.transport) data.transport.destroyed = true;
      if (data.conn !== null) host.onClose(data.conn);
    },
  });
  return new Promise((resolve, reject) => {
    app.listen(opts.host, opts.port, (token) => {
      if (!token) {
        app.close();
        reject(new Error(`cannot listen for WebSocket on ${opts.host}:${opts.port}`));
        return;
      }
      let listening: UWS.us_listen_socket | null = token;
      resolve({
        port: u.us_socket_local_port(token),
        implementation: 'uWebSockets.js',
        get open() { return open.size; },
        stopListening: () => {
          if (listening !== null) u.us_listen_socket_close(listening);
          listening = null;
        },
        closeAll: () => {
          if (listening !== null) u.us_listen_socket_close(listening);
          listening = null;
          for (const ws of [...open]) ws.close();
          app.close();
        },
      });
    });
  });
}

async function listenWsPackage<C>(host: WsHost<C>, opts: WsOptions): Promise<WsListener> {
  const server = http.createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' }).end('MQTT over WebSocket only\n');
  });
  const heldLimit = Math.max(HELD_LIMIT_MIN, opts.maxPacketSize * 2);
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: opts.maxPacketSize * 2 + 16,
    handleProtocols: (protocols) => chooseProtocol([...protocols].join(',')) || false,
  });
  server.on('upgrade', (req, socket, head) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== opts.path || host.draining) {
      socket.destroy();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const conn = host.attach(new WsPackageTransport(ws));
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        if (!isBinary) {
          ws.terminate();
          return;
        }
        host.onData(conn, data);
        if (host.heldBytes(conn) > heldLimit) host.overflow(conn);
      });
      ws.on('error', () => { /* 'close' follows */ });
      ws.on('close', () => host.onClose(conn));
    });
  });
  const port = opts.fallbackPlan !== null
    ? await listenShard(server, opts.fallbackPlan)
    : await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: opts.host, port: opts.port }, () => resolve((server.address() as { port: number }).port));
    });
  return {
    port,
    implementation: 'ws',
    get open() { return wss.clients.size; },
    stopListening: () => server.close(),
    closeAll: () => {
      server.close();
      for (const ws of wss.clients) ws.terminate();
    },
  };
}
