// Broker credentials from files: FANOUT_BROKER_<NAME>_USERNAME_FILE and
// FANOUT_BROKER_<NAME>_PASSWORD_FILE, the `*_FILE` convention of Docker and Kubernetes secrets
// (a file under /run/secrets/ or a mounted Secret volume), so a password need not sit in the
// environment, where `docker inspect`, /proc/<pid>/environ and crash reports show it.
// The file's content is the value, less one trailing newline (what `echo` and most editors
// add). Nothing read here ever reaches a message: errors name the variable and the path only.

import fs from 'node:fs';
import type { BrokerConfig } from './types';

export type CredentialKind = 'USERNAME' | 'PASSWORD';

const FILE_VAR_RE = /^FANOUT_BROKER_(.+)_(USERNAME|PASSWORD)_FILE$/;
const NAME_RULE = "<NAME> being a broker's name in FANOUT_BROKERS upper-cased, with _ for any character other than a letter or a digit";
/** MQTT encodes the user name and the password with a 2-byte length. */
const MAX_BYTES = 65535;

/** `cloud-eu` → `CLOUD_EU`: the <NAME> of the broker's file variables. */
export function brokerEnvName(name: string): string {
  return name.toUpperCase().replace(/[^A-Z0-9]/g, '_');
}

/** The variable that holds the path of a broker's user name or password file. */
export function credentialVariable(broker: string, kind: CredentialKind): string {
  return `FANOUT_BROKER_${brokerEnvName(broker)}_${kind}_FILE`;
}

/** True for any name of the FANOUT_BROKER_<NAME>_{USERNAME,PASSWORD}_FILE pattern. */
export function isCredentialVariable(variable: string): boolean {
  return FILE_VAR_RE.test(variable);
}

/** `value` is what the message shows: the file path, never what the file holds. */
export type CredentialFilesResult =
  | { readonly ok: true; readonly brokers: BrokerConfig[] }
  | { readonly ok: false; readonly variable: string; readonly value: string; readonly reason: string };

class FileVarError extends Error {
  constructor(readonly variable: string, readonly value: string, reason: string) {
    super(reason);
  }
}

/**
 * Fills the brokers' user names and passwords from the file variables set in `env` (an empty
 * value counts as unset). `embedded`: FANOUT_BROKERS is not set, so no name can match.
 */
export function applyCredentialFiles(brokers: readonly BrokerConfig[], embedded: boolean, env: NodeJS.ProcessEnv): CredentialFilesResult {
  const out = brokers.map((b) => ({ ...b }) as { -readonly [K in keyof BrokerConfig]: BrokerConfig[K] });
  const variables = Object.keys(env).filter((k) => isCredentialVariable(k) && env[k] !== undefined && env[k] !== '').sort();
  try {
    for (const variable of variables) {
      const [, name, kind] = FILE_VAR_RE.exec(variable) as unknown as [string, string, CredentialKind];
      const path = env[variable]!;
      const fail = (reason: string): never => {
        throw new FileVarError(variable, path, reason);
      };
      const matches = out.filter((b) => brokerEnvName(b.name) === name);
      if (embedded) fail(`FANOUT_BROKERS is not set, so there is no broker ${name} (the embedded broker takes no credentials); expected FANOUT_BROKER_<NAME>_${kind}_FILE, ${NAME_RULE}`);
      if (matches.length === 0) {
        const known = out.map((b) => brokerEnvName(b.name)).join(', ');
        fail(`no broker of FANOUT_BROKERS has the <NAME> ${name}; expected FANOUT_BROKER_<NAME>_${kind}_FILE with <NAME> one of ${known}, ${NAME_RULE}`);
      }
      if (matches.length > 1) {
        fail(`brokers ${matches.map((b) => `"${b.name}"`).join(' and ')} both make the <NAME> ${name}; rename one of them in FANOUT_BROKERS to tell them apart`);
      }
      const broker = matches[0];
      const what = kind === 'USERNAME' ? 'user name' : 'password';
      const field = kind === 'USERNAME' ? 'username' : 'password';
      if (broker[field] !== undefined) {
        fail(`broker "${broker.name}" has a ${what} in its FANOUT_BROKERS URL already; expected one or the other: remove it from the URL or unset ${variable}`);
      }
      broker[field] = readCredential(path, what, fail);
      broker[kind === 'USERNAME' ? 'usernameFile' : 'passwordFile'] = path;
    }
    for (const broker of out) {
      // mqtt-packet (and MQTT 3.1.1) send a password only after a user name.
      if (broker.passwordFile !== undefined && broker.username === undefined) {
        throw new FileVarError(credentialVariable(broker.name, 'PASSWORD'), broker.passwordFile,
          `broker "${broker.name}" has no user name to go with the password; expected one in its FANOUT_BROKERS URL (user@host) or in ${credentialVariable(broker.name, 'USERNAME')}`);
      }
    }
  } catch (err) {
    if (!(err instanceof FileVarError)) throw err;
    return { ok: false, variable: err.variable, value: err.value, reason: err.message };
  }
  return { ok: true, brokers: out };
}

/** The file's text less one trailing newline, checked to be one non-empty line of UTF-8. */
function readCredential(path: string, what: string, fail: (reason: string) => never): string {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(path);
  } catch (err) {
    return fail(`expected a readable file holding the ${what} (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  let end = raw.length;
  if (end > 0 && raw[end - 1] === 0x0a) end -= raw[end - 2] === 0x0d ? 2 : 1;
  const bytes = raw.subarray(0, end);
  const text = bytes.toString('utf8');
  if (bytes.length === 0) fail(`expected a file holding the ${what}: it is empty`);
  if (bytes.includes(0x0a) || bytes.includes(0x0d)) fail(`expected the ${what} on one line (one trailing newline is dropped): the file has more`);
  if (!Buffer.from(text, 'utf8').equals(bytes)) fail(`expected the ${what} as UTF-8 text`);
  if (bytes.length > MAX_BYTES) fail(`expected a ${what} of at most ${MAX_BYTES} bytes, as MQTT allows`);
  return text;
}
