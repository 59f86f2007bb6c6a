// Minimal MQTT 3.1.1 / 5.0 wire helpers shared by the load generator, the probe
// and the receivers. mqtt-packet's parser allocates an object per packet, which
// at a million packets per run would measure our GC rather than the target, so
// the hot paths (PUBLISH out, PUBACK in, PUBLISH in) are framed by hand here.
import * as net from 'node:net';
import * as tls from 'node:tls';
import { generate, parser, IConnackPacket, Packet } from 'mqtt-packet';

export const PACKET = {
  CONNACK: 2,
  PUBLISH: 3,
  PUBACK: 4,
  PUBREC: 5,
  PUBREL: 6,
  PUBCOMP: 7,
  SUBACK: 9,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
} as const;

export type Qos = 0 | 1 | 2;
/** MQTT protocol level: 4 = 3.1.1, 5 = 5.0. */
export type ProtocolLevel = 4 | 5;

/** Reserved publisher id for readiness probes; receivers never count it. */
export const PROBE_ID = 0xffffffff;
/** publisher id u32 + sequence u32 + send timestamp f64. */
export const PAYLOAD_HEADER_BYTES = 16;

/** Called with the first byte of the fixed header and the frame body's span. */
export type FrameHandler = (header: number, buf: Buffer, start: number, length: number) => void;

/**
 * Splits a byte stream into MQTT frames. Bodies are handed out as spans of the
 * incoming chunk (no copy); only a frame cut across chunks costs a concat.
 */
export class Framer {
  private rest: Buffer | null = null;

  constructor(public onFrame: FrameHandler) {}

  push(chunk: Buffer): void {
    const buf = this.rest === null ? chunk : Buffer.concat([this.rest, chunk]);
    this.rest = null;
    const end = buf.length;
    let pos = 0;
    while (end - pos >= 2) {
      const header = buf[pos];
      let len = 0;
      let mult = 1;
      let i = pos + 1;
      let complete = false;
      while (i < end) {
        const b = buf[i++];
        len += (b & 0x7f) * mult;
        if ((b & 0x80) === 0) {
          complete = true;
          break;
        }
        mult *= 128;
        if (i - pos > 4) throw new Error('malformed MQTT remaining length');
      }
      if (!complete || end - i < len) break;
      pos = i + len;
      this.onFrame(header, buf, i, len);
    }
    if (pos < end) this.rest = buf.subarray(pos);
  }
}

/** An MQTT variable byte integer at `p`, and the offset after it. */
export function readVarint(buf: Buffer, p: number): { value: number; next: number } {
  let value = 0;
  let mult = 1;
  for (let i = 0; i < 4; i++) {
    const b = buf[p++];
    value += (b & 0x7f) * mult;
    if ((b & 0x80) === 0) break;
    mult *= 128;
  }
  return { value, next: p };
}

