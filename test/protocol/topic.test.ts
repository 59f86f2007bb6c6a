// Unit tests for topic filter validation, shared-subscription parsing and the reference topic
// matcher (src/protocol/topic.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matchTopic, parseShared, RC_TOPIC_FILTER_INVALID, validateTopicFilter } from '../../src/protocol/topic';
import { RC_SHARED_SUBS_NOT_SUPPORTED } from '../../src/protocol/constants';
import { mulberry32 as prng } from '../helpers/prng';

const INVALID = RC_TOPIC_FILTER_INVALID;
const NO_SHARED = RC_SHARED_SUBS_NOT_SUPPORTED;

test('reason codes are the MQTT 5 ones', () => {
  assert.equal(INVALID, 0x8f);
  assert.equal(NO_SHARED, 0x9e);
});

test('valid filters are 0, with or without shared subscriptions allowed', () => {
  const valid = [
    'a', 'a/b', 'sport/tennis/player1', '#', '+', '+/+', '+/+/+', 'a/+/b', 'a/#', '+/#', '+/tennis/#', 'sport/+',
    'sport/tennis/player1/#', '/', '//', '/a', 'a/', 'a//b', '/#', '/+', '+/', '$SYS/#', '$SYS/monitor/+', '$',
    'Accounts payable', 'ü/€/😀/+', 'a$/b', 'a/$b', '$share', '$sharex/a', '$shared/g/a', 'a/$share/g/b', '$SHARE/g/a',
  ];
  for (const f of valid) {
    assert.equal(validateTopicFilter(f, { sharedAllowed: true }), 0, f);
    assert.equal(validateTopicFilter(f, { sharedAllowed: false }), 0, f);
  }
});

test('malformed filters are 0x8F Topic Filter invalid', () => {
  const invalid = [
    '',
    // '#' not alone in its level, or not the last level.
    'a#', '#a', 'a/b#', 'sport/tennis#', 'a/#/b', '#/a', '#/', '##', '+#', '#+', 'a/#b', 'a/b/#/',
    // '+' not alone in its level.
    'a+', '+a', 'a/+b/c', 'a/b+', 'sport+', '++', '+/a+', 'a/++/b',
    // U+0000 anywhere.
    '\u0000', 'a\u0000b', 'a/\u0000', '\u0000/#',
  ];
  for (const f of invalid) {
    assert.equal(validateTopicFilter(f, { sharedAllowed: true }), INVALID, JSON.stringify(f));
    assert.equal(validateTopicFilter(f, { sharedAllowed: false }), INVALID, JSON.stringify(f));
  }
});

test('the 65535-byte limit counts UTF-8 bytes', () => {
  const cases: Array<[string, number]> = [
    ['a'.repeat(65535), 0],
    ['a'.repeat(65536), INVALID],
    ['a'.repeat(21846), 0],
    ['€'.repeat(21845), 0], // 3 bytes each: 65535
    ['€'.repeat(21846), INVALID], // 65538
    ['😀'.repeat(16383) + 'aaa', 0], // 4 bytes each: 65532 + 3
    ['😀'.repeat(16384), INVALID], // 65536
    ['€'.repeat(21844) + 'a/#', 0], // 65532 + 3
    ['€'.repeat(21844) + 'ab/#', INVALID], // 65532 + 4
    ['$share/g/' + 'a'.repeat(65535 - 9), 0], // the prefix counts too
    ['$share/g/' + 'a'.repeat(65536 - 9), INVALID],
  ];
  for (const [f, rc] of cases) {
    assert.equal(Buffer.byteLength(f) <= 65535, rc === 0, `table entry of ${Buffer.byteLength(f)} bytes`);
    assert.equal(validateTopicFilter(f, { sharedAllowed: true }), rc, `${f.length} UTF-16 units, ${Buffer.byteLength(f)} bytes`);
  }
});

