// Unit tests for the admission of new device sockets (src/shard/admission.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Admission, canonicalAddress } from '../../src/shard/admission';
import { loadConfig } from '../../src/config/index';

test('FANOUT_MAX_CONNECTIONS: a socket is refused once that many are open, whatever the address', () => {
  let open = 0;
  const a = new Admission(loadConfig({ FANOUT_MAX_CONNECTIONS: '3', FANOUT_SHARDS: '1' }), () => open);
  for (; open < 3; open++) assert.equal(a.admit('10.0.0.1'), null);
  assert.equal(a.admit('10.0.0.2'), 'max-connections');
  assert.equal(a.admit(undefined), 'max-connections');
  open = 2;
  assert.equal(a.admit('10.0.0.2'), null);
});

test('FANOUT_MAX_CONNECT_RATE: per address and second, each shard allowing its share (rounded up)', () => {
  // Tried again in the rare case that the calls straddle a second.
  for (;;) {
    const second = Math.floor(Date.now() / 1000);
    const a = new Admission(loadConfig({ FANOUT_MAX_CONNECT_RATE: '5', FANOUT_SHARDS: '2' }), () => 0);
    const outcomes = Array.from({ length: 4 }, () => a.admit('10.0.0.1'));
    const other = a.admit('::ffff:10.0.0.9');
    const same = a.admit('::ffff:10.0.0.1');
    if (Math.floor(Date.now() / 1000) !== second) continue;
    assert.deepEqual(outcomes, [null, null, null, 'rate'], 'ceil(5 / 2) = 3 per shard');
    assert.equal(other, null, 'another address has its own count');
    assert.equal(same, 'rate', 'an IPv4 address counts the same in its IPv6-mapped form');
    return;
  }
});

test('FANOUT_MAX_CONNECT_RATE=0 admits everything; an IPv4 peer counts the same on a dual-stack socket', () => {
  const a = new Admission(loadConfig({ FANOUT_SHARDS: '1' }), () => 0);
  for (let i = 0; i < 100; i++) assert.equal(a.admit('10.0.0.1'), null);
  assert.equal(canonicalAddress('::ffff:127.0.0.1'), '127.0.0.1');
  assert.equal(canonicalAddress('::1'), '::1');
  assert.equal(canonicalAddress('127.0.0.1'), '127.0.0.1');
});
