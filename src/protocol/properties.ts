// MQTT 5 property walking for the PUBLISH fast path: validates identifiers and lengths without
// building objects, and finds the Topic Alias (which is per connection and must not travel on).

import { isUtf8 } from 'node:buffer';
import { readVarint, varintEnd } from './framer';
import { copyBytes } from './bytes';

// Value kinds by property identifier: 1 byte, 2 u16, 4 u32, 'v' varint, 's' UTF-8 string,
// 'b' binary, 'p' string pair. Only the identifiers MQTT 5 allows somewhere are listed.
const KIND: Record<number, '1' | '2' | '4' | 'v' | 's' | 'b' | 'p'> = {
  0x01: '1', 0x02: '4', 0x03: 's', 0x08: 's', 0x09: 'b', 0x0b: 'v', 0x11: '4', 0x12: 's',
  0x13: '2', 0x15: 's', 0x16: 'b', 0x17: '1', 0x18: '4', 0x19: '1', 0x1a: 's', 0x1c: 's',
  0x1f: 's', 0x21: '2', 0x22: '2', 0x23: '2', 0x24: '1', 0x25: '1', 0x26: 'p', 0x27: '4',
  0x28: '1', 0x29: '1', 0x2a: '1',
};

/** A table of the property identifiers allowed somewhere: 1 for each of `ids`. */
function allowing(...ids: number[]): Uint8Array {
  const table = new Uint8Array(256);
  for (const id of ids) table[id] = 1;
  return table;
}

// What a client may send in each place [MQTT 5, 2.2.2.2]: any other identifier, known or not, is
// a malformed packet. The Subscription Identifier is valid in PUBLISH, but not from a client
// (scanPublishProperties).
const PUBLISH_ALLOWED = allowing(0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x23, 0x26);
export const CONNECT_ALLOWED = allowing(0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27);
export const WILL_ALLOWED = allowing(0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26);
/** PUBACK, PUBREC, PUBREL, PUBCOMP. */
export const ACK_ALLOWED = allowing(0x1f, 0x26);
export const SUBSCRIBE_ALLOWED = allowing(0x0b, 0x26);
export const UNSUBSCRIBE_ALLOWED = allowing(0x26);
export const DISCONNECT_ALLOWED = allowing(0x11, 0x1c, 0x1f, 0x26);

export const PROP_RESPONSE_TOPIC = 0x08;

/** A value the specification calls a protocol error: a Payload Format Indicator, Request Problem
 *  or Response Information other than 0 or 1; a Receive Maximum or Maximum Packet Size of 0. */
function outOfRange(id: number, buf: Buffer, at: number): boolean {
  switch (id) {
    case 0x01: case 0x17: case 0x19: return buf[at] > 1;
    case 0x21: return buf.readUInt16BE(at) === 0;
    case 0x27: return buf.readUInt32BE(at) === 0;
  }
  return false;
}

/** A Response Topic is a topic name: not empty, no wildcard [MQTT-3.3.2-14, MQTT-4.7.3-1]; its
 *  value (length first) at buf[at], already checked to be a valid string. */
function badResponseTopic(buf: Buffer, at: number): boolean {
  const end = at + 2 + buf.readUInt16BE(at);
  if (end === at + 2) return true;
  for (let i = at + 2; i < end; i++) if (buf[i] === 0x23 || buf[i] === 0x2b) return true;
  return false;
}

export const PROP_TOPIC_ALIAS = 0x23;

export interface PropertyScan {
  /** 0 when valid, else the MQTT 5 reason code to close with. */
  error: number;
  topicAlias: number;
  /** Offsets of the Topic Alias property inside the buffer, to cut it out; -1 if absent. */
  aliasStart: number;
}

// The property identifiers seen so far in the walk in progress, one bit each (identifiers run
// from 0x01 to 0x2a): only User Property may repeat in what a client sends [MQTT-2.2.2.2].
let seenLow = 0; // 0x00-0x1f
let seenHigh = 0; // 0x20-0x3f

/** Marks id seen; true when it was seen before in this walk. */
function seenBefore(id: number): boolean {
  const bit = 1 << (id & 0x1f);
  if (id < 0x20) {
    if ((seenLow & bit) !== 0) return true;
    seenLow |= bit;
  } else {
    if ((seenHigh & bit) !== 0) return true;
    seenHigh |= bit;
  }
  return false;
}

