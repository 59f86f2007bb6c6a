// The embedded upstream broker (aedes, on loopback) used when FANOUT_BROKERS is not set, so
// `npm start` works on a fresh machine without any broker installed.

import * as net from 'node:net';
import type { BrokerConfig } from './config/types';

export interface EmbeddedBroker {
  broker: BrokerConfig;
  close(): Promise<void>;
}

export async function startEmbeddedBroker(port = 0): Promise<EmbeddedBroker> {
  const { Aedes } = await import('aedes');
  const aedes = await Aedes.createBroker();
  const server = net.createServer((socket) => aedes.handle(socket));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const address = server.address() as net.AddressInfo;
  const broker: BrokerConfig = Object.freeze({
    name: 'embedded', transport: 'mqtt', host: '127.0.0.1', port: address.port, maxQos: 2, retain: 'forward',
    pool: 2, protocolVersion: 4, keepalive: 60, inflight: 1000, ca: null, cert: null, key: null, insecure: false,
    redactedUrl: `mqtt://127.0.0.1:${address.port}`,
  });
  return {
    broker,
    close: () => new Promise((resolve) => {
      server.close();
      aedes.close(() => resolve());
    }),
  };
}