function varintBytes(n: number): number {
  return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

export function writeVarint(buf: Buffer, offset: number, value: number): number {
  let v = value;
  do {
    let b = v % 128;
    v = Math.floor(v / 128);
    if (v > 0) b |= 0x80;
    buf[offset++] = b;
  } while (v > 0);
  return offset;
}

/** Layout of one PUBLISH frame for a fixed topic and payload size. */
export interface PublishLayout {
  /** Complete frame with zeroed packet id, sequence and timestamp. */
  template: Buffer;
  /** Offset of the packet id, or -1 at QoS 0. */
  pidOffset: number;
  payloadOffset: number;
}

/** MQTT 5 adds a property length (0: no properties) after the packet id. */
export function publishLayout(topic: string, qos: Qos, payloadSize: number, publisherId: number, protocol: ProtocolLevel = 4): PublishLayout {
  const topicBytes = Buffer.from(topic, 'utf8');
  const props = protocol === 5 ? 1 : 0;
  const remaining = 2 + topicBytes.length + (qos > 0 ? 2 : 0) + props + payloadSize;
  const template = Buffer.alloc(1 + varintBytes(remaining) + remaining);
  template[0] = 0x30 | (qos << 1);
  let p = writeVarint(template, 1, remaining);
  template.writeUInt16BE(topicBytes.length, p);
  p += 2;
  topicBytes.copy(template, p);
  p += topicBytes.length;
  const pidOffset = qos > 0 ? p : -1;
  if (qos > 0) p += 2;
  p += props; // the property length byte is already 0
  template.writeUInt32BE(publisherId >>> 0, p);
  return { template, pidOffset, payloadOffset: p };
}

/** Wall-clock milliseconds with sub-ms resolution, comparable across threads and processes. */
export function wallNow(): number {
  return performance.timeOrigin + performance.now();
}

export function topicFor(pattern: string, id: number | string): string {
  return pattern.split('{id}').join(String(id));
}

/**
 * Subscription filter covering every topic the pattern can produce: everything
 * below the levels that precede the `{id}` level (`load/{id}` -> `load/#`).
 */
export function filterFor(pattern: string): string {
  const levels = pattern.split('/');
  const idx = levels.findIndex((l) => l.includes('{id}'));
  if (idx < 0) return pattern;
  return [...levels.slice(0, idx), '#'].join('/');
}

export interface ConnectSettings {
  protocol?: ProtocolLevel;
  /** Seconds; 0 (the default) disables keep-alive, so no PINGREQ traffic lands in the figures. */
  keepalive?: number;
  /** Clean session (3.1.1) / clean start (5); default true. */
  clean?: boolean;
  /** For a target that authenticates devices (the auth scenario). */
  username?: string;
  password?: string;
}

export function encodeConnect(clientId: string, s: ConnectSettings = {}): Buffer {
  const protocolVersion = s.protocol ?? 4;
  return generate({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion,
    clean: s.clean ?? true,
    keepalive: s.keepalive ?? 0,
    clientId,
    ...(s.username === undefined ? {} : { username: s.username }),
    ...(s.password === undefined ? {} : { password: Buffer.from(s.password) }),
    ...(protocolVersion === 5 ? { properties: {} } : {}),
  });
}

export function encodeSubscribe(filter: string, qos: Qos): Buffer {
  return generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos }] });
}

export function ackFrame(type: number, pid: number, target: Buffer, offset: number): number {
  // PUBREL carries the mandatory 0b0010 flags; the other acks have none.
  target[offset] = (type << 4) | (type === PACKET.PUBREL ? 0x02 : 0);
  target[offset + 1] = 2;
  target.writeUInt16BE(pid, offset + 2);
  return offset + 4;
}

export const PINGREQ_FRAME = Buffer.from([0xc0, 0x00]);
const DISCONNECT_FRAME = Buffer.from([0xe0, 0x00]);

/**
 * MQTT 5 acks may carry a reason code after the packet id; 0x80 and above
 * means the publish was refused. A 3.1.1 ack (length 2) never refuses.
 */
export function ackRefused(buf: Buffer, start: number, length: number): boolean {
  return length >= 3 && buf[start + 2] >= 0x80;
}

/**
 * What a device or subscriber needs of its connection: a net.Socket, or a
 * WebSocket link (mqtt-ws.ts) that behaves like one for these calls.
 */
