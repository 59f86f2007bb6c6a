// How a persistent session is laid out in its Redis hash, one field per thing that changes on
// its own, so that a change costs one HSET or HDEL and never a rewrite of the whole session:
//   r        the record id (the session object that writes it, see scripts.ts)
//   m        {"e": expiry ms, "v": protocol level}
//   s:<key>  a subscription: {"q": qos, "nl": no local, "rap": retain as published, "id": subscription id}
//   q:<n>    a QoS 1/2 message for the device (binary, below), n its order in the session
//   f:<n>    "packetId:stage" while that message is in flight to the device
// A message without f:<n> is queued; the order of n is the order of delivery.

import type { Outgoing, PendingState, SessionState } from '../shard/session';

const HEAD = 20;

/** q:<n>: qos, retain, subscription id count, topic and property lengths, expiry, ids, body. */
export function encodeMessage(out: Outgoing): Buffer {
  const m = out.msg;
  const ids = out.subIds ?? [];
  const len = m.topicLen + m.propsLen + m.payloadLen;
  const buf = Buffer.allocUnsafe(HEAD + 4 * ids.length + len);
  buf[0] = out.qos;
  buf[1] = out.retain ? 1 : 0;
  buf.writeUInt16LE(ids.length, 2);
  buf.writeUInt32LE(m.topicLen, 4);
  buf.writeUInt32LE(m.propsLen, 8);
  buf.writeDoubleLE(m.expiresAt, 12);
  let at = HEAD;
  for (const id of ids) {
    buf.writeUInt32LE(id, at);
    at += 4;
  }
  m.body.copy(buf, at, m.start, m.start + len);
  return buf;
}

function decodeMessage(buf: Buffer, key: number, flight: string | undefined): PendingState | null {
  if (buf.length < HEAD) return null;
  const n = buf.readUInt16LE(2);
  const topicLen = buf.readUInt32LE(4);
  const propsLen = buf.readUInt32LE(8);
  const bodyAt = HEAD + 4 * n;
  if (bodyAt + topicLen + propsLen > buf.length) return null;
  const subIds: number[] = [];
  for (let i = 0; i < n; i++) subIds.push(buf.readUInt32LE(HEAD + 4 * i));
  let id = 0;
  let stage = 0;
  if (flight !== undefined) {
    const [a, b] = flight.split(':');
    id = Number(a) & 0xffff;
    stage = Number(b) === 2 ? 2 : 1;
  }
  const body = new Uint8Array(buf.length - bodyAt);
  body.set(buf.subarray(bodyAt));
  return {
    id, stage, qos: buf[0], retain: buf[1] === 1, subIds: n > 0 ? subIds : null, origin: 0,
    topic: Buffer.from(body.buffer, 0, topicLen).toString('utf8'), body, topicLen, propsLen,
    expiresAt: buf.readDoubleLE(12), key,
  };
}

export function encodeMeta(expiryMs: number, version: number): string {
  return JSON.stringify({ e: expiryMs, v: version });
}

export function encodeSub(qos: number, noLocal: boolean, rap: boolean, subId: number): string {
  return JSON.stringify({ q: qos, nl: noLocal, rap, id: subId });
}

/** The session a hash holds (HGETALL as buffers), or null when there is none. Messages whose
 *  expiry has passed by `now` are left out. */
export function decodeSession(clientId: string, fields: Record<string, Buffer>, now: number): SessionState | null {
  const meta = fields.m;
  if (meta === undefined) return null;
  let expiryMs: number;
  let version: number;
  try {
    const m = JSON.parse(meta.toString('utf8')) as { e?: number; v?: number };
    expiryMs = Number(m.e) || 0;
    version = m.v === 5 ? 5 : m.v === 3 ? 3 : 4;
  } catch {
    return null;
  }
  const subs: SessionState['subs'] = [];
  const messages: PendingState[] = [];
  for (const [field, value] of Object.entries(fields)) {
    if (field.startsWith('s:')) {
      try {
        const s = JSON.parse(value.toString('utf8')) as { q: number; nl: boolean; rap: boolean; id: number };
        subs.push({ topic: field.slice(2), qos: s.q, nl: s.nl, rap: s.rap, subId: s.id });
      } catch {
        // a damaged subscription is left out, the rest of the session stays
      }
    } else if (field.startsWith('q:')) {
      const key = Number(field.slice(2));
      const p = decodeMessage(value, key, fields[`f:${key}`]?.toString('utf8'));
      if (p !== null && (p.expiresAt === 0 || p.expiresAt > now)) messages.push(p);
    }
  }
  messages.sort((a, b) => a.key - b.key);
  return { clientId, expiryMs, version, subs, pending: messages, storeId: fields.r?.toString('utf8') ?? '' };
}
