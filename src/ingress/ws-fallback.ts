// MQTT over WebSocket with the `ws` package on a node http (ws://) or https (wss://) server: where
// the native uWS binary does not load, and for wss:// with client certificates, which uWS 20.30
// can verify when a device shows one but cannot require, nor show to the daemon for its CN.

import * as http from 'node:http';
import * as https from 'node:https';
import type { TLSSocket } from 'node:tls';
import { WebSocketServer, type WebSocket as WsSocket } from 'ws';
import { tlsFiles } from '../config/index';
import { listenShard } from './listen';
import { peerCommonName, type DeviceTransport } from './transport';
import { chooseProtocol, heldLimit, HIGH_WATER, maxFrame, type WsHost, type WsListener, type WsOptions } from './ws-common';

class WsPackageTransport implements DeviceTransport {
  readonly canPause = true;

  constructor(private readonly ws: WsSocket, readonly kind: 'ws' | 'wss') {}

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

export async function listenWsPackage<C>(host: WsHost<C>, opts: WsOptions): Promise<WsListener> {
  const refuse = (_req: http.IncomingMessage, res: http.ServerResponse): void => {
    res.writeHead(426, { 'content-type': 'text/plain' }).end('MQTT over WebSocket only\n');
  };
  const t = opts.tls;
  const server = t === null ? http.createServer(refuse)
    : https.createServer({ ...tlsFiles(t), requestCert: t.tlsCa !== null, rejectUnauthorized: t.tlsRequireClientCert }, refuse);
  const limit = heldLimit(opts.maxPacketSize);
  const kind = t === null ? 'ws' : 'wss';
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: maxFrame(opts.maxPacketSize),
    handleProtocols: (protocols) => chooseProtocol([...protocols].join(',')) || false,
  });
  server.on('upgrade', (req, socket, head) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== opts.path || host.draining || !host.admit(req.socket.remoteAddress)) {
      socket.destroy();
      return;
    }
    // Verified against FANOUT_TLS_CA by the handshake (FANOUT_TLS_REQUIRE_CLIENT_CERT).
    const identity = t !== null && t.tlsIdentityAsUsername ? peerCommonName(socket as TLSSocket) : null;
    wss.handleUpgrade(req, socket, head, (ws) => {
      const conn = host.attach(new WsPackageTransport(ws, kind), identity);
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        if (!isBinary) {
          ws.terminate();
          return;
        }
        host.onData(conn, data);
        if (host.heldBytes(conn) > limit) host.overflow(conn);
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
    reload: () => {
      if (t !== null) (server as https.Server).setSecureContext(tlsFiles(t));
    },
  };
}
