// Free TCP ports on loopback, and waiting for a port to accept connections.

import * as net from 'node:net';
import { waitFor } from './wait';

export const HOST = '127.0.0.1';

/** A port nothing listens on right now (the kernel's choice for an ephemeral bind). */
export function freePort(host = HOST): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves true when a TCP connection to host:port succeeds, false when refused. */
export function canConnect(port: number, host = HOST): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export function waitForPort(port: number, timeoutMs = 10_000, host = HOST): Promise<boolean> {
  return waitFor(`${host}:${port} to accept connections`, () => canConnect(port, host), { timeoutMs, intervalMs: 50 });
}
