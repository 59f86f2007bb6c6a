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
  return (h >>> 0) + (payloadEnd - payloadStart) * 4294967296;
}

export class OwnPublishes {
  private readonly counts = new Map<number, number>();
  private readonly order: number[] = [];
  private head = 0;

  remember(fp: number): void {
    this.counts.set(fp, (this.counts.get(fp) ?? 0) + 1);
    this.order.push(fp);
    if (this.order.length - this.head > REMEMBERED) this.forget(this.order[this.head++]);
    if (this.head > REMEMBERED) {
      this.order.splice(0, this.head);
      this.head = 0;
    }
  }

  /** True (and forgotten) when `fp` is one of the device's own recent publishes. */
  take(fp: number): boolean {
    if (!this.counts.has(fp)) return false;
    this.forget(fp);
    return true;
  }

  private forget(fp: number): void {
    const n = this.counts.get(fp);
    if (n === undefined) return;
    if (n <= 1) this.counts.delete(fp);
    else this.counts.set(fp, n - 1);
  }
}