/** Walks the properties in buf[start, end) of a client PUBLISH. */
export function scanPublishProperties(buf: Buffer, start: number, end: number, out: PropertyScan): void {
  out.error = 0;
  out.topicAlias = 0;
  out.aliasStart = -1;
  seenLow = seenHigh = 0;
  let pos = start;
  while (pos < end) {
    const id = buf[pos];
    const kind = KIND[id];
    if (kind === undefined || PUBLISH_ALLOWED[id] !== 1) {
      out.error = 0x81; // an identifier not valid in PUBLISH is a malformed packet [MQTT-2.2.2]
      return;
    }
    if (id === 0x0b) {
      out.error = 0x82; // Subscription Identifier from a client is a protocol error [MQTT-3.3.4-6]
      return;
    }
    if (id !== 0x26 && seenBefore(id)) {
      out.error = 0x82;
      return;
    }
    const valueAt = pos + 1;
    const next = skipValue(buf, valueAt, end, kind);
    if (next < 0) {
      out.error = 0x81;
      return;
    }
    if (id === PROP_TOPIC_ALIAS) {
      out.topicAlias = buf.readUInt16BE(valueAt);
      if (out.topicAlias === 0) {
        out.error = 0x94;
        return;
      }
      out.aliasStart = pos;
    }
    if (id === 0x01 && buf[valueAt] > 1) {
      out.error = 0x82;
      return;
    }
    if (id === PROP_RESPONSE_TOPIC && badResponseTopic(buf, valueAt)) {
      out.error = 0x90;
      return;
    }
    pos = next;
  }
}

/**
 * Checks the properties in buf[start, end) in one walk: 0x81 (malformed) unless every identifier
 * is one `allowed` (one of the tables above) has, every value inside the range and every UTF-8
 * string (user properties included) passes isValidMqttString; else 0x82 (protocol error) when a
 * property other than User Property repeats, which mqtt-packet takes without complaint (it keeps
 * the last of two when the first is falsy and hands others over as an array: as a number, NaN)
 * or a value is out of range (outOfRange); else 0x90 for a Response Topic that is no topic name; else 0. For the packets other than
 * PUBLISH, which mqtt-packet decodes leniently, and the will, which is carried on to the brokers.
 */
export function propertyFault(buf: Buffer, start: number, end: number, allowed: Uint8Array): number {
  seenLow = seenHigh = 0;
  let repeated = false; // or a value out of range: a protocol error all the same
  let badTopic = false;
  let pos = start;
  while (pos < end) {
    const id = buf[pos];
    const kind = KIND[id];
    if (kind === undefined || allowed[id] !== 1) return 0x81;
    if (id !== 0x26 && seenBefore(id)) repeated = true;
    const valueAt = pos + 1;
    pos = skipValue(buf, valueAt, end, kind);
    if (pos < 0) return 0x81;
    if (outOfRange(id, buf, valueAt)) repeated = true;
    else if (id === PROP_RESPONSE_TOPIC && badResponseTopic(buf, valueAt)) badTopic = true;
  }
  if (pos !== end) return 0x81;
  return repeated ? 0x82 : badTopic ? 0x90 : 0;
}

/**
 * Checks the property block whose length varint starts at buf[at], inside a packet ending at
 * end (and, when last, ending with it), against the identifiers `allowed` there: 0 when
 * well-formed, else as propertyFault (0x81 also for the block beyond the packet, or bytes after
 * it). For the acknowledgements, SUBSCRIBE, UNSUBSCRIBE and DISCONNECT, which are otherwise read
 * by their fixed fields.
 */
export function propertyBlockFault(buf: Buffer, at: number, end: number, last: boolean, allowed: Uint8Array): number {
  const len = readVarint(buf, at, end);
  if (len < 0) return 0x81;
  const start = varintEnd;
  const stop = start + len;
  if (stop > end || (last && stop !== end)) return 0x81;
  return propertyFault(buf, start, stop, allowed);
}

function skipValue(buf: Buffer, pos: number, end: number, kind: string): number {
  switch (kind) {
    case '1': return pos + 1 <= end ? pos + 1 : -1;
    case '2': return pos + 2 <= end ? pos + 2 : -1;
    case '4': return pos + 4 <= end ? pos + 4 : -1;
    case 'v': return readVarint(buf, pos, end) < 0 ? -1 : varintEnd;
    case 's':
    case 'b': return skipLengthPrefixed(buf, pos, end, kind === 's');
    case 'p': {
      const k = skipLengthPrefixed(buf, pos, end, true);
      return k < 0 ? -1 : skipLengthPrefixed(buf, k, end, true);
    }
  }
  return -1;
}

