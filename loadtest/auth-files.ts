// The auth scenario's password file and ACL file for mqtt-fanout (fanout-auth), and the
// credentials each load-test connection presents. Every device is a user of its own, as in a
// real fleet, so a cache of verified passwords (the daemon has none) could not flatter the figures.
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** mosquitto_passwd's default for $7$ (PBKDF2-HMAC-SHA512) hashes, and the sizes the broker requires. */
export const PBKDF2_ITERATIONS = 101;
const SALT_BYTES = 12;
const HASH_BYTES = 64;

/** The user name is the device (or connection) number, or `probe`; the password follows from it. */
export function deviceCredentials(id: number | string): { username: string; password: string } {
  return { username: String(id), password: `lt-pw-${id}` };
}

/** A mosquitto password-file line, as `mosquitto_passwd -b` writes it (mosquitto 2.0). */
export function passwordLine(username: string, password: string, iterations = PBKDF2_ITERATIONS): string {
  const salt = randomBytes(SALT_BYTES);
  const hash = pbkdf2Sync(password, salt, iterations, HASH_BYTES, 'sha512');
  return `${username}:$7$${iterations}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/**
 * The ACL a fleet would have: each device may publish only on its own topic (the topic
 * pattern with %u for {id}) and read only its own commands; nothing for anonymous devices.
 */
export function aclText(topicPattern: string): string {
  return [
    '# mqtt-fanout load test: each device publishes on its own topic, reads its own commands',
    `pattern write ${topicPattern.split('{id}').join('%u')}`,
    'pattern read cmd/%u/#',
    '',
  ].join('\n');
}

/** Writes passwd (users 0..users-1 and probe) and acl under `dir`. */
export function writeAuthFiles(dir: string, users: number, topicPattern: string): { passwordFile: string; aclFile: string } {
  const lines: string[] = [];
  for (const id of [...Array.from({ length: users }, (_, i) => i), 'probe']) {
    const { username, password } = deviceCredentials(id);
    lines.push(passwordLine(username, password));
  }
  const passwordFile = path.join(dir, 'passwd');
  const aclFile = path.join(dir, 'acl');
  fs.writeFileSync(passwordFile, lines.join('\n') + '\n');
  fs.writeFileSync(aclFile, aclText(topicPattern));
  return { passwordFile, aclFile };
}
