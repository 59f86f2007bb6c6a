// TLS device sockets between their TCP accept and the end of their handshake. node hands a TLS
// server's socket over only once the handshake is done, so without this a socket that connects
// and never says a word would be neither admitted nor counted: it is admitted here at the TCP
// accept (FANOUT_MAX_CONNECTIONS, FANOUT_MAX_CONNECT_RATE), counted as open while it shakes
// hands, and the handshake is bounded by FANOUT_CONNECT_TIMEOUT_MS (the server's
// handshakeTimeout) like a plain socket's CONNECT.

import type { Socket } from 'node:net';
import type { Server, TLSSocket } from 'node:tls';

export class TlsHandshakes {
  /** Raw sockets still shaking hands, by their peer's address and port. */
  private readonly pending = new Map<string, Socket>();

  /** `admit`: may this new socket stay; `count`: the number of sockets shaking hands changed. */
  constructor(server: Server, admit: (address: string | undefined) => boolean, private readonly count: (delta: number) => void) {
    server.on('connection', (raw: Socket) => {
      if (!admit(raw.remoteAddress)) {
        raw.destroy();
        return;
      }
      const key = `${raw.remoteAddress}|${raw.remotePort}`;
      this.pending.set(key, raw);
      count(1);
      // Failed handshakes, timeouts and resets end here.
      raw.once('close', () => this.done(key, raw));
    });
  }

  /** The handshake of `socket` is done: from now on it counts as a device connection. */
  secured(socket: TLSSocket): void {
    const key = `${socket.remoteAddress}|${socket.remotePort}`;
    const raw = this.pending.get(key);
    if (raw !== undefined) this.done(key, raw);
  }

  private done(key: string, raw: Socket): void {
    if (this.pending.get(key) !== raw) return;
    this.pending.delete(key);
    this.count(-1);
  }
}
