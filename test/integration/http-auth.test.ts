// POST /publish meets the rules a device meets: with FANOUT_PASSWORD_FILE it needs HTTP Basic
// credentials checked against the password file (401 and WWW-Authenticate otherwise),
// anonymous requests only with FANOUT_ALLOW_ANONYMOUS, the FANOUT_ACL_FILE write rules of its
// user with client id `http` for %c (403), and FANOUT_MAX_TOPIC_LENGTH / _LEVELS (400). Nothing
// refused reaches a broker.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { Collector, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep } from '../helpers/wait';

const PASSWD = fs.existsSync('/usr/bin/mosquitto_passwd') ? '/usr/bin/mosquitto_passwd' : 'mosquitto_passwd';

let seq = 0;
const tag = (): string => `${process.pid}-${++seq}`;
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

for (const allowAnonymous of [false, true]) {
  describe(`POST /publish with a password file and an ACL file, FANOUT_ALLOW_ANONYMOUS=${allowAnonymous}`, { timeout: 90_000 }, () => {
    const scope = new Scope();
    let dir: string;
    let up: Mosquitto;
    let daemon: DaemonProcess;
    let at: Collector;
    let base = '';

    before(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-http-auth-'));
      const passwd = path.join(dir, 'passwd');
      execFileSync(PASSWD, ['-c', '-b', passwd, 'alice', 'alice-http-secret']);
      execFileSync(PASSWD, ['-b', passwd, 'bob', 'bob-http-secret']);
      const acl = path.join(dir, 'acl');
      fs.writeFileSync(acl, [
        'topic write hp/public/#',
        'user alice',
        'topic write hp/alice/#',
        'user bob',
        'topic read hp/alice/#',
        'pattern write hp/%c/%u/#',
        '',
      ].join('\n'));
      up = scope.use(await Mosquitto.start());
      daemon = scope.use(await DaemonProcess.start({
        FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_HTTP_PORT: 0,
        FANOUT_PASSWORD_FILE: passwd, FANOUT_ACL_FILE: acl, FANOUT_ALLOW_ANONYMOUS: String(allowAnonymous),
        FANOUT_MAX_TOPIC_LENGTH: 40, FANOUT_MAX_TOPIC_LEVELS: 5,
      }));
      base = `http://127.0.0.1:${Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort)}`;
      await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
      at = scope.use(await Collector.start(up.port, 'hp/#', { qos: 1 }));
    });
    after(async () => {
      await scope.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    const post = async (topic: string, authorization?: string): Promise<{ status: number; body: { ok?: boolean; error?: string }; auth: string | null }> => {
      const res = await fetch(`${base}/publish?topic=${encodeURIComponent(topic)}&qos=1`, {
        method: 'POST', body: 'x', headers: authorization === undefined ? {} : { authorization },
      });
      return { status: res.status, body: await res.json() as { ok?: boolean; error?: string }, auth: res.headers.get('www-authenticate') };
    };

    /** A request that must be refused with `status`, and its message must not reach the broker. */
    const refused = async (status: number, error: RegExp, topic: string, authorization?: string): Promise<void> => {
      const r = await post(topic, authorization);
      assert.equal(r.status, status, `${topic} with ${authorization ?? 'no credentials'}: ${JSON.stringify(r.body)}`);
      assert.match(r.body.error ?? '', error);
      if (status === 401) assert.match(r.auth ?? '', /^Basic realm="mqtt-fanout"/, 'WWW-Authenticate on a 401');
      else assert.equal(r.auth, null);
      // A later publish on the same path arrives: the refused one would have arrived first.
      const fence = `hp/alice/fence/${tag()}`;
      assert.equal((await post(fence, basic('alice', 'alice-http-secret'))).status, 200);
      await at.waitForCount(1, (m) => m.topic === fence, 10_000, 'the fence publish');
      assert.equal(at.count((m) => m.topic === topic), 0, `the refused publish on ${topic} reached the broker`);
    };

    test('the right password and a topic the user may write: 200, and the message reaches the broker', async () => {
      const topic = `hp/alice/${tag()}`;
      const r = await post(topic, basic('alice', 'alice-http-secret'));
      assert.equal(r.status, 200, JSON.stringify(r.body));
      await at.waitForCount(1, (m) => m.topic === topic, 10_000, 'the publish');
    });

    test('a wrong password, an unknown user, and an Authorization that is not Basic: 401 with WWW-Authenticate', async () => {
      await refused(401, /unknown user or wrong password/, `hp/alice/${tag()}`, basic('alice', 'wrong'));
      await refused(401, /unknown user or wrong password/, `hp/alice/${tag()}`, basic('mallory', 'alice-http-secret'));
      await refused(401, /HTTP Basic/, `hp/alice/${tag()}`, 'Bearer alice-http-secret');
    });

    test(allowAnonymous ? 'no credentials: anonymous, with the anonymous ACL rules (hp/public/# only)' : 'no credentials: 401 with WWW-Authenticate', async () => {
      if (allowAnonymous) {
        const topic = `hp/public/${tag()}`;
        assert.equal((await post(topic)).status, 200);
        await at.waitForCount(1, (m) => m.topic === topic, 10_000, 'the anonymous publish');
        await refused(403, /anonymous publishers may not publish/, `hp/alice/${tag()}`);
      } else {
        await refused(401, /authentication required/, `hp/public/${tag()}`);
      }
    });

    test('a topic the user may not write: 403 naming FANOUT_ACL_FILE', async () => {
      await refused(403, /user "alice" may not publish to this topic \(FANOUT_ACL_FILE\)/, `hp/bob/${tag()}`, basic('alice', 'alice-http-secret'));
      // bob may only read hp/alice/#.
      await refused(403, /FANOUT_ACL_FILE/, `hp/alice/${tag()}`, basic('bob', 'bob-http-secret'));
    });

    test('a pattern line: %c is "http" and %u the user (hp/http/bob/# for bob, not hp/dev/bob/#)', async () => {
      const topic = `hp/http/bob/${tag()}`;
      assert.equal((await post(topic, basic('bob', 'bob-http-secret'))).status, 200);
      await at.waitForCount(1, (m) => m.topic === topic, 10_000, 'the publish allowed by the pattern');
      await refused(403, /FANOUT_ACL_FILE/, `hp/dev/bob/${tag()}`, basic('bob', 'bob-http-secret'));
      await refused(403, /FANOUT_ACL_FILE/, `hp/http/alice/${tag()}`, basic('bob', 'bob-http-secret'));
    });

    test('FANOUT_MAX_TOPIC_LENGTH (40) and FANOUT_MAX_TOPIC_LEVELS (5): 400 naming the limit', async () => {
      const auth = basic('alice', 'alice-http-secret');
      await refused(400, /FANOUT_MAX_TOPIC_LENGTH \(40 bytes\)/, `hp/alice/${'x'.repeat(40)}`, auth);
      await refused(400, /FANOUT_MAX_TOPIC_LEVELS \(5\)/, 'hp/alice/a/b/c/d', auth);
      const ok = 'hp/alice/a/b/c';
      assert.equal((await post(ok, auth)).status, 200, '5 levels are allowed');
      await at.waitForCount(1, (m) => m.topic === ok, 10_000, 'the publish at the limit');
    });

    test('refusals are logged as a warning, and no password reaches any log line', async () => {
      await sleep(100);
      assert.ok(await daemon.waitForLog((l) => l.level === 40 && l.msg === 'POST /publish refused', 5000), 'a warning for the refusals');
      for (const secret of ['alice-http-secret', 'bob-http-secret']) assert.ok(!daemon.stdout.includes(secret), `${secret} was logged`);
    });
  });
}
