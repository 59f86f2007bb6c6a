// The stand-in upstream (loadtest/sink.ts) as the harness runs it: a child process of its own,
// spoken to by a real MQTT client (mqtt.js) over 3.1.1 and 5, its tally read over IPC.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as mqtt from 'mqtt';
import { PROBE_ID } from '../../loadtest/mqtt-wire';
import { makeTempDir, removeTempDir } from '../../loadtest/procs';
import { SinkCounter, startSink } from '../../loadtest/sink';

function payload(pub: number, seq: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32BE(pub, 0);
  b.writeUInt32BE(seq, 4);
  b.writeDoubleBE(performance.timeOrigin + performance.now(), 8);
  return b;
}

test('sink: MQTT 3.1.1 and 5 clients connect, subscribe, publish at QoS 0/1/2; counts exact, duplicates and foreign apart', { timeout: 30_000 }, async () => {
  const dir = makeTempDir('sink-test');
  const { proc, port } = await startSink('upstream-b1', dir);
  try {
    const counter = await SinkCounter.attach('b1', proc, { devices: 2, messages: 100 });
    for (const protocolVersion of [4, 5] as const) {
      const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { protocolVersion, clientId: `t${protocolVersion}`, reconnectPeriod: 0 });
      const granted = await client.subscribeAsync({ 'a/#': { qos: 2 }, b: { qos: 1 } });
      assert.deepEqual(granted.map((g) => g.qos), [2, 1], `SUBACK grants what was asked (v${protocolVersion})`);
      await client.unsubscribeAsync('b');
      const pub = protocolVersion - 4; // publisher 0 over 3.1.1, 1 over 5
      // publishAsync resolves on PUBACK (QoS 1) and PUBCOMP (QoS 2): the handshakes complete.
      for (let seq = 0; seq < 30; seq++) await client.publishAsync('load/x', payload(pub, seq), { qos: (seq % 3) as 0 | 1 | 2 });
      await client.publishAsync('load/x', payload(pub, 7), { qos: 1 }); // a duplicate
      await client.publishAsync('load/x', Buffer.from('not ours'), { qos: 1 }); // foreign
      await client.endAsync();
    }
    const probe = mqtt.connect(`mqtt://127.0.0.1:${port}`, { protocolVersion: 5, reconnectPeriod: 0 });
    await new Promise((resolve) => probe.once('connect', resolve));
    probe.publish('load/probe', payload(PROBE_ID, 0), { qos: 0 });
    await probe.endAsync();
    const deadline = Date.now() + 5000;
    while (!counter.probeSeen && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(counter.probeSeen, true);
    const t = await counter.tally([60]);
    assert.deepEqual([t.broker, t.expected, t.received, t.distinct, t.missing, t.duplicates, t.foreign], ['b1', 60, 62, 60, 0, 2, 2]);
    assert.equal(t.e2e.count, 60);
    assert.ok(t.e2e.hdr.length > 0);
    await counter.close();
  } finally {
    await proc.stop();
    removeTempDir(dir);
  }
  assert.equal(proc.exitInfo?.code, 0, 'SIGTERM ends a sink with code 0');
});

test('sink: an MQTT 5 CONNACK carries a property length; the bridge flag (level 0x84) is accepted; PINGREQ answered', { timeout: 30_000 }, async () => {
  const net = await import('node:net');
  const dir = makeTempDir('sink-test');
  const { proc, port } = await startSink('upstream-b1', dir);
  try {
    const exchange = (bytes: number[], want: number): Promise<Buffer> =>
      new Promise((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => s.write(Buffer.from(bytes)));
        let got = Buffer.alloc(0);
        s.on('data', (d) => {
          got = Buffer.concat([got, d]);
          if (got.length >= want) {
            s.destroy();
            resolve(got);
          }
        });
        s.on('error', reject);
      });
    const connect = (level: number): number[] => [0x10, 12, 0, 4, 0x4d, 0x51, 0x54, 0x54, level, 0x02, 0, 0, 0, 0];
    // MQTT 5 CONNECT needs a property length after keep-alive: 13 bytes of variable header + empty client id.
    const v5 = [0x10, 13, 0, 4, 0x4d, 0x51, 0x54, 0x54, 5, 0x02, 0, 0, 0, 0, 0];
    assert.deepEqual([...(await exchange(v5, 5))], [0x20, 3, 0, 0, 0]);
    assert.deepEqual([...(await exchange(connect(0x84), 4))], [0x20, 2, 0, 0]);
    assert.deepEqual([...(await exchange([...connect(4), 0xc0, 0], 6))], [0x20, 2, 0, 0, 0xd0, 0]);
  } finally {
    await proc.stop();
    removeTempDir(dir);
  }
});
