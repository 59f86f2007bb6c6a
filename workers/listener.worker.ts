// Owns the shared listening socket. It binds and listens, hands the descriptor to the
// supervisor, then blocks so its own event loop never accepts: the shards do, each with
// listen({ fd }). Blocking is safe here because this thread serves nothing else.

import * as net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';

const { host, port, control } = workerData as { host: string; port: number; control: SharedArrayBuffer };
const server = net.createServer();
server.on('error', (err) => {
  parentPort!.postMessage({ t: 'error', message: err.message, code: (err as NodeJS.ErrnoException).code });
});
server.listen({ host, port, backlog: 4096 }, () => {
  // Node has no public accessor for a server's descriptor; the handle's fd is what
  // listen({ fd }) expects in the shards.
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  const address = server.address() as net.AddressInfo;
  parentPort!.postMessage({ t: 'listening', fd, port: address.port });
  const words = new Int32Array(control);
  Atomics.wait(words, 0, 0);
  server.close();
});
