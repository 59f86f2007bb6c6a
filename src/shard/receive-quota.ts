// MQTT 5 flow control [MQTT-4.9]: the QoS 1 and 2 PUBLISHes a device sent that the proxy has not
// answered yet, against the Receive Maximum it advertised (FANOUT_MAX_INFLIGHT). A PUBLISH is
// answered by its PUBACK, by a PUBREC with a reason code of 0x80 or more, or by its PUBCOMP.
// A device that sends one more is disconnected with 0x93 [MQTT-3.3.4-9]; MQTT 3.1.1 has no such
// limit to enforce, and its devices are slowed down instead (not read from).

import { PUBACK, PUBCOMP, PUBREC } from '../protocol/constants';

export class ReceiveQuota {
  private readonly open = new Set<number>();

  constructor(private readonly max: number) {}

  /** A QoS 1/2 PUBLISH with packet id `id` came: false when it is one too many. A re-sent one
   *  (same id, not answered yet) takes no new slot. */
  take(id: number): boolean {
    if (this.open.has(id)) return true;
    if (this.open.size >= this.max) return false;
    this.open.add(id);
    return true;
  }

  /** Ack packet `type` (MQTT packet type) with `reason` went to the device for packet id `id`. */
  answered(type: number, id: number, reason: number): void {
    // PUBACK and PUBCOMP end a flow; PUBREC only when it refuses the message.
    if (type === PUBACK || type === PUBCOMP || (type === PUBREC && reason >= 0x80)) this.open.delete(id);
  }

  get used(): number {
    return this.open.size;
  }
}
