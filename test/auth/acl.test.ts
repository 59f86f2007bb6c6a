// Tests for mosquitto acl_file access control (src/auth/acl.ts): parsing, every rule kind,
// mosquitto 2.0's precedence, and a randomized cross-check against a literal transcription of
// mosquitto's algorithm.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadAclFile, parseAclFile, type Acl } from '../../src/auth/acl';
import { mulberry32, type Rng } from '../helpers/prng';

function acl(...lines: string[]): Acl {
  const { acl: a, errors } = parseAclFile(lines.join('\n'));
  assert.deepEqual(errors, []);
  return a;
}

test('an empty file, or one with only comments, denies everything', () => {
  for (const text of ['', '# nothing\n\n   \n']) {
    const a = parseAclFile(text).acl;
    for (const user of [null, 'alice']) {
      const c = a.forClient('c1', user);
      assert.equal(c.canPublish('a'), false);
      assert.equal(c.canReceive('a'), false);
    }
  }
});

test('read, write, readwrite, deny and the readwrite default', () => {
  const c = acl(
    'topic read r/#',
    'topic write w/#',
    'topic readwrite rw/#',
    'topic d/#',
    'topic deny rw/secret',
  ).forClient('c1', null);
  const cases: [string, boolean, boolean][] = [
    ['r/x', false, true],
    ['w/x', true, false],
    ['rw/x', true, true],
    ['d/x', true, true],
    ['rw/secret', false, false],
    ['rw/secret/below', true, true],
    ['elsewhere', false, false],
  ];
  for (const [topic, pub, recv] of cases) {
    assert.equal(c.canPublish(topic), pub, `publish ${topic}`);
    assert.equal(c.canReceive(topic), recv, `receive ${topic}`);
  }
});

test('rules before the first user line are for anonymous clients only', () => {
  const a = acl(
    'topic anon/#',
    'user alice',
    'topic alice/#',
    'user bob',
    'topic bob/#',
    'user alice',
    'topic alice2/#',
  );
  const anon = a.forClient('c1', null);
  assert.equal(anon.canPublish('anon/x'), true);
  assert.equal(anon.canPublish('alice/x'), false);
  const alice = a.forClient('c1', 'alice');
  assert.equal(alice.canPublish('alice/x'), true);
  assert.equal(alice.canPublish('alice2/x'), true, 'a user named twice gets both sections');
  assert.equal(alice.canPublish('anon/x'), false, 'users do not get the anonymous rules');
  assert.equal(alice.canPublish('bob/x'), false);
  assert.equal(a.forClient('c1', 'bob').canPublish('bob/x'), true);
  // A username without a section, even an empty one, gets nothing (no patterns here).
  assert.equal(a.forClient('c1', 'carol').canPublish('anon/x'), false);
  assert.equal(a.forClient('c1', '').canPublish('anon/x'), false);
  // Usernames match exactly.
  assert.equal(a.forClient('c1', 'Alice').canPublish('alice/x'), false);
});

test('patterns substitute %c and %u for every client', () => {
  const a = acl(
    'user alice',
    'topic shared/#',
    'pattern readwrite dev/%c/#',
    'pattern read usr/%u/in',
    'pattern write usr/%u/out/%c',
    'pattern write both/%c%u',
    'pattern read fixed/#',
  );
  const alice = a.forClient('dev-1', 'alice');
  assert.equal(alice.canPublish('dev/dev-1/x'), true);
  assert.equal(alice.canPublish('dev/dev-1'), true, "'#' matches its parent level too");
  assert.equal(alice.canPublish('dev/dev-2/x'), false);
  assert.equal(alice.canReceive('usr/alice/in'), true);
  assert.equal(alice.canPublish('usr/alice/in'), false);
  assert.equal(alice.canPublish('usr/alice/out/dev-1'), true);
  assert.equal(alice.canPublish('both/dev-1alice'), true, 'substitution also works inside a level');
  assert.equal(alice.canReceive('fixed/a'), true, 'a pattern without %c or %u applies to all');
  assert.equal(alice.canPublish('shared/x'), true);

  // Without a username, %u patterns do not apply; %c ones do.
  const anon = a.forClient('dev-2', null);
  assert.equal(anon.canPublish('dev/dev-2/x'), true);
  assert.equal(anon.canReceive('usr//in'), false);
  assert.equal(anon.canReceive('usr/null/in'), false);
  assert.equal(anon.canPublish('both/dev-2'), false);
  // Client ids with '/' are allowed and simply add levels (as in mosquitto since 1.4.15).
  const slash = a.forClient('x/y', 'a/b');
  assert.equal(slash.canPublish('dev/x/y/z'), true);
  assert.equal(slash.canReceive('usr/a/b/in'), true);
  // '$' in an id is substituted literally (no String.replace patterns).
  assert.equal(a.forClient('$&', 'u').canPublish('dev/$&/x'), true);
});

