// MQTT over WebSocket with uWebSockets.js: one App (SSLApp for wss://) per shard thread, all on
// the same port (uSockets binds with SO_REUSEPORT when given a port), each binary frame handed
// to the same device-connection code as TCP.
//
// uWS 20.30 loads its certificate files once, when the SSLApp is built. A SIGHUP therefore
// builds a new SSLApp with the files as they are now, binds it to the same port beside the old
// one, then closes the old listening socket: new connections get the new certificate, open
// ones stay on the old App, which is closed when its last connection ends.

import * as tls from 'node:tls';
import type * as UWS from 'uWebSockets.js';
import { tlsFiles } from '../config/index';
import type { DeviceTransport } from './transport';
import { chooseProtocol, heldLimit, HIGH_WATER, maxFrame, type WsHost, type WsListener, type WsOptions } from './ws-common';

/** uWS drops a send beyond this much backpressure; the connection watches its own well below. */
const MAX_BACKPRESSURE = 64 * 1024 * 1024;

export type Uws = typeof UWS;
let uws: Uws | null | undefined;

/** The native uWebSockets.js, or null where only its JavaScript shim (or nothing) loads: the
 *  package silently swaps in a shim exporting App alone, so SSLApp tells the two apart. */
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

class UwsTransport implements DeviceTransport {
  readonly canPause = false;
  destroyed = false;
  private drainCb: (() => void) | null = null;

  constructor(private readonly ws: UWS.WebSocket<unknown>, readonly kind: 'ws' | 'wss') {}

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

// close() exists at run time but is missing from this build's typings.
type App = UWS.TemplatedApp & { close(): void };

/** One App and its listening socket; `open` counts its connections. */
interface Slot {
  app: App;
  token: UWS.us_listen_socket | null;
  open: number;
}

export function listenUws<C>(u: Uws, host: WsHost<C>, opts: WsOptions): Promise<WsListener> {
  interface Data { conn: C | null; transport: UwsTransport | null; slot: Slot }
  const kind = opts.tls === null ? 'ws' : 'wss';
  const open = new Set<UWS.WebSocket<Data>>();
  const limit = heldLimit(opts.maxPacketSize);
  const slots = new Set<Slot>();
  let current: Slot | null = null;
  let port = opts.port;

  const retire = (slot: Slot): void => {
    if (slot.token !== null) u.us_listen_socket_close(slot.token);
    slot.token = null;
    if (slot !== current && slot.open === 0 && slots.delete(slot)) slot.app.close();
  };

  /** A new App bound to host:port (the files are read now); null when it cannot listen. */
  const bind = (): Slot | null => {
    const app = (opts.tls === null ? u.App()
      : u.SSLApp({ cert_file_name: opts.tls.tlsCert!, key_file_name: opts.tls.tlsKey! })) as App;
    const slot: Slot = { app, token: null, open: 0 };
    app.ws<Data>(opts.path, {
      maxPayloadLength: maxFrame(opts.maxPacketSize),
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
        if (!host.admit(Buffer.from(res.getRemoteAddressAsText()).toString())) {
          res.close();
          return;
        }
        const data: Data = { conn: null, transport: null, slot };
        res.upgrade(data, req.getHeader('sec-websocket-key'), chooseProtocol(req.getHeader('sec-websocket-protocol')),
          req.getHeader('sec-websocket-extensions'), context);
      },
      open: (ws) => {
        open.add(ws);
        const data = ws.getUserData();
        data.slot.open++;
        data.transport = new UwsTransport(ws as UWS.WebSocket<unknown>, kind);
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
        if (host.heldBytes(data.conn) > limit) host.overflow(data.conn);
      },
      drain: (ws) => ws.getUserData().transport?.drained(),
      close: (ws) => {
        open.delete(ws);
        const data = ws.getUserData();
        if (data.transport) data.transport.destroyed = true;
        if (data.conn !== null) host.onClose(data.conn);
        // An App replaced by a reload goes once its last device has: not from inside its own
        // callback.
        if (--data.slot.open === 0 && data.slot.token === null && data.slot !== current) setImmediate(() => retire(data.slot));
      },
    });
    // uWS calls back before listen() returns.
    let token: UWS.us_listen_socket | false = false;
    app.listen(opts.host, port, (t) => { token = t; });
    if (!token) {
      app.close();
      return null;
    }
    slot.token = token;
    port = u.us_socket_local_port(token);
    slots.add(slot);
    return slot;
  };

  current = bind();
  if (current === null) return Promise.reject(new Error(`cannot listen for WebSocket on ${opts.host}:${opts.port}`));
  return Promise.resolve({
    port,
    implementation: 'uWebSockets.js',
    get open() { return open.size; },
    stopListening: () => {
      for (const slot of slots) {
        if (slot.token !== null) u.us_listen_socket_close(slot.token);
        slot.token = null;
      }
    },
    closeAll: () => {
      current = null;
      for (const slot of slots) {
        if (slot.token !== null) u.us_listen_socket_close(slot.token);
        slot.token = null;
      }
      for (const ws of [...open]) ws.close();
      for (const slot of slots) slot.app.close();
      slots.clear();
    },
    reload: () => {
      if (opts.tls === null || current === null || current.token === null) return;
      // uWS only says "App construction failed": node's TLS says what is wrong with the files.
      tls.createSecureContext(tlsFiles(opts.tls));
      const previous = current;
      const next = bind();
      if (next === null) throw new Error(`cannot listen again on ${opts.host}:${port}`);
      // The new App listens before the old one stops: the port is never without a listener.
      current = next;
      retire(previous);
    },
  });
}
