import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig, type Route } from '../../src/config';
import { defaultRoutes, parseRoutes, RouteTable, RoutesError } from '../../src/config/routes';
import { matchTopic } from '../../src/protocol/topic';
import { mulberry32, type Rng } from '../helpers/prng';

const BROKERS = 'cloud=mqtt://cloud.example,site=mqtt://127.0.0.1:1884';
const NAMES = ['cloud', 'site'];
const SHAPE = '<broker> <pattern> <in|out|both> [qos] [local-prefix remote-prefix]';

function routes(value: string): readonly Route[] {
  return loadConfig({ FANOUT_BROKERS: BROKERS, FANOUT_ROUTES: value }).routes;
}

function table(value: string): RouteTable {
  return new RouteTable(routes(value), NAMES);
}

/** FANOUT_ROUTES=value is rejected naming the variable, quoting the value, and saying `reason`. */
function assertRejected(value: string, reason: string, env: NodeJS.ProcessEnv = { FANOUT_BROKERS: BROKERS }): void {
  let error: unknown;
  try {
    loadConfig({ ...env, FANOUT_ROUTES: value });
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof ConfigError, `expected FANOUT_ROUTES=${JSON.stringify(value)} to be rejected, got ${String(error)}`);
  assert.equal(error.variable, 'FANOUT_ROUTES');
  assert.equal(error.value, value);
  assert.equal(error.message, `FANOUT_ROUTES=${JSON.stringify(value)} is invalid: ${reason}`);
}

function route(broker: string, pattern: string, direction: Route['direction'], qos: Route['qos'] = 2,
  localPrefix = '', remotePrefix = ''): Route {
  return { broker, pattern, direction, qos, localPrefix, remotePrefix };
}

function locals(t: RouteTable, broker: number, remoteTopic: string): string[] {
  const out = ['left over'];
  const n = t.localTopics(broker, remoteTopic, out);
  assert.equal(n, out.length);
  return out;
}

test('unset, empty or blank FANOUT_ROUTES gives no routes', () => {
  assert.deepEqual(loadConfig({ FANOUT_BROKERS: BROKERS }).routes, []);
  assert.deepEqual(routes(''), []);
  assert.deepEqual(routes(' ; ;\n;'), []);
});

test('fields are parsed with qos 2 and empty prefixes by default', () => {
  assert.deepEqual(routes('cloud telemetry/# out'), [route('cloud', 'telemetry/#', 'out')]);
  assert.deepEqual(routes('site # both 1'), [route('site', '#', 'both', 1)]);
  assert.deepEqual(routes('cloud cmd/# in 0 "" fleet/site42/'), [route('cloud', 'cmd/#', 'in', 0, '', 'fleet/site42/')]);
  assert.deepEqual(routes('cloud + out 2 dev/ ""'), [route('cloud', '+', 'out', 2, 'dev/', '')]);
  assert.deepEqual(routes('cloud # out 1 a/b/ b/'), [route('cloud', '#', 'out', 1, 'a/b/', 'b/')]);
});

test('entries keep their order; blank entries and extra whitespace are ignored', () => {
  assert.deepEqual(routes(' ;site  #\tboth ;\n\ncloud $SYS/# in 1 ; ; cloud a/+/c out 0 x/ y/;'), [
    route('site', '#', 'both'),
    route('cloud', '$SYS/#', 'in', 1),
    route('cloud', 'a/+/c', 'out', 0, 'x/', 'y/'),
  ]);
});

test('the routes in the config are frozen', () => {
  const [first] = routes('cloud # out') as Route[];
  assert.throws(() => { (first as { qos: number }).qos = 0; }, TypeError);
});

test('FANOUT_ROUTES needs FANOUT_BROKERS', () => {
  assertRejected('local # out', 'routes name brokers of FANOUT_BROKERS, which is not set '
    + '(the embedded broker then takes every publish and serves every subscription)', {});
  assert.deepEqual(loadConfig({ FANOUT_ROUTES: '' }).routes, []);
});

test('an entry has 3 to 6 fields', () => {
  assertRejected('cloud', `entry 1 (\`cloud\`): expected ${SHAPE}, got 1 field`);
  assertRejected('cloud #', `entry 1 (\`cloud #\`): expected ${SHAPE}, got 2 fields`);
  assertRejected('cloud # out 1 a/ b/ c/', `entry 1 (\`cloud # out 1 a/ b/ c/\`): expected ${SHAPE}, got 7 fields`);
});