test("a client id or username with '+' or '#' gets nothing from patterns, but keeps its own rules", () => {
  const a = acl(
    'topic anon/#',
    'user alice',
    'topic shared/#',
    'pattern dev/%c/#',
    'pattern usr/%u/#',
    'pattern fixed/#',
  );
  for (const [id, user] of [['a+b', 'alice'], ['#', 'alice'], ['c1', 'ali+ce'], ['c1', 'al#'], ['+', null]] as [string, string | null][]) {
    const c = a.forClient(id, user);
    assert.equal(c.canPublish(`dev/${id}/x`), false, `${id} ${user}`);
    assert.equal(c.canPublish('dev/a/x'), false);
    assert.equal(c.canPublish(`usr/${user}/x`), false);
    assert.equal(c.canPublish('fixed/x'), false);
  }
  assert.equal(a.forClient('a+b', 'alice').canPublish('shared/x'), true);
  assert.equal(a.forClient('+', null).canPublish('anon/x'), true);
  // Without any pattern in the file, such ids are not special.
  assert.equal(acl('topic anon/#').forClient('#', null).canPublish('anon/x'), true);
});

test('deny wins within a list; the client\'s own list decides before the patterns', () => {
  const a = acl(
    'topic readwrite open/#',
    'topic deny open/closed/#',
    'topic readwrite open/closed/again', // deny still wins
    'user alice',
    'topic readwrite shared/#',
    'topic deny mine/secret',
    'pattern deny shared/#', // does not override alice's own grant
    'pattern readwrite mine/#', // does not override alice's own deny
    'pattern readwrite dev/%c/#',
    'pattern deny dev/%c/locked',
  );
  const anon = a.forClient('c1', null);
  assert.equal(anon.canPublish('open/x'), true);
  assert.equal(anon.canPublish('open/closed/x'), false);
  assert.equal(anon.canPublish('open/closed/again'), false);
  assert.equal(anon.canReceive('open/closed/again'), false);
  // Nothing of its own: the pattern deny decides.
  assert.equal(anon.canPublish('shared/x'), false);

  const alice = a.forClient('c1', 'alice');
  assert.equal(alice.canPublish('shared/x'), true);
  assert.equal(alice.canPublish('mine/secret'), false);
  assert.equal(alice.canPublish('mine/other'), true);
  assert.equal(alice.canPublish('dev/c1/x'), true);
  assert.equal(alice.canPublish('dev/c1/locked'), false);
  assert.equal(a.forClient('c1', 'bob').canPublish('shared/x'), false);
});

test('wildcards in rules match like subscription filters', () => {
  const c = acl('topic a/+/c', 'topic b/#', 'topic +/x', 'topic /lead', 'topic e//f', 'topic z').forClient('c1', null);
  const yes = ['a/b/c', 'a//c', 'b', 'b/', 'b/c/d', 'q/x', '/x', '/lead', 'e//f', 'z'];
  const no = ['a/c', 'a/b/c/d', 'a/b', 'bb', 'q/x/y', 'lead', 'e/f', 'z/a', 'Z'];
  for (const t of yes) assert.equal(c.canPublish(t), true, t);
  for (const t of no) assert.equal(c.canPublish(t), false, t);
});

test('$ topics: # and + never match them, $SYS is read-only, $share is never a topic', () => {
  const a = acl(
    'topic #',
    'user root',
    'topic #',
    'topic $SYS/#',
    'topic $share/#',
    'topic $other/#',
    'user plus',
    'topic +/broker/#',
  );
  const anon = a.forClient('c1', null);
  assert.equal(anon.canReceive('$SYS/broker/uptime'), false);
  assert.equal(anon.canPublish('$other/x'), false);
  const root = a.forClient('c1', 'root');
  assert.equal(root.canReceive('$SYS/broker/uptime'), true);
  assert.equal(root.canPublish('$SYS/broker/uptime'), false, 'no rule allows writing $SYS');
  assert.equal(root.canPublish('$SYSX'), false, 'the check is on the prefix, as in mosquitto');
  assert.equal(root.canPublish('$SYS/broker/connection/bridge1/state'), true, 'except bridge states');
  assert.equal(root.canPublish('$share/g/x'), false);
  assert.equal(root.canReceive('$share/g/x'), false);
  assert.equal(root.canReceive('$shared'), false, 'also a prefix check');
  assert.equal(root.canPublish('$other/x'), true);
  assert.equal(root.canReceive('$other/x'), true);
  assert.equal(a.forClient('c1', 'plus').canReceive('$SYS/broker/x'), false);
});

