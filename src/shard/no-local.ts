// MQTT 5 No Local [MQTT-3.8.3-3]: a device's own publishes must not come back to it on a
// subscription that asked so. They come back through a broker, where their origin is lost, so a
// device with such a subscription remembers a fingerprint (topic and payload) of its recent
// publishes, and the first matching message from the broker is taken for its own and skipped.

/** Publishes remembered per device; an older one that never came back is forgotten. */
const REMEMBERED = 1024;

/** FNV-1a over the topic bytes, a separator and the payload bytes. */
export function fingerprint(topic: Uint8Array, topicStart: number, topicEnd: number, payload: Uint8Array, payloadStart: number, payloadEnd: number): number {
  let h = 0x811c9dc5;
  for (let i = topicStart; i < topicEnd; i++) h = Math.imul(h ^ topic[i], 0x01000193);
  h = Math.imul(h ^ 0xff, 0x01000193);
  for (let i = payloadStart; i < payloadEnd; i++) h = Math.imul(h ^ payload[i], 0x01000193);
  // The length (mod 2^20) above the hash keeps the sum an exact integer.
  return (h >>> 0) + ((payloadEnd - payloadStart) % 1048576) * 4294967296;
}

export class OwnPublishes {
  /** Remembered publishes not yet seen coming back, by fingerprint. */
  private readonly counts = new Map<number, number>();
  /** Publishes seen coming back whose entry in `order` has not aged out yet: take() uses the
   *  oldest instance of a fingerprint, so aging skips that many instances of it. */
  private readonly taken = new Map<number, number>();
  private readonly order: number[] = [];
  private head = 0;

  remember(fp: number): void {
    bump(this.counts, fp, 1);
    this.order.push(fp);
    if (this.order.length - this.head > REMEMBERED) {
      const old = this.order[this.head++];
      if (this.taken.has(old)) bump(this.taken, old, -1);
      else bump(this.counts, old, -1);
    }
    if (this.head > REMEMBERED) {
      this.order.splice(0, this.head);
      this.head = 0;
    }
  }

  /** True (and forgotten) when `fp` is one of the device's own recent publishes. */
  take(fp: number): boolean {
    if (!this.counts.has(fp)) return false;
    bump(this.counts, fp, -1);
    bump(this.taken, fp, 1);
    return true;
  }
}

function bump(map: Map<number, number>, key: number, by: number): void {
  const n = (map.get(key) ?? 0) + by;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}