test('entries are counted from 1 without blank ones and shown with single spaces', () => {
  assertRejected(' ; cloud # out ;; site\tcmd/#\n sideways ;', 'entry 2 (`site cmd/# sideways`): direction must be in, out or both');
  assertRejected('site # OUT', 'entry 1 (`site # OUT`): direction must be in, out or both');
});

test('the broker must be named in FANOUT_BROKERS', () => {
  assertRejected('edge # out', 'entry 1 (`edge # out`): broker "edge" is not in FANOUT_BROKERS (cloud, site)');
  assertRejected('cloud # out;Cloud # out', 'entry 2 (`Cloud # out`): broker "Cloud" is not in FANOUT_BROKERS (cloud, site)');
});

test('the pattern must be a valid, non-shared topic filter', () => {
  for (const pattern of ['a/#/b', 'a+', 'a#', '$share/g/x', 'x'.repeat(65536)]) {
    assertRejected(`cloud ${pattern} out`, `entry 1 (\`cloud ${pattern} out\`): pattern "${pattern}" must be a topic filter `
      + '(+ and # only as whole levels, # only last, no $share/)');
  }
  assertRejected('cloud "" out 1 a/ b/', 'entry 1 (`cloud "" out 1 a/ b/`): pattern must not be empty');
});

test('qos is 0, 1 or 2', () => {
  for (const qos of ['3', '-1', 'x', '01', 'both']) {
    assertRejected(`cloud # out ${qos}`, `entry 1 (\`cloud # out ${qos}\`): qos "${qos}" must be 0, 1 or 2`);
  }
});

test('prefixes come in pairs', () => {
  assertRejected('cloud # out 1 site/', 'entry 1 (`cloud # out 1 site/`): local-prefix "site/" needs a remote-prefix after it: '
    + 'give both or neither ("" is an empty prefix)');
});

test('a prefix has no wildcards, quotes or NUL', () => {
  for (const bad of ['a/+/', 'a/#', '+', '"a/"', 'a"', 'a\0/']) {
    assertRejected(`cloud x out 1 ${bad} ""`, `entry 1 (\`cloud x out 1 ${bad} ""\`): local-prefix "${bad}" must not contain `
      + '+, #, " or NUL ("" alone is an empty prefix)');
    assertRejected(`cloud x out 1 "" ${bad}`, `entry 1 (\`cloud x out 1 "" ${bad}\`): remote-prefix "${bad}" must not contain `
      + '+, #, " or NUL ("" alone is an empty prefix)');
  }
});

test('prefix + pattern must be a topic filter', () => {
  assertRejected('cloud # out 1 site ""', 'entry 1 (`cloud # out 1 site ""`): local-prefix "site" must end with / before the pattern "#"');
  assertRejected('cloud +/x in 0 "" site', 'entry 1 (`cloud +/x in 0 "" site`): remote-prefix "site" must end with / before the pattern "+/x"');
  assertRejected('cloud x out 1 "" $share/g/', 'entry 1 (`cloud x out 1 "" $share/g/`): remote-prefix + pattern "$share/g/x" '
    + 'must be a topic filter of at most 65535 bytes, not a $share/ one');
  const long = `${'a'.repeat(65534)}/`;
  assert.throws(() => routes(`cloud xy out 1 ${long} ""`), /local-prefix \+ pattern "a+\/xy" must be a topic filter of at most 65535 bytes/);
  // Without a wildcard at the start of the pattern the prefix may end mid-level.
  assert.deepEqual(routes('cloud ry/# out 1 tele tele'), [route('cloud', 'ry/#', 'out', 1, 'tele', 'tele')]);
});

test('parseRoutes is usable on its own and throws coded RoutesErrors', () => {
  assert.deepEqual(parseRoutes('b # in', ['a', 'b']), [route('b', '#', 'in')]);
  assert.throws(() => parseRoutes('c # in', ['a', 'b']), (err: RoutesError) =>
    err instanceof RoutesError && err.code === 'FANOUT_ERR_CONFIG'
    && err.message === 'entry 1 (`c # in`): broker "c" is not in FANOUT_BROKERS (a, b)');
});

