// FANOUT_TRACE_CLIENTS: every packet of a matching device, both ways, and the broker traffic
// made on its behalf, logged decoded at info level; other devices are not traced.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess, type LogLine } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope } from '../helpers/wait';

describe('FANOUT_TRACE_CLIENTS', { timeout: 60_000 }, () => {
  const scope = new Scope();
  let up: Mosquitto;
  let daemon: DaemonProcess;

  before(async () => {
    up = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_TRACE_CLIENTS: 'sensor-*, gw-??' }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
  });
  after(() => scope.close());

  const traces = (pred: (l: LogLine) => boolean): LogLine[] => daemon.lines.filter((l) => l.trace !== undefined && pred(l));

  test('a matching device: CONNECT (password hidden) to DISCONNECT, both ways, and the broker PUBLISH/PUBACK for it', async () => {
    const dev = await connectClient(daemon.port, { clientId: 'sensor-17', username: 'u', password: 'hunter2' });
    await publish(dev, 'trace/t', 'payload', { qos: 1 });
    await dev.endAsync(); // a clean DISCONNECT
    const line = await daemon.waitForLog((l) => l.trace === 'in' && l.clientId === 'sensor-17' && (l.packet as { type: string }).type === 'disconnect');
    assert.ok(line);
    const types = (dir: string): string[] => traces((l) => l.clientId === 'sensor-17' && l.trace === dir).map((l) => (l.packet as { type: string }).type);
    assert.deepEqual(types('in'), ['connect', 'publish', 'disconnect']);
    assert.deepEqual(types('out'), ['connack', 'puback']);
    const connect = traces((l) => l.clientId === 'sensor-17' && (l.packet as { type: string }).type === 'connect')[0].packet as Record<string, unknown>;
    assert.equal(connect.username, 'u');
    assert.notEqual(connect.password, 'hunter2');
    assert.ok(!JSON.stringify(daemon.lines).includes('hunter2'), 'the password appears in no log line');
    const publishIn = traces((l) => l.clientId === 'sensor-17' && (l.packet as { type: string }).type === 'publish')[0].packet as Record<string, unknown>;
    assert.deepEqual({ topic: publishIn.topic, qos: publishIn.qos, payloadBytes: publishIn.payloadBytes }, { topic: 'trace/t', qos: 1, payloadBytes: 7 });
    const brokerSide = traces((l) => l.broker === 'up').map((l) => `${String(l.trace)} ${(l.packet as { type: string }).type}`);
    assert.deepEqual(brokerSide, ['out publish', 'in puback']);
  });

  test('devices the globs do not match are not traced (gw-?? needs exactly two characters)', async () => {
    for (const clientId of ['gw-123', 'other-sensor-1']) {
      const dev = await connectClient(daemon.port, { clientId });
      await publish(dev, 'trace/u', 'x', { qos: 1 });
      await closeClient(dev);
    }
    const dev = await connectClient(daemon.port, { clientId: 'gw-12' });
    await closeClient(dev);
    await daemon.waitForLog((l) => l.clientId === 'gw-12' && l.trace === 'in');
    assert.deepEqual(traces((l) => l.clientId === 'gw-123' || l.clientId === 'other-sensor-1'), []);
  });
});
