// How shards get their share of device connections. Node 20 cannot hand an accepted socket to
// another thread, so each shard must accept for itself:
//  - preferred: every shard binds its own SO_REUSEPORT socket on the same port (the prebuilt
//    node-unix-socket binary sets the option Node 20 lacks) and the kernel spreads connections
//    by hash, evenly; the host must be an IP address (main resolves names first);
//  - fallback, where that native module does not load: one socket shared by descriptor, every
//    shard accepting from it (uneven under load; the start-up log says which is in use).

import * as net from 'node:net';

export type ListenPlan =
  | { kind: 'reuseport'; host: string; port: number }
  | { kind: 'shared'; fd: number }
  // One thread alone on the port (a secondary listener where SO_REUSEPORT is not available).
  | { kind: 'plain'; host: string; port: number };

interface ReuseportAddon {
  socketNewSoReuseportFd(domain: 'ipv4' | 'ipv6', port: number, host: string): number;
}

let addon: ReuseportAddon | null | undefined;

/** The prebuilt node-unix-socket binary for this platform (an optional dependency: published
 *  for linux-x64 glibc), or null where there is none. */
export function loadReuseport(): ReuseportAddon | null {
  if (addon === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      addon = require(`node-unix-socket-${process.platform}-${process.arch}-gnu`) as ReuseportAddon;
    } catch {
      addon = null;
    }
  }
  return addon;
}

/** Starts `server` listening per the plan; resolves with the bound port. */
export function listenShard(server: net.Server, plan: ListenPlan): Promise<number> {
  const where = plan.kind === 'plain'
    ? { host: plan.host, port: plan.port }
    : {
      fd: plan.kind === 'shared'
        ? plan.fd
        : loadReuseport()!.socketNewSoReuseportFd(net.isIPv6(plan.host) ? 'ipv6' : 'ipv4', plan.port, plan.host),
    };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ ...where, backlog: 4096 }, () => {
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
