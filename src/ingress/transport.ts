// What a device connection needs from the byte stream under it, so one MQTT implementation
// serves TCP and WebSocket devices alike.

import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';

export type TransportKind = 'tcp' | 'tls' | 'ws' | 'wss';

export interface DeviceTransport {
  readonly kind: TransportKind;
  readonly destroyed: boolean;
  /** Queues bytes for the device; false when they are backed up (see onceDrain). */
  write(chunk: Buffer): boolean;
  /** Stops delivering incoming bytes, where the transport can (see `canPause`). */
  pause(): void;
  resume(): void;
  /** False for a transport that cannot stop reading: the connection then bounds what it holds. */
  readonly canPause: boolean;
  /** Closes after what was written has gone out. */
  end(): void;
  /** Closes now. */
  destroy(): void;
  /** Calls `cb` once when written bytes are no longer backed up. */
  onceDrain(cb: () => void): void;
}

/** A TCP socket, or a TLS one on top of it. */
export class TcpTransport implements DeviceTransport {
  readonly canPause = true;

  constructor(readonly socket: Socket, readonly kind: 'tcp' | 'tls' = 'tcp') {}

  get destroyed(): boolean {
    return this.socket.destroyed;
  }

  write(chunk: Buffer): boolean {
    return this.socket.write(chunk);
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  end(): void {
    this.socket.end(() => this.socket.destroy());
  }

  destroy(): void {
    this.socket.destroy();
  }

  onceDrain(cb: () => void): void {
    this.socket.once('drain', cb);
  }
}

/** The common name of the certificate a device presented (verified by the handshake when
 *  FANOUT_TLS_REQUIRE_CLIENT_CERT is set), or null. */
export function peerCommonName(socket: TLSSocket): string | null {
  const cn = socket.getPeerCertificate().subject?.CN;
  return Array.isArray(cn) ? cn[0] : cn ?? null;
}
