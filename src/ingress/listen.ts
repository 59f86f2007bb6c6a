// How shards get their share of device connections. Node 20 cannot hand an accepted socket to
// another thread, so each shard must accept for itself:
//  - preferred: every shard binds its own SO_REUSEPORT socket on the same port (node-unix-socket
//    sets the option Node 20 lacks) and the kernel spreads connections by hash, evenly;
//  - fallback, where that native module does not load: one socket shared by descriptor, every
//    shard accepting from it (uneven under load; the start-up log says which is in use).

import * as net from 'node:net';

export type ListenPlan =
  | { kind: 'reuseport'; host: string; port: number }
  | { kind: 'shared'; fd: number };

interface ReuseportModule {
  createReuseportFd(port: number, host: string): number;
}

let reuseport: ReuseportModule | null | undefined;

export function loadReuseport(): ReuseportModule | null {
  if (reuseport === undefined) {
    try {
      // Loaded lazily: a platform without its prebuilt binary falls back instead of failing.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      reuseport = require('node-unix-socket') as ReuseportModule;
    } catch {
      reuseport = null;
    }
  }
  return reuseport;
}

/** Starts `server` listening per the plan; resolves with the bound port. */
export function listenShard(server: net.Server, plan: ListenPlan): Promise<number> {
  const fd = plan.kind === 'shared' ? plan.fd : loadReuseport()!.createReuseportFd(plan.port, plan.host);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd, backlog: 4096 }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/** Fails fast with EADDRINUSE when something else holds the port: SO_REUSEPORT would otherwise
 *  quietly share it with another process of the same user. */
export function assertPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err) => reject(new Error(`cannot listen on ${host}:${port}: ${(err as Error).message}`)));
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()));
  });
}
