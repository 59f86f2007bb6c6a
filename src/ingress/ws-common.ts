// What the two WebSocket implementations (uWebSockets.js, and the `ws` package where uWS cannot
// serve) share: the shard they feed, their options and the listener they return.

import type { DeviceTls } from '../config/index';
import type { DeviceTransport } from './transport';
import type { ListenPlan } from './listen';

/** What the WebSocket ingress needs from its shard. */
export interface WsHost<C> {
  readonly draining: boolean;
  /** Whether a new socket from `address` may stay (FANOUT_MAX_CONNECTIONS, _CONNECT_RATE). */
  admit(address: string | undefined): boolean;
  /** `tlsIdentity`: the verified certificate's CN, which then stands for the user name. */
  attach(transport: DeviceTransport, tlsIdentity?: string | null): C;
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
  /** wss:// with the FANOUT_TLS_* files and settings; null for ws://. */
  tls: DeviceTls | null;
}

export type WsImplementation = 'uWebSockets.js' | 'ws';

export interface WsListener {
  readonly port: number;
  readonly implementation: WsImplementation;
  /** Stops accepting; open connections stay until closeAll(). */
  stopListening(): void;
  /** Closes every connection now (a worker must not exit with live uWS sockets). */
  closeAll(): void;
  /** wss://: connections made from now on get the certificate files as they are now; open ones
   *  keep theirs. Throws (the previous certificate stays) when the files are not usable. */
  reload(): void;
  readonly open: number;
}

/** What a paused device may have in flight before it is cut off (uWS cannot pause reading). */
export function heldLimit(maxPacketSize: number): number {
  return Math.max(1024 * 1024, maxPacketSize * 2);
}

/** One frame may carry several packets: allow a little more than one packet. */
export function maxFrame(maxPacketSize: number): number {
  return Math.min(0x7fffffff, maxPacketSize * 2 + 16);
}

/** Written bytes above this count as backed up (write() returns false). */
export const HIGH_WATER = 1024 * 1024;

/** Picks the subprotocol to echo: "mqtt" [MQTT-6.0.0-4], or the MQTT 3.1 era "mqttv3.1". */
export function chooseProtocol(offered: string): string {
  const list = offered.split(',').map((p) => p.trim());
  if (list.includes('mqtt')) return 'mqtt';
  if (list.includes('mqttv3.1')) return 'mqttv3.1';
  return '';
}
