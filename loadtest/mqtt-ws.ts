// MQTT over WebSocket for the load generator: a link over the `ws` client that
// the devices use exactly like a net.Socket (write with a callback, 'drain',
// 'close', end, destroy), so one device class serves both transports, and
// connectLink, which opens either.
//
// Per-message cost is kept near TCP's: one binary frame per device write (the
// frames a device unblocked in one event-loop turn, as over TCP), no
// permessage-deflate, and an all-zero masking key, with which `ws` sends the
// payload as it is instead of copying it to XOR in a random key. The key is a
// defence for intermediaries that browsers must use; a server unmasks whatever
// the key, so the target's work is the same.
import { EventEmitter } from 'node:events';
import type * as net from 'node:net';
import WebSocket from 'ws';
import { ConnectError, connackGate, ConnectOptions, connectRaw, encodeConnect, FrameHandler, Framer, MqttSocket } from './mqtt-wire';

/** Plain TCP, MQTT over WebSocket, or MQTT over TLS. */
export type Transport = 'tcp' | 'ws' | 'tls';
export const TRANSPORTS: readonly Transport[] = ['tcp', 'ws', 'tls'];

/** Where devices connect: the target's TCP port, its WebSocket port and path, or its TLS port. */
export interface DeviceEndpoint {
  transport: Transport;
  host: string;
  port: number;
  /** URL path of the WebSocket listener; ignored otherwise. */
  path: string;
  /** tls: PEM CA the target's certificate is verified against. */
  ca?: string;
}

export function endpointLabel(e: DeviceEndpoint): string {
  return e.transport === 'ws' ? `ws://${e.host}:${e.port}${e.path}` : e.transport === 'tls' ? `tls://${e.host}:${e.port}` : `${e.host}:${e.port}`;
}

/** As net.Socket: write() says false once this much waits to be sent. */
const HIGH_WATER_BYTES = 16 * 1024;
const SEND_OPTIONS = { binary: true, compress: false, fin: true } as const;
const zeroMask = (): void => undefined;

/** A WebSocket carrying MQTT, shaped like the net.Socket calls the devices make. */
export class WsLink extends EventEmitter implements MqttSocket {
  private needDrain = false;

  constructor(private readonly ws: WebSocket) {
    super();
    ws.on('close', () => this.emit('close'));
    // Before the device listens (during the handshake) connectWs reports errors itself.
    ws.on('error', (err) => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    });
  }

  get destroyed(): boolean {
    return this.ws.readyState === WebSocket.CLOSED;
  }

  write(chunk: Uint8Array, cb?: (err?: Error | null) => void): boolean {
    this.ws.send(chunk, SEND_OPTIONS, (err) => {
      cb?.(err ?? null);
      // The socket flushed up to this frame: the same moment net.Socket's write callback marks.
      if (this.needDrain && this.ws.bufferedAmount < HIGH_WATER_BYTES) {
        this.needDrain = false;
        this.emit('drain');
      }
    });
    if (this.ws.bufferedAmount < HIGH_WATER_BYTES) return true;
    this.needDrain = true;
    return false;
  }

  end(chunk: Uint8Array): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(chunk, SEND_OPTIONS);
    this.ws.close(1000);
  }

  destroy(): void {
    this.ws.terminate();
  }
}

/**
 * Opens a WebSocket (subprotocol `mqtt`, binary frames) and completes the MQTT
 * CONNECT handshake over it; rejects with a ConnectError like connectRaw.
 */
export function connectWs(e: DeviceEndpoint, clientId: string, onFrame: FrameHandler, opts: ConnectOptions = {}): Promise<WsLink> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const url = endpointLabel(e);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, 'mqtt', { perMessageDeflate: false, skipUTF8Validation: true, generateMask: zeroMask, handshakeTimeout: timeoutMs });
    const link = new WsLink(ws);
    let settled = false;
    const fail = (err: ConnectError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.terminate();
      reject(err);
    };
    const timer = setTimeout(() => fail(new ConnectError(`CONNACK timeout from ${url} for ${clientId}`, 'timeout')), timeoutMs);
    const framer = new Framer(
      connackGate(
        opts.protocol ?? 4,
        (info) => {
          settled = true;
          clearTimeout(timer);
          framer.onFrame = onFrame;
          opts.onConnack?.(info);
          resolve(link);
        },
        fail,
      ),
    );
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      try {
        if (!isBinary) throw new Error('text frame from the server');
        framer.push(data);
      } catch (err) {
        if (link.listenerCount('error') > 0) link.emit('error', err as Error);
        ws.terminate();
      }
    });
    ws.once('unexpected-response', (_req, res) => fail(new ConnectError(`WebSocket upgrade to ${url} answered HTTP ${res.statusCode}`, 'refused')));
    ws.on('error', (err: NodeJS.ErrnoException) => fail(new ConnectError(err.message, err.code === 'ECONNREFUSED' ? 'refused' : 'error')));
    ws.once('close', () => fail(new ConnectError(`WebSocket to ${url} closed before CONNACK`, 'error')));
    ws.once('open', () => {
      if (ws.protocol !== 'mqtt') fail(new ConnectError(`WebSocket to ${url} agreed on subprotocol '${ws.protocol}', not 'mqtt'`, 'error'));
      else ws.send(encodeConnect(clientId, opts), SEND_OPTIONS);
    });
  });
}

/** A device connection over the endpoint's transport, once CONNACK accepted it. */
export function connectLink(e: DeviceEndpoint, clientId: string, onFrame: FrameHandler, opts: ConnectOptions = {}): Promise<MqttSocket> {
  if (e.transport === 'ws') return connectWs(e, clientId, onFrame, opts);
  if (e.transport === 'tls' && e.ca === undefined) return Promise.reject(new ConnectError(`no CA for the TLS endpoint ${endpointLabel(e)}`, 'error'));
  const socket: Promise<net.Socket> = connectRaw(e.host, e.port, clientId, onFrame, e.transport === 'tls' ? { ...opts, tlsCa: e.ca } : opts);
  return socket;
}
