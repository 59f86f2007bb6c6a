// The shard's table of device publishes waiting for broker acknowledgements. A slot index is the
// token carried through the rings; it is reused only after every broker has answered, so an
// acknowledgement can never reach the wrong message. Each slot keeps one bit per broker still to
// answer: a second answer from the same broker changes nothing, and a restarted writer can be
// told exactly which tokens it still owes (pendingOn). FANOUT_ACK=k is a count per slot of the
// acceptances still needed, min(k, brokers of the slot): `any` is k = 1, `all` k = every broker.

import { performance } from 'node:perf_hooks';
import { ackQuorum, type AckMode } from '../config/types';
import type { LatencyRecorder } from '../metrics/latency';

export interface AckTarget {
  /** Called once when the device may be acknowledged (per FANOUT_ACK). */
  uplinkAcked(messageId: number, qos: number, reason: number): void;
  /** Called once when every broker has answered and the slot is free again. */
  uplinkSettled(messageId: number, qos: number): void;
}

export class InflightTable {
  /** Bit b: broker b has not answered yet. */
  private remaining: Int32Array;
  private messageId: Uint16Array;
  private qos: Uint8Array;
  private acked: Uint8Array;
  /** Acceptances still needed before the device is answered. */
  private need: Uint8Array;
  private reason: Uint8Array;
  private owners: (AckTarget | null)[];
  private started: Float64Array;
  private freeList: Int32Array;
  private freeCount = 0;
  private size = 0;
  active = 0;

  private all: number;
  private readonly quorum: number;

  constructor(brokers: number, mode: AckMode, initial = 1024, private readonly latency: LatencyRecorder | null = null) {
    this.all = brokers >= 31 ? 0x7fffffff : (1 << brokers) - 1;
    this.quorum = ackQuorum(mode);
    this.started = new Float64Array(initial);
    this.remaining = new Int32Array(initial);
    this.messageId = new Uint16Array(initial);
    this.qos = new Uint8Array(initial);
    this.acked = new Uint8Array(initial);
    this.need = new Uint8Array(initial);
    this.reason = new Uint8Array(initial);
    this.owners = new Array<AckTarget | null>(initial).fill(null);
    this.freeList = new Int32Array(initial);
  }

  /** A slot for one publish waiting on the brokers of the bit mask `brokers` (default: all). */
  allocate(owner: AckTarget, messageId: number, qos: number, brokers = this.all): number {
    let slot: number;
    if (this.freeCount > 0) {
      slot = this.freeList[--this.freeCount];
    } else {
      if (this.size === this.remaining.length) this.grow();
      slot = this.size++;
    }
    this.remaining[slot] = brokers;
    this.messageId[slot] = messageId;
    this.qos[slot] = qos;
    this.acked[slot] = 0;
    const n = bitCount(brokers);
    this.need[slot] = n < this.quorum ? n : this.quorum;
    this.reason[slot] = 0;
    this.owners[slot] = owner;
    if (this.latency !== null) this.started[slot] = performance.now();
    this.active++;
    return slot;
  }

  /** A reload changed the broker set: new publishes wait on the slots of `mask` by default. */
  setBrokers(mask: number): void {
    this.all = mask;
  }

  /** Applies broker `broker`'s answer for `slot`; an answer it already gave is ignored. */
  ack(slot: number, reason: number, broker: number): void {
    const bit = 1 << broker;
    if (slot >= this.size || (this.remaining[slot] & bit) === 0) return;
    const owner = this.owners[slot]!;
    if (reason >= 0x80 && this.reason[slot] === 0) this.reason[slot] = reason;
    const left = (this.remaining[slot] &= ~bit);
    // Answer at the k-th broker that accepted, or with the first refusal once every broker has
    // answered and fewer than k accepted.
    const quorate = reason < 0x80 && this.need[slot] > 0 && --this.need[slot] === 0;
    if (this.acked[slot] === 0 && (left === 0 || quorate)) {
      if (quorate) this.reason[slot] = 0;
      this.acked[slot] = 1;
      this.latency?.since(this.started[slot], performance.now());
      owner.uplinkAcked(this.messageId[slot], this.qos[slot], this.reason[slot]);
    }
    if (left === 0) {
      this.owners[slot] = null;
      this.freeList[this.freeCount++] = slot;
      this.active--;
      owner.uplinkSettled(this.messageId[slot], this.qos[slot]);
    }
  }

  /** Tokens still waiting for broker `broker` (for its writer after a restart). */
  pendingOn(broker: number): number[] {
    const bit = 1 << broker;
    const out: number[] = [];
    for (let slot = 0; slot < this.size; slot++) if ((this.remaining[slot] & bit) !== 0) out.push(slot);
    return out;
  }

  /** The owner of a slot still waiting for `broker`, or null. */
  ownerWaitingOn(slot: number, broker: number): AckTarget | null {
    return slot < this.size && (this.remaining[slot] & (1 << broker)) !== 0 ? this.owners[slot] : null;
  }

  private grow(): void {
    const n = this.remaining.length * 2;
    const grow32 = (a: Int32Array) => { const b = new Int32Array(n); b.set(a); return b; };
    this.remaining = grow32(this.remaining);
    this.freeList = grow32(this.freeList);
    const m = new Uint16Array(n); m.set(this.messageId); this.messageId = m;
    const q = new Uint8Array(n); q.set(this.qos); this.qos = q;
    const a = new Uint8Array(n); a.set(this.acked); this.acked = a;
    const k = new Uint8Array(n); k.set(this.need); this.need = k;
    const r = new Uint8Array(n); r.set(this.reason); this.reason = r;
    const t = new Float64Array(n); t.set(this.started); this.started = t;
    this.owners.length = n;
    this.owners.fill(null, this.size);
  }
}

/** Set bits of a broker mask. */
function bitCount(mask: number): number {
  let v = mask - ((mask >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}
