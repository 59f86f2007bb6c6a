// Whether a shard takes a new device socket, decided when it is accepted (TCP, TLS) or upgraded
// (WebSocket), before a byte of it is read: FANOUT_MAX_CONNECTIONS counts every open socket,
// so sockets that never send CONNECT cannot pile up beyond it, and FANOUT_MAX_CONNECT_RATE
// counts new sockets per source address, whatever the transport.

import type { Config } from '../config/types';

export type Refusal = 'max-connections' | 'rate';

export class Admission {
  /** Connections per source address in the current second: this shard's share of the rate. */
  private readonly byAddress = new Map<string, number>();
  private second = 0;
  private readonly perShard: number;

  constructor(private readonly config: Config, private readonly openConnections: () => number) {
    this.perShard = Math.ceil(config.maxConnectRate / config.shards);
  }

  /** null when the socket may stay, else why it is closed at once. */
  admit(address: string | undefined): Refusal | null {
    if (this.openConnections() >= this.config.maxConnections) return 'max-connections';
    if (this.config.maxConnectRate === 0 || address === undefined) return null;
    const second = Math.floor(Date.now() / 1000);
    if (second !== this.second) {
      this.second = second;
      this.byAddress.clear();
    }
    const key = canonicalAddress(address);
    const n = (this.byAddress.get(key) ?? 0) + 1;
    this.byAddress.set(key, n);
    return n <= this.perShard ? null : 'rate';
  }
}

/** One spelling per address: an IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d. */
export function canonicalAddress(address: string): string {
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}