test('SUBSCRIBE: valid filters that some read rule can match are granted (the messages are filtered on delivery); others refused', () => {
  const a = acl('topic read a/#', 'pattern deny secret/#', 'pattern read dev/%c/#');
  for (const c of [a.forClient('c1', null), a.forClient('c1', 'alice')]) {
    for (const f of ['#', 'dev/c1/t', 'dev/+/t', '+/c1/#', '$share/g/#']) assert.equal(c.canSubscribe(f), true, f);
    for (const f of ['secret/#', 'nothing', 'dev/c2/t', '$SYS/#', '', 'a/#/b', 'a+', '$share/g', '$share//a', '$share/g+/a', 'a\u0000']) {
      assert.equal(c.canSubscribe(f), false, JSON.stringify(f));
    }
  }
  // The anonymous section is for anonymous clients only.
  for (const f of ['a/x', '+/x']) {
    assert.equal(a.forClient('c1', null).canSubscribe(f), true, f);
    assert.equal(a.forClient('c1', 'alice').canSubscribe(f), false, f);
  }
});

test('the one-off Acl methods agree with forClient', () => {
  const a = acl('topic anon/#', 'user alice', 'topic read alice/#', 'pattern dev/%c/#');
  assert.equal(a.canPublish('c1', null, 'anon/x'), true);
  assert.equal(a.canPublish('c1', 'alice', 'alice/x'), false);
  assert.equal(a.canReceive('c1', 'alice', 'alice/x'), true);
  assert.equal(a.canPublish('c1', 'alice', 'dev/c1/x'), true);
  assert.equal(a.canSubscribe('c1', 'alice', 'alice/#'), true);
  assert.equal(a.canSubscribe('c1', 'alice', 'x/#'), false);
  assert.equal(a.canSubscribe('c1', 'alice', 'x/#/y'), false);
});

// What the mosquitto 2.0.11 broker answered for this file (QoS 1 MQTT 5 publishes checked by
// their PUBACK reason code, deliveries by a subscriber while a superuser published).
const OBSERVED_FILE = [
  '# anonymous',
  'topic readwrite anon/#',
  'user alice',
  'topic readwrite shared/#',
  'topic deny shared/secret',
  'topic readwrite $SYS/#',
  'topic read ro/#',
  'user root',
  'topic readwrite #',
  'topic readwrite $SYS/#',
  'topic readwrite $share/#',
  'pattern deny shared/#',
  'pattern readwrite dev/%c/#',
  'pattern deny dev/%c/locked',
  'pattern readwrite usr/%u/#',
];
const OBSERVED: [clientId: string, username: string | null, topic: string, publish: boolean, receive: boolean | null][] = [
  ['alice-c', 'alice', 'shared/x', true, true],
  ['alice-c', 'alice', 'shared/secret', false, false],
  ['alice-c', 'alice', 'anon/x', false, false],
  ['alice-c', 'alice', 'ro/x', false, true],
  ['alice-c', 'alice', 'dev/alice-c/x', true, true],
  ['alice-c', 'alice', 'dev/alice-c/locked', false, false],
  ['alice-c', 'alice', 'usr/alice/x', true, true],
  ['alice-c', 'alice', '$SYS/foo', false, null],
  ['alice-c', 'alice', '$SYS/broker/connection/x/state', true, true],
  ['alice-c', 'alice', 'other', false, false],
  ['alice-c', 'alice', '$share/g/x', false, null],
  ['anon1', null, 'anon/x', true, true],
  ['anon1', null, 'shared/x', false, false],
  ['anon1', null, 'dev/anon1/x', true, true],
  ['anon1', null, 'usr//x', false, false],
  ['anon1', null, 'other', false, false],
  ['bobc', 'bo/b', 'usr/bo/b/x', true, true],
  ['bobc', 'bo/b', 'dev/bobc/x', true, true],
  ['bobc', 'bo/b', 'shared/x', false, false],
  ['carlc', 'ca+rl', 'dev/carlc/x', false, false],
  ['carlc', 'ca+rl', 'usr/x', false, false],
  ['a+b', 'alice', 'shared/x', true, true],
  ['a+b', 'alice', 'dev/a/x', false, false],
  ['a+b', 'alice', 'ro/x', false, true],
  ['danc', 'dan', 'shared/x', false, false],
  ['danc', 'dan', 'dev/danc/x', true, true],
  ['danc', 'dan', 'anon/x', false, false],
  ['danc', 'dan', 'dev/danc/locked', false, false],
  ['x/y', 'dan', 'dev/x/y/z', true, true],
  ['x/y', 'dan', 'dev/x/y', true, true],
];

