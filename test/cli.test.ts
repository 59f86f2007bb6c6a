// The command line, through the launcher as operators run it: --help lists every variable of the
// schema grouped with its default, --version the package's version, --check validates the
// environment and prints the effective configuration with every secret as ***, exiting 0 or 2;
// any other argument is an error with exit code 2. None of them starts the daemon.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SPECS } from '../src/config/schema';
import { runDaemonToExit } from './helpers/daemon';
import { canConnect, freePort, HOST } from './helpers/ports';

const run = (args: string[], env: Record<string, string | number | undefined> = {}): ReturnType<typeof runDaemonToExit> =>
  runDaemonToExit(env, 15_000, args);

describe('command line', { timeout: 120_000 }, () => {
  test('--help: usage, the options, and every FANOUT_ variable under a group heading with its default; exit 0, nothing started', async () => {
    const port = await freePort();
    const r = await run(['--help'], { FANOUT_PORT: port, FANOUT_HTTP_PORT: port });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.match(r.stdout, /^Usage: mqtt-fanout \[--help \| --version \| --check\]\n/);
    for (const option of ['--help', '--version', '--check']) assert.match(r.stdout, new RegExp(`^  ${option}\\b`, 'm'));
    const lines = r.stdout.split('\n');
    const headings = lines.filter((l) => /^[A-Z][a-z ]+:$/.test(l));
    assert.ok(headings.includes('Listeners:') && headings.includes('Operation:'), headings.join(' | '));
    for (const spec of SPECS) {
      const at = lines.findIndex((l) => l === `  ${spec.name}` || l.startsWith(`  ${spec.name}  `));
      assert.ok(at > 0, `${spec.name} is not listed`);
      assert.ok(lines.slice(0, at).some((l) => headings.includes(l)), `${spec.name} is not under a group heading`);
      const end = lines.findIndex((l, i) => i > at && !l.startsWith('      '));
      const entry = lines.slice(at, end).join(' ').replace(/\s+/g, ' ');
      assert.ok(entry.includes(`(default: ${spec.default})`), `${spec.name}: no default "${spec.default}" in ${entry}`);
      assert.ok(entry.includes(spec.description.replace(/\s+/g, ' ')), `${spec.name}: no description in ${entry}`);
    }
    assert.equal(new Set(SPECS.map((s) => s.name)).size, r.stdout.match(/^ {2}FANOUT_\S+/gm)?.length, 'each variable is listed once');
    assert.ok(lines.every((l) => l.length <= 100), 'lines fit 100 columns');
    assert.doesNotMatch(r.stdout, /mqtt-fanout ready/);
  });

  test('--help still answers when the environment is invalid', async () => {
    const r = await run(['--help'], { FANOUT_PORT: 'x' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /FANOUT_PORT/);
  });

  test('--version: the version in package.json; exit 0', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
    const r = await run(['--version']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `mqtt-fanout ${pkg.version}\n`);
  });

  test('--check on a valid environment: the effective configuration as JSON, secrets as ***, exit 0, nothing started', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-cli-'));
    const passwordFile = path.join(dir, 'site-password');
    fs.writeFileSync(passwordFile, 'file-secret-42\n');
    const port = await freePort();
    const secrets = ['url-secret-17', 'file-secret-42', 'redis-secret-99', 'admin-token-0123456789'];
    try {
      const r = await run(['--check'], {
        FANOUT_PORT: port,
        FANOUT_BROKERS: `cloud=mqtt://proxy:${secrets[0]}@${HOST}:1,site=mqtt://edge@${HOST}:2`,
        FANOUT_BROKER_SITE_PASSWORD_FILE: passwordFile,
        FANOUT_SESSION_STORE: `redis://app:${secrets[2]}@${HOST}:6379/2`,
        FANOUT_ADMIN_TOKEN: secrets[3],
        FANOUT_MAX_INFLIGHT: 7,
      });
      assert.equal(r.code, 0, r.stderr);
      for (const secret of secrets) assert.ok(!r.stdout.includes(secret) && !r.stderr.includes(secret), `${secret} is shown`);
      const shown = JSON.parse(r.stdout) as {
        port: number; maxInflight: number; malloc: string; adminToken: string; sessionStore: string;
        brokers: Array<{ name: string; username?: string; password?: string; redactedUrl: string }>;
      };
      assert.equal(shown.port, port);
      assert.equal(shown.maxInflight, 7);
      assert.equal(shown.malloc, 'auto');
      assert.equal(shown.adminToken, '***');
      assert.equal(shown.sessionStore, `redis://app:***@${HOST}:6379/2`);
      assert.deepEqual(shown.brokers.map((b) => [b.name, b.username, b.password, b.redactedUrl]), [
        ['cloud', 'proxy', '***', `mqtt://proxy:***@${HOST}:1`],
        ['site', 'edge', '***', `mqtt://edge@${HOST}:2`],
      ]);
      assert.match(r.stderr, /configuration is valid/);
      assert.equal(await canConnect(port), false, 'something listens on FANOUT_PORT');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('--check on an invalid environment: the error on stderr, nothing on stdout, exit 2; a password in the value is hidden', async () => {
    const r = await run(['--check'], { FANOUT_BROKERS: `b=mqtt://u:pw-hidden-5@${HOST}:99999` });
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^mqtt-fanout: FANOUT_BROKERS="b=mqtt:\/\/u:\*\*\*@127\.0\.0\.1:99999" is invalid: /);
    assert.ok(!r.stderr.includes('pw-hidden-5'));
    const unknown = await run(['--check'], { FANOUT_PROT: '1883' });
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /FANOUT_PROT="1883" is not a known variable \(did you mean FANOUT_PORT\?\)/);
  });

  test('an unknown argument, or more than one: an error naming it and the usage on stderr, exit 2, nothing started', async () => {
    for (const args of [['--bogus'], ['start'], ['--check', '--version']]) {
      const r = await run(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, args.length === 1 ? new RegExp(`^mqtt-fanout: unknown argument "${args[0]}"`) : /^mqtt-fanout: expected at most one argument, got 2/);
      assert.match(r.stderr, /Usage: mqtt-fanout/);
    }
  });
});