test('default routes: every broker gets all publishes, the first also serves subscriptions', () => {
  assert.deepEqual(defaultRoutes(['a', 'b', 'c']), [route('a', '#', 'both'), route('b', '#', 'out'), route('c', '#', 'out')]);
  assert.deepEqual(defaultRoutes([]), []);
  const t = new RouteTable([], ['a', 'b']);
  assert.deepEqual(t.identityOut, [true, true]);
  assert.deepEqual([t.receivesUplink(0), t.receivesUplink(1), t.servesDownlink(0), t.servesDownlink(1)], [true, true, true, false]);
  assert.equal(t.outTopic(1, 'devices/42/telemetry'), 'devices/42/telemetry');
  assert.equal(t.outQos(1, 'devices/42/telemetry'), 2);
  assert.deepEqual(t.inFilters(0, 'devices/+/cmd'), [{ upstream: 'devices/+/cmd', qos: 2 }]);
  assert.deepEqual(t.inFilters(1, 'devices/+/cmd'), []);
  assert.deepEqual(locals(t, 0, 'devices/42/cmd'), ['devices/42/cmd']);
  assert.deepEqual(locals(t, 1, 'devices/42/cmd'), []);
});

test('$ topics are only routed by routes that name them', () => {
  const t = new RouteTable([], ['a']);
  assert.equal(t.outTopic(0, '$SYS/x'), null);
  assert.equal(t.outQos(0, '$SYS/x'), -1);
  assert.deepEqual(t.inFilters(0, '$SYS/#'), []);
  assert.deepEqual(locals(t, 0, '$SYS/broker/load'), []);
  assert.equal(t.outTopic(0, 'a/$SYS'), 'a/$SYS', 'only a leading $ is special');

  const named = table('cloud # both; cloud $SYS/broker/# in 0; cloud $dev/# out 1');
  assert.deepEqual(named.inFilters(0, '#'), [{ upstream: '#', qos: 2 }]);
  assert.deepEqual(named.inFilters(0, '$SYS/+/load'), [{ upstream: '$SYS/broker/load', qos: 0 }]);
  assert.deepEqual(locals(named, 0, '$SYS/broker/load'), ['$SYS/broker/load']);
  assert.equal(named.outTopic(0, '$dev/x'), '$dev/x');
  assert.equal(named.outQos(0, '$dev/x'), 1);
  assert.equal(named.identityOut[0], false, 'a later route takes $ topics out');
});

test('the $ rule holds on both sides of a remapping route', () => {
  // dev/X <-> X: the broker side is `#`, which covers no X starting with $.
  const t = table('site # both 2 dev/ ""');
  assert.equal(t.outTopic(1, 'dev/a/b'), 'a/b');
  assert.equal(t.outTopic(1, 'dev/$SYS/x'), null);
  assert.equal(t.outTopic(1, 'other/a'), null);
  assert.deepEqual(locals(t, 1, 'a/b'), ['dev/a/b']);
  assert.deepEqual(locals(t, 1, '$SYS/x'), []);
  assert.deepEqual(t.inFilters(1, 'dev/$SYS/#'), []);
  assert.deepEqual(t.inFilters(1, '#'), [{ upstream: '#', qos: 2 }]);
  assert.deepEqual(t.inFilters(1, '+/+'), [{ upstream: '+', qos: 2 }]);
  assert.deepEqual(t.inFilters(1, 'dev/a/#'), [{ upstream: 'a/#', qos: 2 }]);
  // X <-> up/X: the device side is `#`.
  const up = table('site # both 2 "" up/');
  assert.equal(up.outTopic(1, '$x/y'), null);
  assert.deepEqual(locals(up, 1, 'up/$x/y'), []);
  assert.deepEqual(locals(up, 1, 'up/x/y'), ['x/y']);
});

test('migration: everything to both brokers, subscriptions from the new one', () => {
  const names = ['old', 'new'];
  const t = new RouteTable(parseRoutes('old # out; new # both', names), names);
  assert.deepEqual(t.identityOut, [true, true]);
  assert.deepEqual([t.servesDownlink(0), t.servesDownlink(1)], [false, true]);
  assert.deepEqual(t.inFilters(0, 'a/#'), []);
  assert.deepEqual(t.inFilters(1, 'a/#'), [{ upstream: 'a/#', qos: 2 }]);
});

