// A TCP relay in front of a broker, for network faults: cut() resets every connection through it
// and refuses new ones (a link down); blackhole() keeps the sockets open but stops reading them
// either way, as a silent partition looks from both ends (TCP holds the bytes, nothing arrives);
// restore() lets traffic through again.

import * as net from 'node:net';
import { HOST } from './ports';

export class Relay {
  private mode: 'pass' | 'cut' | 'blackhole' = 'pass';
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  /** Connections made through the relay so far. */
  connections = 0;

  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(targetPort: number): Promise<Relay> {
    let relay: Relay | null = null;
    const server = net.createServer((inbound) => relay!.accept(inbound, targetPort));
    await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
    relay = new Relay(server, (server.address() as net.AddressInfo).port);
    return relay;
  }

  private accept(inbound: net.Socket, targetPort: number): void {
    if (this.mode === 'cut') {
      inbound.resetAndDestroy();
      return;
    }
    this.connections++;
    const outbound = net.connect(targetPort, HOST);
    const pair: [net.Socket, net.Socket] = [inbound, outbound];
    this.pairs.add(pair);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    if (this.mode === 'blackhole') {
      inbound.pause();
      outbound.pause();
    }
    const end = (): void => {
      this.pairs.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', end).on('close', end);
    outbound.on('error', end).on('close', end);
  }

  url(params: Record<string, string | number> = {}): string {
    const q = Object.entries(params).map(([k, v]) => `${k}=${v}`).join('&');
    return `mqtt://${HOST}:${this.port}${q ? `?${q}` : ''}`;
  }

  /** The link goes down: connections are reset, new ones refused. */
  cut(): void {
    this.mode = 'cut';
    for (const [a, b] of this.pairs) {
      a.resetAndDestroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  /** Nothing passes any more, and no end is told. */
  blackhole(): void {
    this.mode = 'blackhole';
    for (const [a, b] of this.pairs) {
      a.unpipe(b);
      b.unpipe(a);
      a.pause();
      b.pause();
    }
  }

  restore(): void {
    if (this.mode === 'blackhole') {
      for (const [a, b] of this.pairs) {
        a.pipe(b);
        b.pipe(a);
      }
    }
    this.mode = 'pass';
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
