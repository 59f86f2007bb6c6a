// Protocol tracing for chosen devices (FANOUT_TRACE_CLIENTS): which client ids match, and a
// decoded, log-friendly description of a packet (type, ids, flags, topic, sizes, properties).
// Only traced connections pay for any of this.

import * as mqttPacket from 'mqtt-packet';
import { varintSize, writeVarint } from './framer';

/** A matcher for comma-separated globs (`*` any run, `?` one character); null when empty. */
export function compileGlobs(list: string | null): RegExp | null {
  if (list === null) return null;
  const parts = list.split(',').map((g) => g.trim()).filter((g) => g !== '');
  if (parts.length === 0) return null;
  const alternatives = parts.map((g) => g.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.'));
  return new RegExp(`^(?:${alternatives.join('|')})$`, 's');
}

/** The whole packet from its first byte and its body (variable header and payload). */
export function packetBytes(header: number, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(1 + varintSize(body.length) + body.length);
  out[0] = header;
  const at = writeVarint(out, 1, body.length);
  body.copy(out, at);
  return out;
}

/** Decodes `bytes` (one or more whole packets) for a log line. Payloads are given as sizes. */
export function describePackets(bytes: Buffer, version: number): object[] {
  const out: object[] = [];
  const parser = mqttPacket.parser({ protocolVersion: version === 5 ? 5 : 4 });
  parser.on('packet', (p: mqttPacket.Packet) => out.push(describe(p)));
  parser.on('error', (err: Error) => out.push({ type: 'malformed', error: err.message, bytes: bytes.length }));
  parser.parse(bytes);
  return out;
}

function describe(p: mqttPacket.Packet): object {
  const d: Record<string, unknown> = { type: p.cmd };
  const any = p as unknown as Record<string, unknown>;
  for (const k of ['messageId', 'qos', 'dup', 'retain', 'topic', 'clientId', 'clean', 'keepalive', 'protocolVersion',
    'returnCode', 'reasonCode', 'sessionPresent', 'granted', 'unsubscriptions', 'username']) {
    if (any[k] !== undefined) d[k] = any[k];
  }
  if (p.cmd === 'connect') {
    if (p.password !== undefined) d.password = '***';
    if (p.will) d.will = { topic: p.will.topic, qos: p.will.qos, retain: p.will.retain, payloadBytes: p.will.payload?.length ?? 0 };
  }
  if (p.cmd === 'subscribe') d.subscriptions = p.subscriptions;
  if (p.cmd === 'publish') d.payloadBytes = typeof p.payload === 'string' ? Buffer.byteLength(p.payload) : p.payload.length;
  if (p.length !== undefined) d.bytes = p.length;
  if (any.properties !== undefined) {
    const props = { ...(any.properties as Record<string, unknown>) };
    for (const [k, v] of Object.entries(props)) if (Buffer.isBuffer(v)) props[k] = `<${v.length} bytes>`;
    d.properties = props;
  }
  return d;
}