test('out routes remap the prefix and cap the QoS; the first matching route wins', () => {
  const t = table('cloud telemetry/# out 1 "" site42/; cloud alarms/+ out 2 "" site42/; cloud alarms/# out 0; site # both');
  assert.deepEqual(t.identityOut, [false, true]);
  assert.equal(t.outTopic(0, 'telemetry/t1/temp'), 'site42/telemetry/t1/temp');
  assert.equal(t.outQos(0, 'telemetry/t1/temp'), 1);
  assert.equal(t.outTopic(0, 'telemetry'), 'site42/telemetry', '# also covers its parent level');
  assert.equal(t.outTopic(0, 'alarms/fire'), 'site42/alarms/fire');
  assert.equal(t.outQos(0, 'alarms/fire'), 2);
  assert.equal(t.outTopic(0, 'alarms/fire/2'), 'alarms/fire/2');
  assert.equal(t.outQos(0, 'alarms/fire/2'), 0);
  assert.equal(t.outTopic(0, 'cmd/x'), null);
  assert.equal(t.outQos(0, 'cmd/x'), -1);
  assert.equal(t.outTopic(1, 'cmd/x'), 'cmd/x');
  assert.deepEqual([t.receivesUplink(0), t.servesDownlink(0)], [true, false]);
  const match = t.outMatch(0, 'telemetry/a');
  assert.deepEqual({ ...match }, { topic: 'site42/telemetry/a', qos: 1 });
  assert.equal(t.outMatch(0, 'alarms/b'), match, 'one reused object');
  assert.equal(match?.topic, 'site42/alarms/b');
});

test('an out route strips a local prefix, and its parent level has no counterpart', () => {
  const t = table('cloud # out 1 site42/ fleet/site42/');
  assert.equal(t.outTopic(0, 'site42/a'), 'fleet/site42/a');
  assert.equal(t.outTopic(0, 'site42/'), 'fleet/site42/');
  assert.equal(t.outTopic(0, 'site42'), null);
  assert.equal(t.outTopic(0, 'site43/a'), null);
});

test('identityOut needs a leading `#` route without prefixes at QoS 2', () => {
  const identity = (value: string): boolean => table(value).identityOut[0];
  assert.equal(identity('cloud # out'), true);
  assert.equal(identity('cloud # both 2 "" ""'), true);
  assert.equal(identity('cloud # out; cloud a/# out 0 x/ y/'), true, 'later routes are shadowed');
  assert.equal(identity('cloud # out 1'), false);
  assert.equal(identity('cloud # out 2 "" x/'), false);
  assert.equal(identity('cloud a/# out; cloud # out'), false);
  assert.equal(identity('cloud # in'), false);
  assert.equal(identity('site # out'), false, 'no out route for cloud');
  assert.equal(identity('cloud # out; cloud $SYS/# out'), false);
});

test('in routes: device filters are narrowed to the route and remapped upstream', () => {
  const t = table('cloud cmd/# in 1 "" fleet/site42/; site # out');
  assert.deepEqual([t.servesDownlink(0), t.receivesUplink(0), t.servesDownlink(1)], [true, false, false]);
  assert.deepEqual(t.inFilters(0, 'cmd/+/reboot'), [{ upstream: 'fleet/site42/cmd/+/reboot', qos: 1 }]);
  assert.deepEqual(t.inFilters(0, '#'), [{ upstream: 'fleet/site42/cmd/#', qos: 1 }]);
  assert.deepEqual(t.inFilters(0, '+/x'), [{ upstream: 'fleet/site42/cmd/x', qos: 1 }]);
  assert.deepEqual(t.inFilters(0, 'telemetry/#'), []);
  assert.deepEqual(locals(t, 0, 'fleet/site42/cmd/x/reboot'), ['cmd/x/reboot']);
  assert.deepEqual(locals(t, 0, 'fleet/site42/cmd'), ['cmd']);
  assert.deepEqual(locals(t, 0, 'fleet/site43/cmd/x'), []);
  assert.equal(t.outTopic(0, 'cmd/x'), null, 'in routes take nothing out');
});