test('answers what the mosquitto 2.0.11 broker answered', () => {
  const a = acl(...OBSERVED_FILE);
  for (const [id, user, topic, pub, recv] of OBSERVED) {
    const c = a.forClient(id, user);
    assert.equal(c.canPublish(topic), pub, `${id}/${user} publish ${topic}`);
    if (recv !== null) assert.equal(c.canReceive(topic), recv, `${id}/${user} receive ${topic}`);
    // mosquitto granted every subscription, "nothing/#" included; this proxy refuses a filter
    // no read rule can match, so a topic the client may receive is always subscribable.
    if (recv === true) assert.equal(c.canSubscribe(topic), true, `${id}/${user} subscribe ${topic}`);
    assert.equal(c.canSubscribe('nothing/#'), false);
  }
});

test('lines are tokenized like mosquitto: spaces, optional access, topics with spaces', () => {
  const { acl: a, errors } = parseAclFile([
    'topic   read    has space/x  ',
    'topic deny', // one token: the topic "deny", readwrite
    '\ttopic write\tw', // leading blanks are allowed; a tab is not a separator
    '  # an indented comment',
    'user   dave smith  ',
    'topic x/#',
  ].join('\r\n'));
  assert.deepEqual(errors, []);
  const anon = a.forClient('c', null);
  assert.equal(anon.canReceive('has space/x'), true);
  assert.equal(anon.canPublish('has space/x'), false);
  assert.equal(anon.canPublish('deny'), true);
  assert.equal(anon.canReceive('deny'), true);
  assert.equal(anon.canReceive('write\tw'), true);
  assert.equal(a.forClient('c', 'dave smith').canPublish('x/y'), true);
});

test('bad lines are reported with their number and skipped', () => {
  const { acl: a, errors } = parseAclFile([
    'topic ok/#', // 1
    'topic', // 2
    'pattern', // 3
    'topic reed x/#', // 4
    'topic read a/#/b', // 5
    'pattern write dev/%c+', // 6
    'Topic x', // 7
    'acl x', // 8
    'user', // 9
    'topic orphan/#', // 10: would otherwise be the anonymous clients' (or a previous user's)
    'pattern dev/%c/#', // 11: patterns do not belong to a user
    'user bob', // 12
    'topic bob/#', // 13
    'topic read a+/b', // 14
  ].join('\n'));
  assert.deepEqual(errors.map((e) => e.line), [2, 3, 4, 5, 6, 7, 8, 9, 10, 14]);
  const msg = (line: number): string => (errors.find((e) => e.line === line) as { message: string }).message;
  assert.match(msg(2), /missing topic after "topic"/);
  assert.match(msg(3), /missing topic after "pattern"/);
  assert.match(msg(4), /invalid access type "reed"/);
  assert.match(msg(5), /invalid topic filter "a\/#\/b"/);
  assert.match(msg(6), /invalid topic filter/);
  assert.match(msg(7), /unknown keyword "Topic"/);
  assert.match(msg(9), /missing username/);
  assert.match(msg(10), /user line before it \(line 9\)/);
  const anon = a.forClient('c1', null);
  assert.equal(anon.canPublish('ok/x'), true);
  assert.equal(anon.canPublish('orphan/x'), false);
  assert.equal(anon.canPublish('dev/c1/x'), true);
  assert.equal(a.forClient('c1', 'bob').canPublish('bob/x'), true);
});