function skipLengthPrefixed(buf: Buffer, pos: number, end: number, utf8: boolean): number {
  if (pos + 2 > end) return -1;
  const n = buf.readUInt16BE(pos);
  const stop = pos + 2 + n;
  if (stop > end) return -1;
  if (utf8 && !isValidMqttString(buf, pos + 2, stop)) return -1;
  return stop;
}

/**
 * Well-formed UTF-8 without U+0000 [MQTT-1.5.4-1, MQTT-1.5.4-2], and without the code points a
 * receiver may treat as malformed [MQTT-1.5.4]: control characters (U+0001-U+001F,
 * U+007F-U+009F) and non-characters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF). Brokers such as
 * mosquitto close the connection on those, so they are refused here, before anything is
 * forwarded upstream.
 */
export function isValidMqttString(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c < 0x20 || c === 0x7f) return false;
    if (c >= 0x80) return isUtf8(buf.subarray(i, end)) && noDiscouraged(buf, i, end);
  }
  return true;
}

/** buf[start, end) is well-formed UTF-8: false when it holds a control or non-character. */
function noDiscouraged(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c < 0x80) {
      if (c < 0x20 || c === 0x7f) return false;
    } else if (c === 0xc2) {
      if (buf[i + 1] <= 0x9f) return false; // U+0080-U+009F
    } else if (c === 0xef) {
      const b1 = buf[i + 1];
      const b2 = buf[i + 2];
      if (b1 === 0xb7 && b2 >= 0x90 && b2 <= 0xaf) return false; // U+FDD0-U+FDEF
      if (b1 === 0xbf && b2 >= 0xbe) return false; // U+FFFE, U+FFFF
    } else if (c >= 0xf0) {
      if ((buf[i + 1] & 0x0f) === 0x0f && buf[i + 2] === 0xbf && buf[i + 3] >= 0xbe) return false; // U+xFFFE, U+xFFFF
    }
  }
  return true;
}

/**
 * Whether every topic filter of a SUBSCRIBE or UNSUBSCRIBE passes isValidMqttString, on the raw
 * bytes: mqtt-packet decodes strings leniently. `packet` is the whole packet from its first
 * byte. Framing errors are left to the full parser (true).
 */
export function filtersAreValid(packet: Buffer, v5: boolean, subscribe: boolean): boolean {
  const end = packet.length;
  let pos = 1;
  while (pos < end && packet[pos] & 0x80) pos++;
  pos += 1 + 2; // end of the remaining length, then the packet id
  if (v5) {
    const propsLen = readVarint(packet, pos, end);
    if (propsLen < 0) return true;
    pos = varintEnd + propsLen;
  }
  while (pos + 2 <= end) {
    const len = packet.readUInt16BE(pos);
    if (pos + 2 + len > end) return true;
    if (!isValidMqttString(packet, pos + 2, pos + 2 + len)) return false;
    pos += 2 + len + (subscribe ? 1 : 0);
  }
  return true;
}

export const PROP_MESSAGE_EXPIRY = 0x02;
export const PROP_SUBSCRIPTION_ID = 0x0b;

/** What forwardProperties found besides the bytes it copied. */
export interface ForwardScan {
  /** Message Expiry Interval in seconds, or -1 when absent. */
  expiry: number;
  /** Subscription Identifiers on the message (reused array). */
  readonly subIds: number[];
}

/**
 * Copies the properties of a PUBLISH received from a broker, buf[start, end), to `out` at `at`,
 * leaving out the ones that belong to that hop: Subscription Identifiers (ours), Topic Alias and
 * Message Expiry Interval (re-computed for each device). Returns the bytes written, or -1 when
 * the properties are malformed.
 */
export function forwardProperties(buf: Buffer, start: number, end: number, out: Buffer | null, at: number, scan: ForwardScan): number {
  scan.expiry = -1;
  scan.subIds.length = 0;
  let pos = start;
  let n = 0;
  while (pos < end) {
    const id = buf[pos];
    const kind = KIND[id];
    if (kind === undefined) return -1;
    const next = skipValue(buf, pos + 1, end, kind);
    if (next < 0) return -1;
    if (id === PROP_SUBSCRIPTION_ID) {
      scan.subIds.push(readVarint(buf, pos + 1, end));
    } else if (id === PROP_MESSAGE_EXPIRY) {
      scan.expiry = buf.readUInt32BE(pos + 1);
    } else if (id !== PROP_TOPIC_ALIAS) {
      if (out !== null) copyBytes(buf, pos, next, out, at + n);
      n += next - pos;
    }
    pos = next;
  }
  return n;
}
