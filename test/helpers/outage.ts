// What the broker outage tests assert with: QoS 1 publishes on a topic each, the distinct topics
// a broker received, and which of them a broker acknowledged (from the daemon's trace lines),
// since a broker killed with -9 loses what it acknowledged and had not passed on yet.

import assert from 'node:assert/strict';
import type { MqttClient } from 'mqtt';
import { type Collector, publish } from './clients';
import type { LogLine } from './daemon';
import { sleep, waitFor } from './wait';

export function distinct(c: Collector, prefix: string): Set<string> {
  const s = new Set<string>();
  for (const m of c.messages) if (m.topic.startsWith(prefix)) s.add(m.topic);
  return s;
}

/**
 * The topics a broker acknowledged (PUBACK) before `before` (ms since the epoch), from the
 * daemon's trace lines: each `out` line names the packet id a message went out with on one
 * broker connection, each `in` line the id the broker acknowledged on it.
 */
export function ackedBy(lines: LogLine[], broker: string, before: number): Set<string> {
  const topicOf = new Map<string, string>();
  const acked = new Set<string>();
  for (const l of lines) {
    if (l.broker !== broker || typeof l.time !== 'number') continue;
    const packet = l.packet as { type?: string; messageId?: number; topic?: string } | undefined;
    if (packet?.messageId === undefined) continue;
    const key = `${String(l.clientId)}/${packet.messageId}`;
    if (l.trace === 'out' && packet.topic !== undefined) topicOf.set(key, packet.topic);
    else if (l.trace === 'in' && packet.type === 'puback' && l.time < before) {
      const topic = topicOf.get(key);
      if (topic !== undefined) acked.add(topic);
    }
  }
  return acked;
}

export async function waitAllAt(c: Collector, name: string, prefix: string, expected: string[], timeoutMs: number): Promise<void> {
  const missingNow = (): number => { const got = distinct(c, prefix); return expected.filter((t) => !got.has(t)).length; };
  await waitFor(`all ${expected.length} messages at ${name}`, () => missingNow() === 0, {
    timeoutMs,
    detail: () => {
      const got = distinct(c, prefix);
      const missing = expected.filter((t) => !got.has(t));
      return `${got.size} distinct of ${expected.length}; missing e.g. ${missing.slice(0, 10).join(', ')}`;
    },
  });
  const got = distinct(c, prefix);
  const missing = expected.filter((t) => !got.has(t));
  assert.deepEqual(missing, [], `${name} is missing ${missing.length} messages`);
}

/** Publishes `topics` at QoS 1 (retained), at most `window` unacknowledged, `burst` per tick. */
export class Publisher {
  sent = 0;
  acked = 0;
  readonly errors: Error[] = [];

  constructor(readonly client: MqttClient, readonly topics: string[]) {}

  async run(window = 50, burst = 10, tickMs = 20): Promise<void> {
    const pending = new Set<Promise<void>>();
    for (const topic of this.topics) {
      while (pending.size >= window) await Promise.race(pending);
      const p: Promise<void> = publish(this.client, topic, topic, { qos: 1, retain: true }, 120_000).then(
        () => { this.acked++; },
        (err: Error) => { this.errors.push(err); },
      ).finally(() => pending.delete(p));
      pending.add(p);
      this.sent++;
      if (this.sent % burst === 0) await sleep(tickMs);
    }
    await Promise.all(pending);
  }
}
