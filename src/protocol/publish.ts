// Zero-copy PUBLISH decoding for the device hot path, and PUBLISH encoding towards brokers.
// mqtt-packet stays the parser of record for every other packet; test/protocol/publish.test.ts
// feeds the same bytes (fuzzed too) to both and requires the same result.

import { readVarint, varintEnd, varintSize, writeVarint } from './framer';
import { isValidMqttString, scanPublishProperties, type PropertyScan } from './properties';
import { PUBLISH, RC_MALFORMED, RC_PROTOCOL_ERROR, RC_TOPIC_NAME_INVALID } from './constants';
import { copyBytes } from './bytes';

/** Result of decodePublish; one instance is reused per shard. Offsets index into `buf`. */
export class PublishView implements PropertyScan {
  buf: Buffer = Buffer.alloc(0);
  qos = 0;
  dup = false;
  retain = false;
  topicStart = 0;
  topicEnd = 0;
  messageId = 0;
  propsStart = 0;
  propsEnd = 0;
  payloadStart = 0;
  payloadEnd = 0;
  // PropertyScan
  error = 0;
  topicAlias = 0;
  aliasStart = -1;

  topic(): string {
    return this.buf.toString('utf8', this.topicStart, this.topicEnd);
  }
}

/**
 * Decodes a PUBLISH whose variable header and payload are buf[start, end). Returns 0, or the
 * reason code to close the connection with: RC_MALFORMED for structure (QoS 3, DUP at QoS 0,
 * truncated fields, bad UTF-8, bad properties), RC_PROTOCOL_ERROR for a zero packet id,
 * RC_TOPIC_NAME_INVALID for wildcards (in the topic or the Response Topic) or an empty topic
 * without alias.
 */
export function decodePublish(header: number, buf: Buffer, start: number, end: number, version: number, out: PublishView): number {
  out.buf = buf;
  out.qos = (header >> 1) & 3;
  out.dup = (header & 8) !== 0;
  out.retain = (header & 1) !== 0;
  out.topicAlias = 0;
  out.aliasStart = -1;
  if (out.qos === 3) return RC_MALFORMED;
  // DUP only where there can be a retransmission [MQTT-3.3.1-2].
  if (out.qos === 0 && out.dup) return RC_MALFORMED;
  if (start + 2 > end) return RC_MALFORMED;
  const topicLen = buf.readUInt16BE(start);
  out.topicStart = start + 2;
  out.topicEnd = out.topicStart + topicLen;
  let pos = out.topicEnd;
  if (pos > end) return RC_MALFORMED;
  if (out.qos > 0) {
    if (pos + 2 > end) return RC_MALFORMED;
    out.messageId = buf.readUInt16BE(pos);
    pos += 2;
  } else {
    out.messageId = 0;
  }
  if (version === 5) {
    const propLen = readVarint(buf, pos, end);
    if (propLen < 0) return RC_MALFORMED;
    out.propsStart = varintEnd;
    out.propsEnd = varintEnd + propLen;
    if (out.propsEnd > end) return RC_MALFORMED;
    if (propLen > 0) {
      scanPublishProperties(buf, out.propsStart, out.propsEnd, out);
      if (out.error !== 0) return out.error;
    }
    pos = out.propsEnd;
  } else {
    out.propsStart = out.propsEnd = pos;
  }
  out.payloadStart = pos;
  out.payloadEnd = end;
  if (!isValidMqttString(buf, out.topicStart, out.topicEnd)) return RC_MALFORMED;
  if (out.qos > 0 && out.messageId === 0) return RC_PROTOCOL_ERROR;
  if (topicLen === 0 && out.topicAlias === 0) return version === 5 ? RC_PROTOCOL_ERROR : RC_TOPIC_NAME_INVALID;
  for (let i = out.topicStart; i < out.topicEnd; i++) {
    const c = buf[i];
    if (c === 0x23 || c === 0x2b) return RC_TOPIC_NAME_INVALID;
  }
  return 0;
}

/** Size of a PUBLISH packet with these parts (props = property bytes without their length). */
export function publishSize(topicLen: number, qos: number, propsLen: number, payloadLen: number, v5: boolean): number {
  let rem = 2 + topicLen + (qos > 0 ? 2 : 0) + payloadLen;
  if (v5) rem += varintSize(propsLen) + propsLen;
  return 1 + varintSize(rem) + rem;
}

/**
 * Writes a PUBLISH up to its property bytes (fixed header, topic, packet id, and for MQTT 5 the
 * property length). The caller copies `propsLen` property bytes and then `payloadLen` payload
 * bytes at the returned position.
 */
export function encodePublishHead(
  out: Buffer, pos: number, qos: number, retain: boolean, id: number,
  topicSrc: Buffer, topicStart: number, topicLen: number, v5: boolean, propsLen: number, payloadLen: number,
): number {
  let rem = 2 + topicLen + (qos > 0 ? 2 : 0) + payloadLen;
  if (v5) rem += varintSize(propsLen) + propsLen;
  out[pos++] = (PUBLISH << 4) | (qos << 1) | (retain ? 1 : 0);
  pos = writeVarint(out, pos, rem);
  out[pos++] = topicLen >> 8;
  out[pos++] = topicLen & 0xff;
  pos += copyBytes(topicSrc, topicStart, topicStart + topicLen, out, pos);
  if (qos > 0) {
    out[pos++] = id >> 8;
    out[pos++] = id & 0xff;
  }
  if (v5) pos = writeVarint(out, pos, propsLen);
  return pos;
}

/** Encodes a whole PUBLISH whose topic, properties and payload all lie in `src`. */
export function encodePublish(
  out: Buffer, pos: number, qos: number, retain: boolean, id: number,
  src: Buffer, topicStart: number, topicLen: number,
  propsStart: number, propsLen: number, v5: boolean,
  payloadStart: number, payloadLen: number,
): number {
  pos = encodePublishHead(out, pos, qos, retain, id, src, topicStart, topicLen, v5, v5 ? propsLen : 0, payloadLen);
  if (v5) pos += copyBytes(src, propsStart, propsStart + propsLen, out, pos);
  pos += copyBytes(src, payloadStart, payloadStart + payloadLen, out, pos);
  return pos;
}
