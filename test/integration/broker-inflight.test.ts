// An MQTT 3.1.1 broker cannot announce how many publishes it takes in flight: mosquitto closes
// a 3.1.1 connection with more than its max_inflight_messages (20 by default) unacknowledged.
// The broker URL's `inflight=auto` (the default: 20 for 3.1.1) keeps the writer under it: a
// burst of QoS 2 publishes all arrive over the one connection, never re-established; above the
// broker's limit the connection is closed again after every re-send.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Collector, closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, waitFor } from '../helpers/wait';

const MESSAGES = 400;

describe('publishes in flight towards an MQTT 3.1.1 broker', { timeout: 120_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  /** Publishes MESSAGES QoS 2 messages at once; returns how many arrived and the reconnects. */
  async function burst(inflight: number | null): Promise<{ arrived: number; reconnects: number }> {
    const s = new Scope();
    try {
      const broker = s.use(await Mosquitto.start({ extraConfig: ['max_inflight_messages 20'] }));
      const params: Record<string, string | number> = { pool: 1, protocol: '3.1.1' };
      if (inflight !== null) params.inflight = inflight;
      const daemon = s.use(await DaemonProcess.start({ FANOUT_BROKERS: `b=${broker.url(params)}`, FANOUT_ACK: 'local' }));
      await waitPoolOnline(broker.port, daemon.proxyId, 'b', 1);
      const run = `inflight/${process.pid}-${inflight ?? 'default'}`;
      const at = s.use(await Collector.start(broker.port, `${run}/#`, { qos: 2 }));
      const device = await connectClient(daemon.port, { clientId: `inflight-${process.pid}-${inflight ?? 'default'}` });
      s.defer(() => closeClient(device));
      await Promise.all(Array.from({ length: MESSAGES }, (_, i) => publish(device, `${run}/${i}`, String(i), { qos: 2 })));
      const distinct = (): number => new Set(at.messages.map((m) => m.topic)).size;
      const reconnects = (): number => daemon.lines.filter((l) => l.msg === 'broker connected').length - 1;
      if (inflight === null) {
        await waitFor(`${MESSAGES} messages at the broker`, () => distinct() >= MESSAGES, { timeoutMs: 60_000, detail: () => `${distinct()} arrived` });
      } else {
        await waitFor('the broker to close the connection', () => reconnects() >= 2, { timeoutMs: 30_000, detail: () => `${distinct()} arrived` });
      }
      return { arrived: distinct(), reconnects: reconnects() };
    } finally {
      await s.close();
    }
  }

  test('with the default inflight (auto: 20) every message arrives over one connection; with 100 mosquitto keeps closing it', async (t) => {
    const within = await burst(null);
    t.diagnostic(`inflight auto: ${within.arrived} arrived, ${within.reconnects} reconnects`);
    assert.equal(within.arrived, MESSAGES);
    assert.equal(within.reconnects, 0, 'the broker connection was never closed');
    const above = await burst(100);
    t.diagnostic(`inflight 100: ${above.arrived} arrived, ${above.reconnects} reconnects`);
    assert.ok(above.reconnects >= 2, 'above the broker limit mosquitto closes the connection (else this test proves nothing)');
  });
});
