// CONNECT decoding (mqtt-packet is the parser of record) and CONNACK encoding, for both
// protocol levels. Kept off the hot path: it runs once per connection.

import * as mqttPacket from 'mqtt-packet';
import { readVarint, varintEnd } from './framer';
import { CONNECT_ALLOWED, isValidMqttString, propertyFault, WILL_ALLOWED } from './properties';
import {
  CONNACK, CONNACK_V4_BAD_PROTOCOL, CONNACK_V4_ID_REJECTED, RC_MALFORMED, RC_PROTOCOL_ERROR,
  RC_UNSUPPORTED_PROTOCOL,
} from './constants';

export interface ConnectOk {
  ok: true;
  version: 3 | 4 | 5;
  packet: mqttPacket.IConnectPacket;
}

export interface ConnectRefused {
  ok: false;
  /** Protocol level to answer with, or 0 to close without CONNACK. */
  version: 0 | 4 | 5;
  /** CONNACK return/reason code. */
  code: number;
  reason: string;
}

export type ConnectResult = ConnectOk | ConnectRefused;

/** Decodes a CONNECT whose fixed header starts at packet[packetStart] and whose body is
 *  packet[bodyStart, bodyEnd). */
export function decodeConnect(packet: Buffer, packetStart: number, bodyStart: number, bodyEnd: number): ConnectResult {
  // Protocol name and level are read by hand first, so an unsupported level gets the CONNACK
  // code the client's own version understands rather than a generic parse error.
  if (bodyStart + 2 > bodyEnd) return refuse(0, 0, 'truncated CONNECT');
  const nameLen = packet.readUInt16BE(bodyStart);
  const levelAt = bodyStart + 2 + nameLen;
  if (levelAt >= bodyEnd) return refuse(0, 0, 'truncated CONNECT');
  const name = packet.toString('latin1', bodyStart + 2, levelAt);
  const level = packet[levelAt];
  if (name !== 'MQTT' && name !== 'MQIsdp') return refuse(0, 0, `unknown protocol name ${JSON.stringify(name)}`);
  const expected = name === 'MQIsdp' ? 3 : level === 5 ? 5 : 4;
  if (level !== expected) {
    return level === 5 || level > 5
      ? refuse(level === 5 ? 5 : 4, level === 5 ? RC_UNSUPPORTED_PROTOCOL : CONNACK_V4_BAD_PROTOCOL, `unsupported protocol level ${level}`)
      : refuse(4, CONNACK_V4_BAD_PROTOCOL, `unsupported protocol level ${level}`);
  }
  const version = level as 3 | 4 | 5;
  const answerAs: 4 | 5 = version === 5 ? 5 : 4;

  const { packet: parsed, error } = parseWhole(packet.subarray(packetStart, bodyEnd));
  if (error || !parsed || parsed.cmd !== 'connect') {
    return refuse(answerAs === 5 ? 5 : 0, RC_MALFORMED, `malformed CONNECT: ${error?.message ?? 'incomplete'}`);
  }
  const connect = parsed as mqttPacket.IConnectPacket;

  // mqtt-packet decodes strings leniently; the client id must be well-formed UTF-8 [MQTT-1.5.4].
  let idAt = levelAt + 1 + 1 + 2;
  if (version === 5) {
    const propLen = readVarint(packet, idAt, bodyEnd);
    idAt = varintEnd + propLen;
    const fault = propertyFault(packet, varintEnd, idAt, CONNECT_ALLOWED);
    if (fault === RC_MALFORMED) return refuse(5, RC_MALFORMED, 'CONNECT property malformed or not allowed in CONNECT');
    // A repeated Session Expiry Interval reached us as an array: a session that never ended.
    if (fault === RC_PROTOCOL_ERROR) return refuse(5, RC_PROTOCOL_ERROR, 'a CONNECT property repeated or out of range');
    const props = connect.properties;
    if (props?.authenticationData !== undefined && props.authenticationMethod === undefined) {
      return refuse(5, RC_PROTOCOL_ERROR, 'Authentication Data without Authentication Method');
    }
  }
  // Client id, will topic and user name are checked on the raw bytes.
  const flags = packet[levelAt + 1];
  let at = idAt;
  const badString = (): boolean => {
    const len = packet.readUInt16BE(at);
    const ok = isValidMqttString(packet, at + 2, at + 2 + len);
    at += 2 + len;
    return !ok;
  };
  // Will QoS 3, or a will QoS or retain flag without the will flag [MQTT-3.1.2-11, -13, -14, -15].
  if ((flags & 0x18) === 0x18 || (!(flags & 0x04) && (flags & 0x38) !== 0)) {
    return refuse(answerAs === 5 ? 5 : 0, RC_MALFORMED, 'invalid will flags');
  }
  if (badString()) return refuse(answerAs === 5 ? 5 : 0, RC_MALFORMED, 'client id is not valid UTF-8');
  if (flags & 0x04) {
    if (version === 5) {
      const willPropsLen = readVarint(packet, at, bodyEnd); // mqtt-packet parsed it: in bounds
      const willPropsEnd = varintEnd + willPropsLen; // read now: walking the properties reads varints too
      const fault = propertyFault(packet, varintEnd, willPropsEnd, WILL_ALLOWED);
      if (fault === RC_MALFORMED) return refuse(5, RC_MALFORMED, 'will property malformed or not allowed in a will');
      if (fault === RC_PROTOCOL_ERROR) return refuse(5, RC_PROTOCOL_ERROR, 'a will property repeated or out of range');
      if (fault !== 0) return refuse(5, fault, 'will Response Topic is no topic name');
      at = willPropsEnd;
    }
    if (badString()) return refuse(answerAs === 5 ? 5 : 0, RC_MALFORMED, 'will topic is not valid UTF-8');
    at += 2 + packet.readUInt16BE(at);
  }
  if ((flags & 0x80) && badString()) return refuse(answerAs === 5 ? 5 : 0, RC_MALFORMED, 'user name is not valid UTF-8');
  // MQTT 3.1.1: a password only with a user name [MQTT-3.1.2-22].
  if (version !== 5 && (flags & 0xc0) === 0x40) return refuse(0, RC_MALFORMED, 'password without user name');
  if (flags & 0x40) at += 2 + packet.readUInt16BE(at);
  // The fields the flags announce must use up the Remaining Length [MQTT-3.1.4-1].
  if (at !== bodyEnd) return refuse(answerAs === 5 ? 5 : 0, RC_MALFORMED, 'bytes after the last CONNECT field');
  if (connect.will && /[+#]/.test(connect.will.topic)) {
    return refuse(answerAs === 5 ? 5 : 0, 0x90, 'will topic contains a wildcard');
  }
  const id = connect.clientId;
  if (version === 3 && (id.length === 0 || Buffer.byteLength(id) > 23)) {
    return refuse(4, CONNACK_V4_ID_REJECTED, 'MQTT 3.1 client id must be 1-23 bytes');
  }
  if (id.length === 0 && version === 4 && !connect.clean) {
    return refuse(4, CONNACK_V4_ID_REJECTED, 'empty client id requires clean session');
  }
  return { ok: true, version, packet: connect };
}

// One mqtt-packet parser per thread for CONNECTs only: parsing a CONNECT rewrites the parser's
// protocol settings, so it must not be shared with the parsers of other packets. Creating a
// parser per connection was a large part of the cost of a connection storm.
let connectParser: mqttPacket.Parser | null = null;
let lastPacket: mqttPacket.Packet | undefined;
let lastError: Error | undefined;

function parseWhole(bytes: Buffer): { packet?: mqttPacket.Packet; error?: Error } {
  if (connectParser === null) {
    connectParser = mqttPacket.parser();
    connectParser.on('packet', (p: mqttPacket.Packet) => { lastPacket = p; });
    connectParser.on('error', (e: Error) => { lastError ??= e; });
  }
  lastPacket = undefined;
  lastError = undefined;
  const left = connectParser.parse(bytes);
  const result = { packet: lastPacket, error: lastError ?? (left !== 0 ? new Error('trailing bytes') : undefined) };
  if (result.error || !result.packet) connectParser = null; // may hold partial state
  return result;
}

function refuse(version: 0 | 4 | 5, code: number, reason: string): ConnectRefused {
  return { ok: false, version, code: code || (version === 5 ? RC_MALFORMED : 0), reason };
}

export interface ConnackOptions {
  sessionPresent: boolean;
  receiveMaximum: number;
  maximumPacketSize: number;
  topicAliasMaximum: number;
  assignedClientIdentifier?: string;
  /** Set when the server shortens the session expiry the client asked for [MQTT-3.2.2.3.2]. */
  sessionExpiryInterval?: number;
}

/** CONNACK for protocol level `version` (3 and 4 share the 3.1.1 form). */
export function encodeConnack(version: number, code: number, opts?: ConnackOptions): Buffer {
  if (version !== 5) return Buffer.from([CONNACK << 4, 2, opts?.sessionPresent ? 1 : 0, code]);
  const properties: mqttPacket.IConnackPacket['properties'] = {};
  if (opts && code === 0) {
    properties.receiveMaximum = opts.receiveMaximum;
    properties.maximumPacketSize = opts.maximumPacketSize;
    properties.topicAliasMaximum = opts.topicAliasMaximum;
    properties.retainAvailable = true;
    if (opts.assignedClientIdentifier) properties.assignedClientIdentifier = opts.assignedClientIdentifier;
    if (opts.sessionExpiryInterval !== undefined) properties.sessionExpiryInterval = opts.sessionExpiryInterval;
  }
  return mqttPacket.generate(
    { cmd: 'connack', returnCode: code, reasonCode: code, sessionPresent: !!opts?.sessionPresent, properties },
    { protocolVersion: 5 },
  );
}
