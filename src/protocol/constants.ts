// Packet types, reason codes and the constant packets built once at module load.

export const CONNECT = 1;
export const CONNACK = 2;
export const PUBLISH = 3;
export const PUBACK = 4;
export const PUBREC = 5;
export const PUBREL = 6;
export const PUBCOMP = 7;
export const SUBSCRIBE = 8;
export const SUBACK = 9;
export const UNSUBSCRIBE = 10;
export const UNSUBACK = 11;
export const PINGREQ = 12;
export const PINGRESP = 13;
export const DISCONNECT = 14;
export const AUTH = 15;

/** Fixed-header flag nibble each non-PUBLISH packet type must carry [MQTT-2.2.2-1]. */
export const REQUIRED_FLAGS: readonly number[] = [-1, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0];

// MQTT 5 reason codes used towards devices and read from brokers.
export const RC_SUCCESS = 0x00;
export const RC_NORMAL_DISCONNECT = 0x00;
export const RC_DISCONNECT_WITH_WILL = 0x04;
export const RC_NO_MATCHING_SUBSCRIBERS = 0x10;
export const RC_UNSPECIFIED = 0x80;
export const RC_MALFORMED = 0x81;
export const RC_PROTOCOL_ERROR = 0x82;
export const RC_IMPLEMENTATION_SPECIFIC = 0x83;
export const RC_UNSUPPORTED_PROTOCOL = 0x84;
export const RC_CLIENT_ID_NOT_VALID = 0x85;
export const RC_BAD_CREDENTIALS = 0x86;
export const RC_NOT_AUTHORIZED = 0x87;
export const RC_SERVER_UNAVAILABLE = 0x88;
export const RC_SERVER_SHUTTING_DOWN = 0x8b;
export const RC_QUOTA_EXCEEDED = 0x97;
export const RC_KEEP_ALIVE_TIMEOUT = 0x8d;
export const RC_SESSION_TAKEN_OVER = 0x8e;
export const RC_TOPIC_NAME_INVALID = 0x90;
export const RC_PACKET_ID_NOT_FOUND = 0x92;
export const RC_RECEIVE_MAX_EXCEEDED = 0x93;
export const RC_TOPIC_ALIAS_INVALID = 0x94;
export const RC_PACKET_TOO_LARGE = 0x95;
export const RC_QOS_NOT_SUPPORTED = 0x9b;
export const RC_SHARED_SUBS_NOT_SUPPORTED = 0x9e;
export const RC_WILDCARD_SUBS_NOT_SUPPORTED = 0xa2;

// MQTT 3.1.1 CONNACK return codes.
export const CONNACK_V4_BAD_PROTOCOL = 0x01;
export const CONNACK_V4_ID_REJECTED = 0x02;
export const CONNACK_V4_UNAVAILABLE = 0x03;
export const CONNACK_V4_NOT_AUTHORIZED = 0x05;

export const PINGRESP_PACKET = Buffer.from([PINGRESP << 4, 0]);
export const PINGREQ_PACKET = Buffer.from([PINGREQ << 4, 0]);
export const DISCONNECT_V4_PACKET = Buffer.from([DISCONNECT << 4, 0]);

/** A 2-byte-id acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP) without reason code. */
export function ackPacket(type: number, id: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  writeAck(b, 0, type, id);
  return b;
}

export function writeAck(b: Buffer, pos: number, type: number, id: number): number {
  b[pos] = (type << 4) | (type === PUBREL ? 2 : 0);
  b[pos + 1] = 2;
  b[pos + 2] = id >> 8;
  b[pos + 3] = id & 0xff;
  return pos + 4;
}

/** MQTT 5 acknowledgement carrying a reason code and no properties. */
export function writeAckV5(b: Buffer, pos: number, type: number, id: number, reason: number): number {
  if (reason === RC_SUCCESS) return writeAck(b, pos, type, id);
  b[pos] = (type << 4) | (type === PUBREL ? 2 : 0);
  b[pos + 1] = 3;
  b[pos + 2] = id >> 8;
  b[pos + 3] = id & 0xff;
  b[pos + 4] = reason;
  return pos + 5;
}

export function disconnectV5(reason: number): Buffer {
  return Buffer.from([DISCONNECT << 4, 1, reason]);
}
