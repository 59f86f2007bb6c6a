// Tests for mosquitto password file parsing and verification (src/auth/password-file.ts), on
// files written by the real mosquitto_passwd.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, pbkdf2Sync } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parsePasswordFile, verifyPassword, type PasswordEntry } from '../../src/auth/password-file';

const MOSQUITTO_PASSWD = process.env.MOSQUITTO_PASSWD_BIN ?? 'mosquitto_passwd';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-pwfile-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function passwd(...args: string[]): void {
  execFileSync(MOSQUITTO_PASSWD, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

const USERS: Record<string, string> = {
  alice: 'secret',
  bob: 'p@ss:w0rd with spaces',
  'dave smith': 'ünïcødé ✓',
  erin: '',
};

function makeFile(): string {
  const file = path.join(dir, 'passwd');
  const names = Object.keys(USERS);
  passwd('-c', '-b', file, names[0], USERS[names[0]]);
  for (const name of names.slice(1)) passwd('-b', file, name, USERS[name]);
  passwd('-H', 'sha512', '-b', file, 'carol', 'hunter2');
  passwd('-I', '5000', '-b', file, 'frank', 'many rounds');
  return file;
}

const file = makeFile();
const text = fs.readFileSync(file, 'utf8');
const parsed = parsePasswordFile(text);

function entry(name: string): PasswordEntry {
  const e = parsed.entries.get(name);
  assert.ok(e, `no entry for ${name}`);
  return e;
}

test('mosquitto_passwd lines parse: $7$ by default, $6$ with -H sha512, -I iterations', () => {
  assert.deepEqual(parsed.errors, []);
  assert.deepEqual([...parsed.entries.keys()].sort(), ['alice', 'bob', 'carol', 'dave smith', 'erin', 'frank']);
  const alice = entry('alice');
  assert.equal(alice.username, 'alice');
  assert.equal(alice.kind, 'pbkdf2-sha512');
  assert.equal(alice.iterations, 101);
  assert.equal(alice.salt.length, 12);
  assert.equal(alice.hash.length, 64);
  assert.equal(entry('carol').kind, 'sha512');
  assert.equal(entry('carol').iterations, 1);
  assert.equal(entry('frank').iterations, 5000);
  assert.ok(Object.isFrozen(alice));
  // The buffers do not share the 8 KiB pool (postMessage would copy the whole slab).
  assert.equal(alice.salt.buffer.byteLength, 12);
  assert.equal(alice.hash.buffer.byteLength, 64);
});

test('the right password verifies, a wrong one does not', () => {
  for (const [name, pw] of Object.entries({ ...USERS, carol: 'hunter2', frank: 'many rounds' })) {
    assert.equal(verifyPassword(entry(name), Buffer.from(pw, 'utf8')), true, name);
    assert.equal(verifyPassword(entry(name), Buffer.from(pw + 'x', 'utf8')), false, name);
  }
  assert.equal(verifyPassword(entry('alice'), Buffer.from('Secret')), false);
  assert.equal(verifyPassword(entry('alice'), Buffer.alloc(0)), false);
  assert.equal(verifyPassword(entry('erin'), Buffer.alloc(0)), true);
  // A 0 byte is part of the password (mosquitto's C strings would cut the rest off)...
  assert.equal(verifyPassword(entry('alice'), Buffer.from('secret\0x')), false);
  assert.equal(verifyPassword(entry('carol'), Buffer.from('hunter2\0')), false);
  // ...except trailing ones with PBKDF2: HMAC pads short keys with zeros.
  assert.equal(verifyPassword(entry('alice'), Buffer.from('secret\0')), true);
  // Another user's password.
  assert.equal(verifyPassword(entry('bob'), Buffer.from('secret')), false);
});

test('the hashes are the documented constructions', () => {
  const alice = entry('alice');
  assert.deepEqual(pbkdf2Sync('secret', alice.salt, 101, 64, 'sha512'), alice.hash);
  const carol = entry('carol');
  assert.deepEqual(createHash('sha512').update('hunter2').update(carol.salt).digest(), carol.hash);
});

test('blank lines, comments, CRLF and blanks around fields are accepted', () => {
  const lines = text.trimEnd().split('\n');
  const messy = ['# made by mosquitto_passwd', '', '   ', `  ${lines[0].replace(':', ' : ')}  `, ...lines.slice(1)].join('\r\n');
  const p = parsePasswordFile(`\uFEFF${messy}\r\n`);
  assert.deepEqual(p.errors, []);
  assert.equal(p.entries.size, 6);
  assert.equal(verifyPassword(p.entries.get('alice') as PasswordEntry, Buffer.from('secret')), true);
});

test('bad lines are reported with their number and skipped; others still load', () => {
  const alice = text.split('\n').find((l) => l.startsWith('alice:')) as string;
  const [, , iter, salt, hash] = alice.slice('alice:'.length).split('$');
  const bad = [
    alice, // 1
    'no colon here, maybe a pasted password', // 2
    ':$7$101$' + salt + '$' + hash, // 3
    'plain:hunter2', // 4: plain-text (needs mosquitto_passwd -U)
    'empty:', // 5
    `iter0:$7$0$${salt}$${hash}`, // 6
    `iterx:$7$10x$${salt}$${hash}`, // 7
    `shortsalt:$7$${iter}$${salt.slice(4)}$${hash}`, // 8
    `badb64:$7$${iter}$${salt.slice(0, -1)}*$${hash}`, // 9
    `shorthash:$7$${iter}$${salt}$${hash.slice(8)}`, // 10
    `fields:$7$${iter}$${salt}`, // 11
    `sixextra:$6$${salt}$${hash}$more`, // 12
    `unknown:$5$${salt}$${hash}`, // 13
    alice.replace(/\$[^$]+$/, '$SECRETHASH'), // 14: a duplicate user, and a bad hash
    alice, // 15: duplicate
    `${'u'.repeat(65536)}:$7$${iter}$${salt}$${hash}`, // 16
    `ok:$7$${iter}$${salt}$${hash}:trailing fields are ignored, as in mosquitto`, // 17
  ].join('\n');
  const p = parsePasswordFile(bad);
  assert.deepEqual([...p.entries.keys()], ['alice', 'ok']);
  assert.deepEqual(p.errors.map((e) => e.line), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
  const msg = (line: number): string => (p.errors.find((e) => e.line === line) as { message: string }).message;
  assert.match(msg(2), /no ":"/);
  assert.match(msg(3), /empty username/);
  assert.match(msg(4), /not a mosquitto \$6\$ or \$7\$ hash.*-U/);
  assert.match(msg(5), /no password hash/);
  assert.match(msg(6), /iteration/);
  assert.match(msg(7), /iteration/);
  assert.match(msg(8), /salt is not 12 bytes/);
  assert.match(msg(9), /salt is not 12 bytes/);
  assert.match(msg(10), /hash is not 64 bytes/);
  assert.match(msg(11), /malformed \$7\$/);
  assert.match(msg(12), /malformed \$6\$/);
  assert.match(msg(13), /not a mosquitto/);
  assert.match(msg(15), /"alice" is already defined on line 1/);
  assert.match(msg(16), /longer than 65535/);
  // Messages never quote a hash, a salt, or what may be a plain-text password.
  for (const e of p.errors) {
    for (const secret of [salt, hash, 'hunter2', 'SECRETHASH', 'pasted password']) assert.ok(!e.message.includes(secret), e.message);
  }
  assert.equal(verifyPassword(p.entries.get('ok') as PasswordEntry, Buffer.from('secret')), true);
});

test('an empty file has no entries and no errors', () => {
  assert.deepEqual(parsePasswordFile(''), { entries: new Map(), errors: [] });
  assert.equal(parsePasswordFile('\n# only a comment\n').entries.size, 0);
});