test('loadAclFile reads a file; an unreadable one is a FANOUT_ERR_AUTH error naming it', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-acl-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'acl');
  fs.writeFileSync(file, 'topic a/#\nbad line\n');
  const { acl: a, errors } = await loadAclFile(file);
  assert.equal(a.canPublish('c', null, 'a/b'), true);
  assert.deepEqual(errors.map((e) => e.line), [2]);
  const missing = path.join(dir, 'missing');
  await assert.rejects(loadAclFile(missing), (err: unknown) => {
    const e = err as { code: string; message: string; file: string };
    assert.equal(e.code, 'FANOUT_ERR_AUTH');
    assert.equal(e.file, missing);
    assert.match(e.message, /ACL file .*missing: ENOENT/);
    return true;
  });
});

// ---- Randomized cross-check against a literal transcription of mosquitto 2.0 ----------------

const READ = 1;
const WRITE = 2;

interface RefRule { topic: string; access: number }

const levelsOf = new Map<string, string[]>();
function split(s: string): string[] {
  let levels = levelsOf.get(s);
  if (levels === undefined) {
    if (levelsOf.size > 100_000) levelsOf.clear();
    levels = s.split('/');
    levelsOf.set(s, levels);
  }
  return levels;
}

/** mosquitto_topic_matches_sub for valid filters and topic names, done the obvious way. */
function refMatches(sub: string, topic: string): boolean {
  if ((sub[0] === '$') !== (topic[0] === '$')) return false;
  const s = split(sub);
  const t = split(topic);
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '#') return true;
    if (i >= t.length) return false;
    if (s[i] !== '+' && s[i] !== t[i]) return false;
  }
  return s.length === t.length;
}

/** aclfile__parse + add__acl + add__acl_pattern: lists in check order, denies in front. */
function refParse(lines: string[]): { users: Map<string | null, RefRule[]>; patterns: RefRule[] } {
  const users = new Map<string | null, RefRule[]>();
  const patterns: RefRule[] = [];
  let user: string | null = null;
  const add = (list: RefRule[], rule: RefRule): void => {
    if (rule.access === 0) list.unshift(rule);
    else list.push(rule);
  };
  for (const line of lines) {
    const words = line.split(' ');
    if (words[0] === 'user') {
      user = words.slice(1).join(' ');
      continue;
    }
    const access = words.length === 2 ? 3 : ({ read: 1, write: 2, readwrite: 3, deny: 0 } as Record<string, number>)[words[1]];
    const rule = { topic: words[words.length - 1], access };
    if (words[0] === 'pattern') {
      add(patterns, rule);
    } else {
      if (!users.has(user)) users.set(user, []);
      add(users.get(user) as RefRule[], rule);
    }
  }
  return { users, patterns };
}