test('in routes: a local prefix is added, and its parent level has no counterpart', () => {
  const t = table('cloud # in 1 cmd/ fleet/site42/cmd/');
  assert.deepEqual(t.inFilters(0, 'cmd/#'), [{ upstream: 'fleet/site42/cmd/#', qos: 1 }]);
  assert.deepEqual(t.inFilters(0, 'cmd'), []);
  assert.deepEqual(t.inFilters(0, '+'), []);
  assert.deepEqual(t.inFilters(0, '+/+'), [{ upstream: 'fleet/site42/cmd/+', qos: 1 }]);
  assert.deepEqual(locals(t, 0, 'fleet/site42/cmd/a'), ['cmd/a']);
  assert.deepEqual(locals(t, 0, 'fleet/site42/cmd'), []);
});

test('inFilters keeps identical upstream filters once, with the highest QoS', () => {
  const t = table('site a/# in 0; site +/b in 1; site a/b in 2; site a/# in 1');
  assert.deepEqual(t.inFilters(1, 'a/b'), [{ upstream: 'a/b', qos: 2 }]);
  assert.deepEqual(t.inFilters(1, '#'), [{ upstream: 'a/#', qos: 1 }, { upstream: '+/b', qos: 1 }, { upstream: 'a/b', qos: 2 }]);
  assert.deepEqual(t.inFilters(1, 'c/#'), [{ upstream: 'c/b', qos: 1 }]);
  const shared = table('site x/# in 0 l1/ r/; site x/# in 2 l2/ r/');
  assert.deepEqual(shared.inFilters(1, '+/x/#'), [{ upstream: 'r/x/#', qos: 2 }]);
  assert.deepEqual(locals(shared, 1, 'r/x/1'), ['l1/x/1', 'l2/x/1'], 'one message, two local topics');
});

test('localTopics lists each local topic once and clears what out held', () => {
  const t = table('site a/# in; site +/b in; site a/b in 1 "" ""');
  assert.deepEqual(locals(t, 1, 'a/b'), ['a/b']);
  assert.deepEqual(locals(t, 1, 'c/b'), ['c/b']);
  assert.deepEqual(locals(t, 1, 'c/c'), []);
});

test('a route naming a broker outside the table is a programming error', () => {
  assert.throws(() => new RouteTable([route('x', '#', 'out')], NAMES), /unknown broker "x"/);
});

const FILTER_LEVELS = ['a', 'b', '+'];
const TOPIC_LEVELS = ['a', 'b', 'p', 'r', '$s', ''];

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng() * items.length)];
}

function randomLevels(rng: Rng, items: readonly string[], max: number): string[] {
  const levels: string[] = [];
  for (let n = 1 + Math.floor(rng() * max); n > 0; n--) levels.push(pick(rng, items));
  return levels;
}

test('randomised: a message a device filter should get is always asked for upstream', () => {
  const seed = 0x70a7e5;
  const rng = mulberry32(seed);
  const tables = [
    'cloud # both',
    'cloud a/# in 1 "" r/; cloud # in 0 p/ ""',
    'cloud +/b in 2 p/ r/; cloud # in 1 "" r/a/; cloud $s/# in',
    'cloud # in 0 p/a/ r/',
  ];
  let delivered = 0;
  for (const value of tables) {
    const t = table(value);
    for (let round = 0; round < 1500; round++) {
      const levels = randomLevels(rng, FILTER_LEVELS, 4);
      if (rng() < 0.4) levels[levels.length - 1] = '#';
      const filter = levels.join('/');
      const upstream = t.inFilters(0, filter);
      for (let k = 0; k < 8; k++) {
        const remote = randomLevels(rng, TOPIC_LEVELS, 4).join('/');
        if (remote === '') continue;
        const wanted = locals(t, 0, remote).some((local) => matchTopic(filter, local));
        if (!wanted) continue;
        delivered++;
        assert.ok(upstream.some((f) => matchTopic(f.upstream, remote)),
          `seed ${seed}, ${value}: ${filter} wants ${remote}, subscribed ${JSON.stringify(upstream)}`);
      }
    }
  }
  assert.ok(delivered > 500, `only ${delivered} deliveries checked`);
});
