// Who may POST /publish: the rules a device's CONNECT and PUBLISH meet, applied to an HTTP
// request. With FANOUT_PASSWORD_FILE the request needs HTTP Basic credentials, verified by the
// same Authenticator (piscina pool, constant-time comparison, unknown users cost what known
// ones do); without credentials it is anonymous, allowed only with FANOUT_ALLOW_ANONYMOUS. The
// FANOUT_ACL_FILE write rules of that user then decide the topic, with the client id `http`
// standing in for %c.

import { createHash, timingSafeEqual } from 'node:crypto';
import type { AclChecker } from '../auth/acl';

/** The client id an HTTP publisher has for FANOUT_ACL_FILE patterns (%c). */
export const HTTP_CLIENT_ID = 'http';

/** What answers 401 asks for. */
export const WWW_AUTHENTICATE = 'Basic realm="mqtt-fanout", charset="UTF-8"';

export interface HttpAuthRules {
  allowAnonymous: boolean;
  /** Checks a password against FANOUT_PASSWORD_FILE; null without one (user names are then
   *  taken as given, as a device's are). */
  verify: ((username: string, password: Buffer) => Promise<boolean>) | null;
  /** FANOUT_ACL_FILE's checker for this publisher, null without an ACL file. */
  acl(clientId: string, username: string | null): AclChecker | null;
}

export interface HttpRefusal {
  status: 401 | 403;
  error: string;
  /** For the operator's log line. */
  username: string | null;
}

/** HTTP Basic credentials [RFC 7617]; null without an Authorization header, 'invalid' for one
 *  that is not Basic or does not decode to user:password. */
export function parseBasic(header: string | undefined): { username: string; password: Buffer } | null | 'invalid' {
  if (header === undefined) return null;
  const m = /^Basic +([A-Za-z0-9+/]+=*) *$/i.exec(header);
  if (m === null) return 'invalid';
  const raw = Buffer.from(m[1], 'base64');
  const colon = raw.indexOf(0x3a);
  if (colon <= 0) return 'invalid';
  const username = raw.toString('utf8', 0, colon);
  // A user name a device could not send either (not UTF-8, or with a U+0000) is refused.
  if (!Buffer.from(username, 'utf8').equals(raw.subarray(0, colon)) || username.includes('\u0000')) return 'invalid';
  return { username, password: Buffer.from(raw.subarray(colon + 1)) };
}

/** Who the request is (its user name, null when anonymous), or the 401 to answer with. */
export async function authenticateHttp(authorization: string | undefined, rules: HttpAuthRules): Promise<{ username: string | null } | HttpRefusal> {
  const credentials = parseBasic(authorization);
  if (credentials === 'invalid') return { status: 401, error: 'the Authorization header must be HTTP Basic (user:password, base64)', username: null };
  if (credentials === null) {
    if (!rules.allowAnonymous) return { status: 401, error: 'authentication required (HTTP Basic): FANOUT_ALLOW_ANONYMOUS is false', username: null };
    return { username: null };
  }
  if (rules.verify !== null && !(await rules.verify(credentials.username, credentials.password))) {
    return { status: 401, error: 'unknown user or wrong password', username: credentials.username };
  }
  return { username: credentials.username };
}

/** null when `username` may publish to `topic`, else the 403 to answer with. */
export function aclRefusal(username: string | null, topic: string, rules: HttpAuthRules): HttpRefusal | null {
  const acl = rules.acl(HTTP_CLIENT_ID, username);
  if (acl === null || acl.canPublish(topic)) return null;
  return { status: 403, error: `${username === null ? 'anonymous publishers' : `user ${JSON.stringify(username)}`} may not publish to this topic (FANOUT_ACL_FILE)`, username };
}

/** What answers 401 on the admin endpoints asks for [RFC 6750]. */
export const WWW_AUTHENTICATE_ADMIN = 'Bearer realm="mqtt-fanout admin"';

/**
 * Whether an admin request (POST /admin/reload) may go on: `Authorization: Bearer <token>` with
 * FANOUT_ADMIN_TOKEN. null: it may; else the refusal (403 while no token is configured, so the
 * endpoint is off; 401 for a missing, malformed or wrong token). The tokens are compared as
 * digests in constant time, so the answer's timing tells nothing about the token.
 */
export function adminRefusal(authorization: string | undefined, token: string | null): { status: 401 | 403; error: string } | null {
  if (token === null) return { status: 403, error: 'the admin endpoints are off: FANOUT_ADMIN_TOKEN is not set' };
  const m = authorization === undefined ? null : /^Bearer +(\S+) *$/i.exec(authorization);
  if (m === null) return { status: 401, error: 'authentication required: Authorization: Bearer <FANOUT_ADMIN_TOKEN>' };
  const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
  if (!timingSafeEqual(digest(m[1]), digest(token))) return { status: 401, error: 'wrong admin token' };
  return null;
}