export interface MqttSocket {
  readonly destroyed: boolean;
  /** False when the caller should wait for 'drain' before writing more. */
  write(chunk: Uint8Array, cb?: (err?: Error | null) => void): boolean;
  /** Writes `chunk`, then closes. */
  end(chunk: Uint8Array): unknown;
  destroy(): unknown;
  on(event: 'drain' | 'close', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  once(event: 'close', listener: () => void): unknown;
}

/** Sends DISCONNECT and resolves once the peer closed (or after `graceMs`, by force). */
export function disconnect(socket: MqttSocket | null, graceMs = 2000): Promise<void> {
  return new Promise((resolve) => {
    if (!socket || socket.destroyed) return resolve();
    const timer = setTimeout(() => socket.destroy(), graceMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.end(DISCONNECT_FRAME);
  });
}

/** Why a connection attempt failed: the server said no, it never answered, or anything else. */
export type ConnectFailure = 'refused' | 'timeout' | 'error';

export class ConnectError extends Error {
  constructor(
    message: string,
    readonly kind: ConnectFailure,
  ) {
    super(message);
  }
}

export interface ConnackInfo {
  sessionPresent: boolean;
  /** MQTT 5 Receive Maximum, 65535 when absent (3.1.1 has no such limit). */
  receiveMaximum: number;
}

/** Decodes a CONNACK body; MQTT 5 properties go through mqtt-packet (once per connection, not hot). */
export function parseConnack(buf: Buffer, start: number, length: number, protocol: ProtocolLevel): { code: number; info: ConnackInfo } {
  const info: ConnackInfo = { sessionPresent: (buf[start] & 1) === 1, receiveMaximum: 65535 };
  const code = buf[start + 1];
  if (protocol === 5 && length > 2 && code === 0) {
    const frame = Buffer.alloc(1 + varintBytes(length) + length);
    frame[0] = PACKET.CONNACK << 4;
    buf.copy(frame, writeVarint(frame, 1, length), start, start + length);
    const p = parser({ protocolVersion: 5 });
    p.on('packet', (pkt: Packet) => {
      const max = (pkt as IConnackPacket).properties?.receiveMaximum;
      if (typeof max === 'number' && max > 0) info.receiveMaximum = max;
    });
    p.parse(frame);
  }
  return { code, info };
}

export interface ConnectOptions extends ConnectSettings {
  timeoutMs?: number;
  onConnack?: (info: ConnackInfo) => void;
  /** MQTT over TLS: the PEM CA the target's certificate is verified against. */
  tlsCa?: string;
}

/**
 * The first frame of a connection must be a CONNACK that accepts it: `ok` is
 * called with what it says, `fail` with why not.
 */
export function connackGate(protocol: ProtocolLevel, ok: (info: ConnackInfo) => void, fail: (err: ConnectError) => void): FrameHandler {
  return (header, buf, start, length) => {
    if (header >> 4 !== PACKET.CONNACK || length < 2) {
      fail(new ConnectError(`expected CONNACK, got packet type ${header >> 4}`, 'error'));
      return;
    }
    const { code, info } = parseConnack(buf, start, length, protocol);
    if (code !== 0) fail(new ConnectError(`CONNACK refused with ${protocol === 5 ? 'reason' : 'return'} code ${code}`, 'refused'));
    else ok(info);
  };
}

/**
 * Opens a TCP connection (a TLS one with `opts.tlsCa`, verifying the target's
 * certificate) and completes the MQTT CONNECT handshake. Frames that follow
 * the CONNACK (possibly in the same chunk) go to `onFrame`. Rejects with a
 * ConnectError whose `kind` tells refusals from timeouts and errors.
 */
export function connectRaw(host: string, port: number, clientId: string, onFrame: FrameHandler, opts: ConnectOptions = {}): Promise<net.Socket> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const protocol = opts.protocol ?? 4;
  const secure = opts.tlsCa !== undefined;
  return new Promise((resolve, reject) => {
    // tls.TLSSocket is a net.Socket: the devices use it the same way.
    const socket: net.Socket = secure ? tls.connect({ host, port, ca: opts.tlsCa, servername: net.isIP(host) ? undefined : host }) : net.connect({ host, port });
    socket.setNoDelay(true);
    let settled = false;
    const fail = (err: ConnectError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const onError = (err: NodeJS.ErrnoException): void =>
      fail(new ConnectError(err.message, err.code === 'ECONNREFUSED' ? 'refused' : 'error'));
    const timer = setTimeout(() => fail(new ConnectError(`CONNACK timeout from ${host}:${port} for ${clientId}`, 'timeout')), timeoutMs);
    const framer = new Framer(
      connackGate(
        protocol,
        (info) => {
          settled = true;
          clearTimeout(timer);
          socket.off('error', onError);
          socket.off('close', onEarlyClose);
          framer.onFrame = onFrame;
          opts.onConnack?.(info);
          resolve(socket);
        },
        fail,
      ),
    );
    const onEarlyClose = (): void => fail(new ConnectError(`connection to ${host}:${port} closed before CONNACK`, 'error'));
    socket.on('data', (chunk: Buffer) => {
      try {
        framer.push(chunk);
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    socket.once('error', onError);
    socket.once('close', onEarlyClose);
    socket.once(secure ? 'secureConnect' : 'connect', () => socket.write(encodeConnect(clientId, opts)));
  });
}
