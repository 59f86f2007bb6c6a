// The CONNACK code a device gets when a broker refuses its own session (per-device upstream
// mode): the broker's code, translated between MQTT 3.1.1 and 5 where the levels differ.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { refusalFor, translateRefusal } from '../../src/protocol/refusal';

test('same protocol level: the broker\'s code as it is (MQTT 5 failure codes, 3.1.1 return codes)', () => {
  for (const code of [0x80, 0x85, 0x86, 0x87, 0x88, 0x8a, 0x97, 0x9f]) assert.equal(translateRefusal(code, 5, 5), code);
  for (const code of [1, 2, 3, 4, 5]) assert.equal(translateRefusal(code, 4, 4), code);
});

test('a 3.1.1 broker\'s code for an MQTT 5 device, and the other way round', () => {
  assert.deepEqual([1, 2, 3, 4, 5].map((c) => translateRefusal(c, 4, 5)), [0x84, 0x85, 0x88, 0x86, 0x87]);
  assert.deepEqual([0x84, 0x85, 0x86, 0x87, 0x8a, 0x8c].map((c) => translateRefusal(c, 5, 4)), [1, 2, 4, 5, 5, 5]);
  // What 3.1.1 cannot say is "server unavailable".
  for (const c of [0x80, 0x81, 0x88, 0x89, 0x97, 0x9f]) assert.equal(translateRefusal(c, 5, 4), 3);
  // A code no broker should send: unavailable (3.1.1) / unspecified error (5).
  assert.equal(translateRefusal(9, 4, 5), 0x88);
  assert.equal(translateRefusal(0x10, 5, 5), 0x80);
});

test('no answer from the broker, no file descriptors, no credentials in the map', () => {
  assert.deepEqual([refusalFor('timeout', 0, 5, 5), refusalFor('timeout', 0, 5, 4)], [0x88, 3]);
  assert.deepEqual([refusalFor('files', 0, 4, 5), refusalFor('files', 0, 4, 4)], [0x97, 3]);
  assert.deepEqual([refusalFor('no-credentials', 0, 5, 5), refusalFor('no-credentials', 0, 5, 4)], [0x87, 5]);
  assert.deepEqual([refusalFor('refused', 5, 4, 5), refusalFor('refused', 0x87, 5, 4)], [0x87, 5]);
});