test('shared subscriptions: valid ones are 0, or 0x9E when not supported', () => {
  const shared = ['$share/g/a', '$share/g/#', '$share/g/+', '$share/group-1/sport/tennis/+', '$share/g/+/a/#', '$share/g/$SYS/#',
    '$share/g//', '$share/g/a//b', '$share/ü€😀/x', '$share/g$/x', '$share/$share/x', '$share/g/$share/h/x'];
  for (const f of shared) {
    assert.equal(validateTopicFilter(f, { sharedAllowed: true }), 0, f);
    assert.equal(validateTopicFilter(f, { sharedAllowed: false }), NO_SHARED, f);
  }
});

test('malformed shared subscriptions are 0x8F whether or not they are supported', () => {
  const malformed = [
    '$share/', // no ShareName, no filter
    '$share//a', // empty ShareName
    '$share//', '$share///',
    '$share/g', // no filter
    '$share/g/', // empty filter
    '$share/g+/a', '$share/+/a', '$share/#/a', '$share/g#/a', '$share/#', '$share/+', // wildcard in ShareName
    '$share/g\u0000/a', '$share/g/a\u0000', // U+0000
    '$share/g/a#', '$share/g/#/a', '$share/g/a+', '$share/g/+a', '$share/g/##', // invalid filter part
  ];
  for (const f of malformed) {
    assert.equal(validateTopicFilter(f, { sharedAllowed: true }), INVALID, JSON.stringify(f));
    assert.equal(validateTopicFilter(f, { sharedAllowed: false }), INVALID, JSON.stringify(f));
  }
});

test('parseShared splits $share/{group}/{filter} and nothing else', () => {
  assert.deepEqual(parseShared('$share/g/a/b'), { group: 'g', filter: 'a/b' });
  assert.deepEqual(parseShared('$share/consumers/sport/tennis/+'), { group: 'consumers', filter: 'sport/tennis/+' });
  assert.deepEqual(parseShared('$share/g/#'), { group: 'g', filter: '#' });
  assert.deepEqual(parseShared('$share/g//'), { group: 'g', filter: '/' });
  assert.deepEqual(parseShared('$share/g/$share/h/x'), { group: 'g', filter: '$share/h/x' });
  for (const f of ['a/b', '#', '$share', '$sharex/g/a', '$SHARE/g/a', 'x/$share/g/a', '']) assert.equal(parseShared(f), null, f);
  // Malformed ones are never null (so never taken for an ordinary filter); validate first.
  assert.deepEqual(parseShared('$share/g'), { group: 'g', filter: '' });
  assert.deepEqual(parseShared('$share/'), { group: '', filter: '' });
  assert.deepEqual(parseShared('$share//a'), { group: '', filter: 'a' });
});

