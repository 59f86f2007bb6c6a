// Writes device publishes into the shard's rings, one ring per broker, and rings each writer's
// doorbell once per batch rather than once per message.

import { Doorbell } from '../ring/doorbell';
import { RingProducer } from '../ring/spsc';
import { FLAG_RETAIN, FLAG_V5, REC_PUBLISH, UPLINK_HEADER } from '../ring/records';
import { copyBytes } from '../protocol/bytes';

export interface UplinkMessage {
  qos: number;
  retain: boolean;
  v5: boolean;
  token: number;
  deviceKey: number;
  topic: Buffer;
  topicStart: number;
  topicLen: number;
  /** Property bytes, in up to two ranges of `src` (a Topic Alias cut out between them). */
  src: Buffer;
  propsA: number;
  propsAEnd: number;
  propsB: number;
  propsBEnd: number;
  payloadStart: number;
  payloadEnd: number;
}

export class Uplink {
  private readonly dirty: boolean[];

  constructor(private readonly rings: RingProducer[], private readonly doorbells: Doorbell[]) {
    this.dirty = rings.map(() => false);
  }

  static recordSize(m: UplinkMessage): number {
    return UPLINK_HEADER + m.topicLen + (m.propsAEnd - m.propsA) + (m.propsBEnd - m.propsB) + (m.payloadEnd - m.payloadStart);
  }

  /** True when every ring can take a record of `len` bytes now; otherwise the full rings are
   *  flagged so their writers wake this shard when they drain. */
  fits(len: number): boolean {
    let ok = true;
    for (const r of this.rings) if (!r.canFit(len)) ok = false;
    return ok;
  }

  /** Appends `m` to every ring. Call fits() first: this never fails. */
  write(m: UplinkMessage): void {
    const len = Uplink.recordSize(m);
    const propsLen = (m.propsAEnd - m.propsA) + (m.propsBEnd - m.propsB);
    const flags = m.qos | (m.retain ? FLAG_RETAIN : 0) | (m.v5 ? FLAG_V5 : 0);
    for (let i = 0; i < this.rings.length; i++) {
      const ring = this.rings[i];
      let at = ring.reserve(len);
      if (at < 0) throw new Error('ring reserve failed after fits()');
      const buf = ring.buffer;
      const view = ring.dataView;
      buf[at] = REC_PUBLISH;
      buf[at + 1] = flags;
      view.setUint16(at + 2, m.topicLen, true);
      view.setUint32(at + 4, propsLen, true);
      view.setUint32(at + 8, m.token, true);
      view.setUint32(at + 12, m.deviceKey, true);
      at += UPLINK_HEADER;
      at += copyBytes(m.topic, m.topicStart, m.topicStart + m.topicLen, buf, at);
      if (m.propsAEnd > m.propsA) at += copyBytes(m.src, m.propsA, m.propsAEnd, buf, at);
      if (m.propsBEnd > m.propsB) at += copyBytes(m.src, m.propsB, m.propsBEnd, buf, at);
      copyBytes(m.src, m.payloadStart, m.payloadEnd, buf, at);
      this.dirty[i] = true;
    }
  }

  /** Makes everything written visible and wakes the writers. */
  commit(): void {
    for (let i = 0; i < this.rings.length; i++) {
      if (!this.dirty[i]) continue;
      this.dirty[i] = false;
      if (this.rings[i].commit()) this.doorbells[i].ring();
    }
  }

  /** Bytes waiting in each ring, for metrics and shutdown. */
  fill(): number[] {
    return this.rings.map((r) => r.used());
  }
}
