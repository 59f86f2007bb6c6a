// Unit tests for who may POST /publish and POST /admin/reload (src/ingress/http-auth.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { aclRefusal, adminRefusal, authenticateHttp, HTTP_CLIENT_ID, parseBasic, type HttpAuthRules } from '../../src/ingress/http-auth';
import { parseAclFile } from '../../src/auth/acl';

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

test('parseBasic: user:password, a password with colons, an empty password; no header is null', () => {
  assert.deepEqual(parseBasic(`Basic ${b64('alice:s3cret')}`), { username: 'alice', password: Buffer.from('s3cret') });
  assert.deepEqual(parseBasic(`basic ${b64('alice:a:b')}`), { username: 'alice', password: Buffer.from('a:b') });
  assert.deepEqual(parseBasic(`Basic ${b64('ünï:')}`), { username: 'ünï', password: Buffer.alloc(0) });
  assert.equal(parseBasic(undefined), null);
});

test('parseBasic: other schemes, no colon, an empty user name, a user name that is not UTF-8 or holds U+0000 are invalid', () => {
  for (const h of ['Bearer abc', `Basic ${b64('alice')}`, `Basic ${b64(':pw')}`, 'Basic !!!', `Basic ${b64(Buffer.from([0xc3, 0x28, 0x3a, 0x70]))}`, `Basic ${b64('a\u0000b:pw')}`]) {
    assert.equal(parseBasic(h), 'invalid', h);
  }
});

const acl = parseAclFile(['topic write pub/#', 'user alice', 'topic write a/#', 'pattern write d/%c/%u', ''].join('\n')).acl;
const rules = (allowAnonymous: boolean, verify: HttpAuthRules['verify']): HttpAuthRules => ({
  allowAnonymous, verify, acl: (clientId, username) => acl.forClient(clientId, username),
});
const check = async (username: string, password: Buffer): Promise<boolean> => username === 'alice' && password.equals(Buffer.from('pw'));

test('authenticateHttp: verified credentials give the user; wrong ones and missing ones (anonymous off) are 401', async () => {
  assert.deepEqual(await authenticateHttp(`Basic ${b64('alice:pw')}`, rules(false, check)), { username: 'alice' });
  assert.equal((await authenticateHttp(`Basic ${b64('alice:no')}`, rules(true, check)) as { status: number }).status, 401);
  assert.equal((await authenticateHttp(undefined, rules(false, check)) as { status: number }).status, 401);
  assert.deepEqual(await authenticateHttp(undefined, rules(true, check)), { username: null });
  // Without a password file a user name is taken as given, as a device's is.
  assert.deepEqual(await authenticateHttp(`Basic ${b64('bob:any')}`, rules(true, null)), { username: 'bob' });
});

test('aclRefusal: the user\'s write rules, %c being "http"; anonymous gets the rules before the first user line', () => {
  assert.equal(HTTP_CLIENT_ID, 'http');
  assert.equal(aclRefusal('alice', 'a/x', rules(false, null)), null);
  assert.equal(aclRefusal('alice', 'd/http/alice', rules(false, null)), null);
  assert.equal(aclRefusal('alice', 'd/dev1/alice', rules(false, null))?.status, 403);
  assert.equal(aclRefusal(null, 'pub/x', rules(true, null)), null);
  assert.equal(aclRefusal(null, 'a/x', rules(true, null))?.status, 403);
  assert.equal(aclRefusal('alice', 'anything', { ...rules(false, null), acl: () => null }), null, 'no ACL file: everything');
});

test('adminRefusal: 403 without FANOUT_ADMIN_TOKEN; 401 without Bearer, with another scheme or a wrong token; null with it', () => {
  const token = 'admin-token-0123456789';
  assert.equal(adminRefusal(`Bearer ${token}`, null)?.status, 403);
  assert.match(adminRefusal(`Bearer ${token}`, null)!.error, /FANOUT_ADMIN_TOKEN is not set/);
  for (const h of [undefined, '', 'Bearer', `Basic ${b64(`admin:${token}`)}`, `Bearer ${token}x`, `Bearer ${token.slice(1)}`, `Bearer ${token} extra`]) {
    assert.equal(adminRefusal(h, token)?.status, 401, String(h));
  }
  assert.equal(adminRefusal(`Bearer ${token}`, token), null);
  assert.equal(adminRefusal(`bearer  ${token}`, token), null);
});
