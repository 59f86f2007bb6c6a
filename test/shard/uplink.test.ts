// Unit tests for the shard's uplink (src/shard/uplink.ts) as per-device upstream mode uses it:
// a device's will does not go to brokers where the device has a session of its own (they publish
// it themselves) and that plan does not stick to the publishes after it; a device's end is a
// record of its own, in the ring, behind its publishes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Uplink, type UplinkMessage } from '../../src/shard/uplink';
import { Doorbell, createDoorbell } from '../../src/ring/doorbell';
import { createRing, RingConsumer, RingProducer, type RingBuffers } from '../../src/ring/spsc';
import { CLOSE_CLEAN, NO_TOKEN, REC_DEVICE_CLOSE, REC_PUBLISH, UPLINK_HEADER } from '../../src/ring/records';
import { RouteTable } from '../../src/config/routes';

function message(topic: string, will = false): UplinkMessage {
  const bytes = Buffer.from(`${topic}payload`);
  return {
    qos: 1, retain: false, v5: false, trace: false, token: NO_TOKEN, deviceKey: will ? 0 : 7, will, topic: bytes, topicStart: 0,
    topicLen: Buffer.byteLength(topic), src: bytes, propsA: 0, propsAEnd: 0, propsB: 0, propsBEnd: 0,
    payloadStart: Buffer.byteLength(topic), payloadEnd: bytes.length,
  };
}

function setup(perDevice: boolean[], routes: RouteTable | null = null): { uplink: Uplink; rings: RingBuffers[]; read: (b: number) => { kind: number; key: number; topic: string }[] } {
  const rings = perDevice.map(() => createRing(65536));
  const uplink = new Uplink(rings.map((r) => new RingProducer(r)), perDevice.map(() => new Doorbell(createDoorbell())), routes, perDevice);
  const consumers = rings.map((r) => new RingConsumer(r));
  const read = (b: number): { kind: number; key: number; topic: string }[] => {
    const out = [];
    const c = consumers[b];
    let at: number;
    while ((at = c.next()) >= 0) {
      const topicLen = c.dataView.getUint16(at + 2, true);
      out.push({ kind: c.buffer[at], key: c.dataView.getUint32(at + 12, true), topic: c.buffer.toString('utf8', at + UPLINK_HEADER, at + UPLINK_HEADER + topicLen) });
    }
    c.release();
    return out;
  };
  return { uplink, rings, read };
}

function send(uplink: Uplink, m: UplinkMessage): number {
  assert.ok(uplink.fits(m));
  if (uplink.planned > 0) uplink.write(m);
  uplink.commit();
  return uplink.planned;
}

test('a will skips the per-device brokers; the publishes after it go to every broker again (no routes)', () => {
  const { uplink, read } = setup([false, true, false]);
  assert.equal(send(uplink, message('wills/d', true)), 2);
  assert.equal(send(uplink, message('t/after')), 3, 'the will\'s plan stuck to the next publish');
  assert.deepEqual(read(0).map((r) => r.topic), ['wills/d', 't/after']);
  assert.deepEqual(read(1).map((r) => r.topic), ['t/after']);
  assert.deepEqual(read(2).map((r) => r.topic), ['wills/d', 't/after']);
});

test('with routes, a will goes where they send its topic, except to per-device brokers', () => {
  const routes = new RouteTable([
    { broker: 'a', pattern: '#', direction: 'out', qos: 2, localPrefix: '', remotePrefix: 'site/' },
    { broker: 'b', pattern: '#', direction: 'out', qos: 2, localPrefix: '', remotePrefix: '' },
    { broker: 'c', pattern: 'other/#', direction: 'out', qos: 2, localPrefix: '', remotePrefix: '' },
  ], ['a', 'b', 'c']);
  const { uplink, read } = setup([false, true, false], routes);
  assert.equal(send(uplink, message('wills/d', true)), 1);
  assert.equal(send(uplink, message('t/x')), 2);
  assert.deepEqual(read(0).map((r) => r.topic), ['site/wills/d', 'site/t/x']);
  assert.deepEqual(read(1).map((r) => r.topic), ['t/x']);
  assert.deepEqual(read(2), []);
});

test('without per-device brokers a will goes everywhere, as before', () => {
  const { uplink } = setup([false, false]);
  assert.equal(send(uplink, message('wills/d', true)), 2);
});

test('a device\'s end is a record of its own behind its publishes, with how it left', () => {
  const rings = [createRing(65536)];
  const uplink = new Uplink(rings.map((r) => new RingProducer(r)), [new Doorbell(createDoorbell())], null, [true]);
  send(uplink, message('t/last'));
  assert.equal(uplink.writeDeviceClose(0, 7, CLOSE_CLEAN, 0x04, 300), true);
  uplink.commit();
  const c = new RingConsumer(rings[0]);
  const first = c.next();
  assert.equal(c.buffer[first], REC_PUBLISH);
  const at = c.next();
  assert.equal(c.lastLength, UPLINK_HEADER);
  assert.deepEqual([c.buffer[at], c.buffer[at + 1], c.buffer[at + 2], c.buffer[at + 3]], [REC_DEVICE_CLOSE, CLOSE_CLEAN, 0x04, 1]);
  assert.deepEqual([c.dataView.getUint32(at + 4, true), c.dataView.getUint32(at + 8, true), c.dataView.getUint32(at + 12, true)], [300, NO_TOKEN, 7]);
  assert.equal(c.next(), -1);
});

test('a reload: a retired slot gets no publish from then on, an added one every publish, routes by slot', () => {
  const { uplink, read } = setup([false, false]);
  assert.equal(send(uplink, message('t/before')), 2);
  assert.equal(uplink.plannedMask, 0b11);
  const added = createRing(65536);
  uplink.reconfigure(null, 0b101, [{ ring: new RingProducer(added), doorbell: new Doorbell(createDoorbell()) }]);
  assert.equal(send(uplink, message('t/after')), 2);
  assert.equal(uplink.plannedMask, 0b101);
  assert.deepEqual(read(0).map((r) => r.topic), ['t/before', 't/after']);
  assert.deepEqual(read(1).map((r) => r.topic), ['t/before'], 'the retired slot got a publish');
  const c = new RingConsumer(added);
  const at = c.next();
  assert.ok(at >= 0, 'the added slot got nothing');
  assert.equal(c.buffer.toString('utf8', at + UPLINK_HEADER, at + UPLINK_HEADER + 't/after'.length), 't/after');
  // With routes, the retired slot stays out whatever they say.
  const routes = new RouteTable([
    { broker: 'a', pattern: '#', direction: 'out', qos: 2, localPrefix: '', remotePrefix: '' },
    { broker: 'c', pattern: 'only/#', direction: 'out', qos: 2, localPrefix: '', remotePrefix: '' },
  ], ['a', '~retired-1', 'c']);
  uplink.reconfigure(routes, 0b101, []);
  assert.equal(send(uplink, message('only/x')), 2);
  assert.equal(uplink.plannedMask, 0b101);
  assert.equal(send(uplink, message('other')), 1);
  assert.equal(uplink.plannedMask, 0b001);
});
