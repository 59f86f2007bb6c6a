// Publishes that came in over HTTP (POST /publish on the supervisor), routed by a shard exactly
// like a device's: same rings, same routes, same FANOUT_ACK. The answer goes back when the
// brokers have acknowledged (QoS 1/2) or once the message is in the rings (QoS 0).

import { NO_TOKEN } from '../ring/records';
import type { AckTarget } from './inflight';
import type { ShardContext } from './context';

export interface HttpPublish {
  id: number;
  topic: string;
  payload: Uint8Array;
  qos: number;
  retain: boolean;
}

export class HttpPublisher implements AckTarget {
  private readonly waiting = new Map<number, number>();
  private nextId = 1;
  private queue: HttpPublish[] = [];

  constructor(private readonly ctx: ShardContext, private readonly answer: (id: number, reason: number) => void) {}

  /** Takes the request now or queues it behind a full ring. */
  submit(p: HttpPublish): void {
    if (this.queue.length > 0 || !this.tryPublish(p)) this.queue.push(p);
  }

  /** Ring room may be back: publish what waits, in order. */
  retry(): void {
    while (this.queue.length > 0 && this.tryPublish(this.queue[0])) this.queue.shift();
  }

  private tryPublish(p: HttpPublish): boolean {
    const ctx = this.ctx;
    const topic = Buffer.from(p.topic);
    const payload = Buffer.from(p.payload.buffer, p.payload.byteOffset, p.payload.length);
    const m = ctx.msg;
    m.qos = p.qos;
    m.retain = p.retain;
    m.v5 = false;
    m.deviceKey = p.id;
    m.trace = false;
    m.topic = topic;
    m.topicStart = 0;
    m.topicLen = topic.length;
    m.src = payload;
    m.propsA = m.propsAEnd = m.propsB = m.propsBEnd = 0;
    m.payloadStart = 0;
    m.payloadEnd = payload.length;
    const tracked = p.qos > 0 && (ctx.config.ack !== 'local' || ctx.config.spoolDir !== null);
    if (tracked && this.waiting.size >= 65535) return false;
    if (!ctx.uplink.fits(m)) return false;
    ctx.stats.add('httpPublishes');
    if (ctx.uplink.planned === 0) {
      ctx.stats.add('unrouted');
      this.answer(p.id, 0);
      return true;
    }
    m.token = NO_TOKEN;
    if (tracked) {
      let id = this.nextId;
      while (this.waiting.has(id)) id = id === 65535 ? 1 : id + 1;
      this.nextId = id === 65535 ? 1 : id + 1;
      this.waiting.set(id, p.id);
      m.token = ctx.inflight.allocate(this, id, p.qos, ctx.uplink.plannedMask);
    }
    ctx.uplink.write(m);
    if (!tracked) this.answer(p.id, 0);
    return true;
  }

  uplinkAcked(messageId: number, _qos: number, reason: number): void {
    const id = this.waiting.get(messageId);
    if (id === undefined) return;
    this.waiting.delete(messageId);
    this.answer(id, reason);
  }

  uplinkSettled(): void { /* nothing held per message */ }
}
