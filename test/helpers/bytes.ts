// Byte helpers for tests that build packets by hand.

import { varintSize, writeVarint } from '../../src/protocol/framer';

/** The MQTT variable byte integer encoding of `n`, as bytes. */
export function varint(n: number): number[] {
  const b = Buffer.alloc(varintSize(n));
  writeVarint(b, 0, n);
  return [...b];
}
