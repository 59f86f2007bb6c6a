// Byte helpers for tests that build packets by hand.

import { varintSize, writeVarint } from '../../src/protocol/framer';

/** The MQTT variable byte integer encoding of `n`, as bytes. */
export function varint(n: number): number[] {
  const b = Buffer.alloc(varintSize(n));
  writeVarint(b, 0, n);
  return [...b];
}

/** A control character (U+0001-U+001F, U+007F-U+009F) or a non-character. */
export function hasDiscouraged(s: string): boolean {
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f) || (cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) return true;
  }
  return false;
}
