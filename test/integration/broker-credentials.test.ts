// Broker credentials read from files (FANOUT_BROKER_<NAME>_USERNAME_FILE / _PASSWORD_FILE) against
// a mosquitto that requires a password: the daemon connects with them, a wrong one is refused by
// the broker, start-up problems stop the daemon with one line, and the password (from a file or
// from the FANOUT_BROKERS URL) is in no output of the daemon, even at log level trace with every
// device traced.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { Collector, closeClient, connectClient, publish } from '../helpers/clients';
import { DaemonProcess, runDaemonToExit } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, waitFor } from '../helpers/wait';

const PASSWD = fs.existsSync('/usr/bin/mosquitto_passwd') ? '/usr/bin/mosquitto_passwd' : 'mosquitto_passwd';
const PROXY_SECRET = `proxy-Pw-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
const READER_SECRET = 'reader-pw';

describe('broker credentials from files, towards a mosquitto that requires a password', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let dir: string;
  let up: Mosquitto;
  let userFile: string;
  let passwordFile: string;

  const secretFile = (name: string, content: string): string => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, content, { mode: 0o600 });
    return p;
  };
  const brokers = (): string => `cloud-eu=mqtt://127.0.0.1:${up.port}?pool=2`;
  /** Everything the daemon wrote, checked for the secret. */
  const output = (d: { stdout: string; stderr: string }): string => d.stdout + d.stderr;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-broker-creds-'));
    // mosquitto started as root drops to its own user: it must read its password file.
    fs.chmodSync(dir, 0o755);
    const passwd = path.join(dir, 'mosquitto-passwd');
    execFileSync(PASSWD, ['-c', '-b', passwd, 'proxy', PROXY_SECRET]);
    execFileSync(PASSWD, ['-b', passwd, 'reader', READER_SECRET]);
    fs.chmodSync(passwd, 0o644);
    up = scope.use(await Mosquitto.start({ extraConfig: ['allow_anonymous false', `password_file ${passwd}`] }));
    // As Docker writes a secret made with `echo`: a trailing newline.
    userFile = secretFile('cloud_user', 'proxy\n');
    passwordFile = secretFile('cloud_password', `${PROXY_SECRET}\n`);
  });
  after(async () => {
    await scope.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('the broker refuses a client without the password (the test means something)', async () => {
    await assert.rejects(Collector.start(up.port, '#'));
  });

  test('with the user name and password from files the pool connects and publishes arrive; the password is in no output', async () => {
    const d = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: brokers(),
      FANOUT_BROKER_CLOUD_EU_USERNAME_FILE: userFile,
      FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE: passwordFile,
      // As much output as the daemon can make: the configuration line, connect failures, traces.
      FANOUT_LOG_LEVEL: 'trace',
      FANOUT_TRACE_CLIENTS: '*',
    }));
    await waitFor('both pool connections up', () => d.lines.filter((l) => l.msg === 'broker connected' && l.broker === 'cloud-eu').length >= 2,
      { timeoutMs: 20_000, detail: () => JSON.stringify(d.problems()) });
    const at = scope.use(await Collector.start(up.port, 'creds/#', { qos: 1, username: 'reader', password: READER_SECRET }));
    const dev = await connectClient(d.port, { clientId: `creds-${process.pid}` });
    try {
      await publish(dev, 'creds/x', 'through a password from a file', { qos: 1 });
      const [m] = await at.waitForCount(1, (x) => x.topic === 'creds/x');
      assert.equal(m.payload.toString(), 'through a password from a file');
    } finally {
      await closeClient(dev);
    }
    const config = d.lines.find((l) => l.msg === 'configuration')?.config as { brokers: Array<Record<string, unknown>> } | undefined;
    assert.ok(config, 'the configuration is printed at debug level');
    assert.deepEqual([config.brokers[0].username, config.brokers[0].password, config.brokers[0].passwordFile], ['proxy', '***', passwordFile]);
    assert.ok(await d.waitForLog((l) => l.trace === 'out', 5000), 'trace lines were written');
    const exit = await d.stop();
    assert.equal(exit.code, 0);
    assert.ok(!output(d).includes(PROXY_SECRET), 'the broker password appears in the daemon output');
  });

  test('with the password in the FANOUT_BROKERS URL, at log level trace with every device traced: the pool connects, publishes arrive, and the password is in no output', async () => {
    const d = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `cloud-eu=mqtt://proxy:${encodeURIComponent(PROXY_SECRET)}@127.0.0.1:${up.port}?pool=2`,
      FANOUT_LOG_LEVEL: 'trace',
      FANOUT_TRACE_CLIENTS: '*',
    }));
    await waitFor('both pool connections up', () => d.lines.filter((l) => l.msg === 'broker connected' && l.broker === 'cloud-eu').length >= 2,
      { timeoutMs: 20_000, detail: () => JSON.stringify(d.problems()) });
    const at = scope.use(await Collector.start(up.port, 'creds/#', { qos: 1, username: 'reader', password: READER_SECRET }));
    const dev = await connectClient(d.port, { clientId: `creds-url-${process.pid}` });
    try {
      await publish(dev, 'creds/url', 'through a password from the URL', { qos: 1 });
      await at.waitForCount(1, (x) => x.topic === 'creds/url');
    } finally {
      await closeClient(dev);
    }
    const config = d.lines.find((l) => l.msg === 'configuration')?.config as { brokers: Array<Record<string, unknown>> } | undefined;
    assert.ok(config, 'the configuration is printed');
    assert.deepEqual([config.brokers[0].username, config.brokers[0].password], ['proxy', '***']);
    assert.ok(await d.waitForLog((l) => l.trace === 'out', 5000), 'trace lines were written');
    // A broker restart makes the daemon reconnect: its connect and failure lines too.
    await up.restart();
    await waitFor('the pool back after the broker restart', () => d.lines.filter((l) => l.msg === 'broker connected' && l.broker === 'cloud-eu').length >= 4,
      { timeoutMs: 20_000, detail: () => JSON.stringify(d.problems()) });
    const exit = await d.stop();
    assert.equal(exit.code, 0);
    assert.ok(!output(d).includes(PROXY_SECRET), 'the broker password from the URL appears in the daemon output');
  });

  test('a wrong password in the file: the broker refuses it, the daemon says so without the password', async () => {
    const wrong = `wrong-${PROXY_SECRET}`;
    const d = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: brokers(),
      FANOUT_BROKER_CLOUD_EU_USERNAME_FILE: userFile,
      FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE: secretFile('wrong_password', `${wrong}\n`),
      FANOUT_LOG_LEVEL: 'debug',
    }));
    await d.waitForLog((l) => l.msg === 'broker refused connection' && l.broker === 'cloud-eu', 20_000);
    assert.equal(d.lines.some((l) => l.msg === 'broker connected'), false);
    await d.stop();
    assert.ok(!output(d).includes(wrong) && !output(d).includes(PROXY_SECRET), 'a password appears in the daemon output');
  });

  test('start-up problems stop the daemon with exit code 2 and one line naming the variable, without the password', async () => {
    const cases: Array<{ env: Record<string, string>; line: string }> = [
      {
        env: { FANOUT_BROKERS: brokers(), FANOUT_BROKER_CLOUD_EU_USERNAME_FILE: userFile, FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE: path.join(dir, 'missing') },
        line: `FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE=${JSON.stringify(path.join(dir, 'missing'))} is invalid: expected a readable file holding the password (ENOENT)`,
      },
      {
        env: { FANOUT_BROKERS: `cloud-eu=mqtt://proxy:${PROXY_SECRET}@127.0.0.1:${up.port}`, FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE: passwordFile },
        line: `FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE=${JSON.stringify(passwordFile)} is invalid: broker "cloud-eu" has a password in its FANOUT_BROKERS URL already`,
      },
      {
        env: { FANOUT_BROKERS: brokers(), FANOUT_BROKER_CLOUD_PASSWORD_FILE: passwordFile },
        line: `FANOUT_BROKER_CLOUD_PASSWORD_FILE=${JSON.stringify(passwordFile)} is invalid: no broker of FANOUT_BROKERS has the <NAME> CLOUD; expected`,
      },
    ];
    for (const c of cases) {
      const r = await runDaemonToExit(c.env);
      assert.equal(r.code, 2, `exit code (signal ${r.signal}); stderr: ${r.stderr}`);
      const lines = r.stderr.split('\n').filter((l) => l !== '');
      assert.equal(lines.length, 1, `stderr must be one line: ${JSON.stringify(r.stderr)}`);
      assert.ok(lines[0].startsWith(`mqtt-fanout: ${c.line}`), lines[0]);
      assert.ok(!output(r).includes(PROXY_SECRET), `the password leaked: ${r.stderr}`);
    }
  });
});