/** mosquitto_acl_check (acl__check_dollar) + mosquitto_acl_check_default. */
function refCheck(ref: ReturnType<typeof refParse>, id: string, username: string | null, topic: string, access: number): boolean {
  if (topic.startsWith('$SYS') && access === WRITE && !refMatches('$SYS/broker/connection/+/state', topic)) return false;
  if (topic.startsWith('$share')) return false;
  const own = ref.users.get(username) ?? null;
  if (own === null && ref.patterns.length === 0) return false;
  for (const rule of own ?? []) {
    if (topic[0] === '$' && rule.topic[0] !== '$') continue;
    if (refMatches(rule.topic, topic)) {
      if (rule.access === 0) return false;
      if (access & rule.access) return true;
    }
  }
  if (ref.patterns.length > 0 && ((username !== null && /[+#]/.test(username)) || /[+#]/.test(id))) return false;
  for (const rule of ref.patterns) {
    if (rule.topic.includes('%u') && username === null) continue;
    let local = '';
    for (let i = 0; i < rule.topic.length; i++) {
      if (i < rule.topic.length - 1 && rule.topic[i] === '%') {
        if (rule.topic[i + 1] === 'c') {
          local += id;
          i++;
          continue;
        }
        if (username !== null && rule.topic[i + 1] === 'u') {
          local += username;
          i++;
          continue;
        }
      }
      local += rule.topic[i];
    }
    if (local !== '' && refMatches(local, topic)) {
      if (rule.access === 0) return false;
      if (access & rule.access) return true;
    }
  }
  return false;
}

const LEVELS = ['a', 'b', 'c1', '', '$SYS', 'broker', 'connection', 'state', 'x'];
const INNER_LEVELS = LEVELS.filter((l) => l !== '$SYS');
const IDS = ['c1', 'a', 'b', 'x+y', '#', 'a/b', '', 'broker'];
const NAMES: (string | null)[] = [null, 'a', 'b', 'u+', 'a/b', '', 'c1'];

function pick<T>(rng: Rng, xs: readonly T[]): T {
  return xs[Math.floor(rng() * xs.length)];
}

function randomFilter(rng: Rng, pattern: boolean): string {
  const n = 1 + Math.floor(rng() * 4);
  const levels: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = rng();
    if (r < 0.15) levels.push('+');
    else if (pattern && r < 0.3) levels.push(pick(rng, ['%c', '%u', 'x%c', '%u%c']));
    else if (r < 0.35 && i === 0) levels.push('$SYS');
    else levels.push(pick(rng, INNER_LEVELS));
  }
  if (rng() < 0.3) levels.push('#');
  // A lone empty level would be an empty filter: a bad line.
  return levels.join('/') || '/';
}

function randomTopic(rng: Rng): string {
  if (rng() < 0.1) return pick(rng, ['$SYS/broker/connection/c1/state', '$share/g/a', '$SYS', '$SYS/x']);
  const n = 1 + Math.floor(rng() * 3);
  const levels: string[] = [];
  for (let i = 0; i < n; i++) levels.push(pick(rng, i === 0 ? LEVELS : INNER_LEVELS));
  return levels.join('/');
}

/** A topic name that a rule of the file may match for this client, so that grants get exercised. */
function topicNear(rng: Rng, lines: string[], id: string, user: string | null): string {
  const rules = lines.filter((l) => !l.startsWith('user '));
  if (rules.length === 0) return randomTopic(rng);
  const filter = pick(rng, rules).split(' ').pop() as string;
  const topic = filter
    .replace(/%c/g, id)
    .replace(/%u/g, user ?? 'nobody')
    .split('/')
    .map((l) => (l === '+' ? pick(rng, LEVELS.slice(0, 4)) : l === '#' ? ['', 'a', 'a/b'][Math.floor(rng() * 3)] : l))
    .join('/');
  return topic.replace(/\/$/, rng() < 0.5 ? '' : '/');
}

function randomFile(rng: Rng): string[] {
  const lines: string[] = [];
  // Some long files, so that rule sets beyond LINEAR_MAX filters (trie-indexed) get checked too.
  const n = Math.floor(rng() * (rng() < 0.3 ? 80 : 30));
  for (let i = 0; i < n; i++) {
    const r = rng();
    if (r < 0.15) {
      lines.push(`user ${pick(rng, NAMES.filter((u) => u !== null && u !== ''))}`);
      continue;
    }
    const pattern = r < 0.45;
    const access = pick(rng, ['', '', 'read ', 'write ', 'readwrite ', 'readwrite ', 'deny ']);
    lines.push(`${pattern ? 'pattern' : 'topic'} ${access}${randomFilter(rng, pattern)}`);
  }
  return lines;
}

test('randomized: canPublish and canReceive agree with a literal transcription of mosquitto 2.0', () => {
  const seed = Number(process.env.ACL_SEED ?? 20240611);
  const rng = mulberry32(seed);
  let checks = 0;
  let allowed = 0;
  for (let f = 0; f < 120; f++) {
    const lines = randomFile(rng);
    const { acl: a, errors } = parseAclFile(lines.join('\n'));
    assert.deepEqual(errors, [], lines.join('\n'));
    const ref = refParse(lines);
    const topics = Array.from({ length: 10 }, () => randomTopic(rng));
    for (const id of IDS) {
      for (const user of NAMES) {
        const c = a.forClient(id, user);
        for (const topic of [...topics, ...Array.from({ length: 10 }, () => topicNear(rng, lines, id, user))]) {
          if (topic === '' || /[+#]/.test(topic)) continue; // not topic names
          for (const access of [WRITE, READ]) {
            const got = access === WRITE ? c.canPublish(topic) : c.canReceive(topic);
            const want = refCheck(ref, id, user, topic, access);
            if (got !== want) {
              assert.fail(`seed ${seed}, file ${f}: ${access === WRITE ? 'publish' : 'receive'} ${JSON.stringify(topic)} by ${JSON.stringify(id)}/${JSON.stringify(user)}: got ${got}, mosquitto ${want}\n${lines.join('\n')}`);
            }
            checks++;
            if (got) allowed++;
          }
        }
      }
    }
  }
  // The generator must exercise both outcomes substantially.
  assert.ok(allowed > checks * 0.1 && allowed < checks * 0.9, `${allowed} of ${checks} allowed`);
});