/** [filter, topic, matches] */
const MATCH_TABLE: Array<[string, string, boolean]> = [
  // MQTT 5.0 section 4.7.1.2, multi-level wildcard.
  ['sport/tennis/player1/#', 'sport/tennis/player1', true],
  ['sport/tennis/player1/#', 'sport/tennis/player1/ranking', true],
  ['sport/tennis/player1/#', 'sport/tennis/player1/score/wimbledon', true],
  ['sport/tennis/player1/#', 'sport/tennis/player2', false],
  ['sport/tennis/player1/#', 'sport/tennis', false],
  ['sport/#', 'sport', true],
  ['sport/#', 'sport/', true],
  ['sport/#', 'sports', false],
  ['sport/#', 'sport/tennis/player1', true],
  ['#', 'sport', true],
  ['#', 'sport/tennis/player1', true],
  ['#', '/', true],
  ['#', '/finance', true],
  // Section 4.7.1.3, single-level wildcard.
  ['sport/tennis/+', 'sport/tennis/player1', true],
  ['sport/tennis/+', 'sport/tennis/player2', true],
  ['sport/tennis/+', 'sport/tennis/player1/ranking', false],
  ['sport/tennis/+', 'sport/tennis', false],
  ['sport/+', 'sport', false],
  ['sport/+', 'sport/', true],
  ['+', 'sport', true],
  ['+', '/finance', false],
  ['+/+', '/finance', true],
  ['/+', '/finance', true],
  ['+/tennis/#', 'sport/tennis/player1', true],
  ['+/tennis/#', 'sport/tennis', true],
  ['+/tennis/#', 'sport/golf/player1', false],
  ['sport/+/player1', 'sport/tennis/player1', true],
  ['sport/+/player1', 'sport/tennis/player2', false],
  ['+/+/+', 'a/b/c', true],
  ['+/+/+', 'a/b', false],
  ['+/+/+', 'a/b/c/d', false],
  // Section 4.7.2, topics beginning with '$' [MQTT-4.7.2-1].
  ['#', '$SYS/monitor/Clients', false],
  ['#', '$SYS', false],
  ['#', '$', false],
  ['+', '$SYS', false],
  ['+/#', '$SYS/monitor', false],
  ['+/monitor/Clients', '$SYS/monitor/Clients', false],
  ['$SYS/#', '$SYS/monitor/Clients', true],
  ['$SYS/#', '$SYS', true],
  ['$SYS/monitor/+', '$SYS/monitor/Clients', true],
  ['$SYS/+/Clients', '$SYS/monitor/Clients', true],
  ['$SYS', '$SYS', true],
  ['$', '$', true],
  ['$SYS/#', '$SYSTEM/x', false],
  ['a/+', 'a/$b', true], // the rule is about the first level only
  ['a/#', 'a/$b/c', true],
  ['+', 'a$', true],
  ['#', 'a$/b', true],
  // Empty levels.
  ['a//b', 'a//b', true],
  ['a/+/b', 'a//b', true],
  ['a/b', 'a//b', false],
  ['a//b', 'a/b', false],
  ['+/+/+', '//', true],
  ['+/+', '//', false],
  ['/', '/', true],
  ['+/+', '/', true],
  ['+', '/', false],
  ['/#', '/', true],
  ['/#', '/a/b', true],
  ['/#', 'a', false],
  ['a/', 'a/', true],
  ['a/', 'a', false],
  ['a', 'a/', false],
  ['a/#', 'a//', true],
  // 'a/#' also matches its parent 'a'.
  ['a/#', 'a', true],
  ['a/#', 'a/b', true],
  ['a/#', 'ab', false],
  ['a/#', 'b', false],
  ['a/+/#', 'a', false],
  ['a/+/#', 'a/b', true],
  ['a/+/#', 'a/b/c/d', true],
  ['+/#', 'a', true],
  // Literal levels: exact, case-sensitive, no prefix matches.
  ['ACCOUNTS', 'Accounts', false],
  ['Accounts payable', 'Accounts payable', true],
  ['a/b', 'a/bc', false],
  ['a/bc', 'a/b', false],
  ['a', 'a/b', false],
  ['a/b', 'a', false],
  ['a/b/c', 'a/b/c', true],
  ['ü/+/😀', 'ü/€/😀', true],
  ['ü/+/😀', 'ü/€/😁', false],
];

test('matchTopic follows the MQTT spec examples and rules', () => {
  for (const [filter, topic, expected] of MATCH_TABLE) {
    assert.equal(validateTopicFilter(filter, { sharedAllowed: false }), 0, `table filter ${filter}`);
    assert.equal(matchTopic(filter, topic), expected, `${JSON.stringify(filter)} vs ${JSON.stringify(topic)}`);
  }
});

/** Obviously-correct matcher on split levels, to cross-check the index-scanning one. */
function splitMatch(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}


test('matchTopic agrees with a split-based matcher on 20,000 random pairs', () => {
  const rnd = prng(0x7091c);
  const pick = <X>(xs: readonly X[]): X => xs[Math.floor(rnd() * xs.length)];
  const levels = ['a', 'b', 'ab', '', '$SYS', '$'];
  let matches = 0;
  for (let i = 0; i < 20_000; i++) {
    const fl: string[] = Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => pick([...levels, '+', '+']));
    if (rnd() < 0.3) fl.push('#');
    const filter = fl.join('/') || '+';
    const topic = Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => pick(levels)).join('/');
    const expected = splitMatch(filter, topic);
    if (expected) matches++;
    assert.equal(matchTopic(filter, topic), expected, `${JSON.stringify(filter)} vs ${JSON.stringify(topic)}`);
  }
  assert.ok(matches > 500, `only ${matches} matches`);
});
