// Public face of the configuration: turns the FANOUT_* environment into one frozen Config or
// a single-line ConfigError naming the variable, the (redacted) value and what is allowed.

import fs from 'node:fs';
import os from 'node:os';
import tls from 'node:tls';
import { applyCredentialFiles, credentialVariable, isCredentialVariable } from './broker-files';
import { parseBrokerList, redactList, redactUrl } from './brokers';
import { envSchema, SPECS, type ShownParams } from './schema';
import type { BrokerConfig, Config } from './types';
import { upstreamModeOf } from './upstream';

export type {
  AckMode, BrokerConfig, Config, LogFormat, LogLevel, QoS, QueueOverflow, RetainMode, Route, RouteDirection,
} from './types';
export { describeBrokerParams, redactUrl } from './brokers';
export { brokerEnvName, credentialVariable } from './broker-files';
export { defaultRoutes, RouteTable, type OutMatch } from './routes';
export type { CredentialsMode, UpstreamMode } from './types';

export class ConfigError extends Error {
  readonly code = 'FANOUT_ERR_CONFIG';

  constructor(
    /** The offending FANOUT_* variable. */
    readonly variable: string,
    /** What the variable held as shown in the message: broker passwords are already `***`. */
    readonly value: string | undefined,
    message: string,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

const PREFIX = 'FANOUT_';
const MAX_SUGGESTION_DISTANCE = 3;

/**
 * Parses, validates and converts the FANOUT_* variables of `env` into a deeply frozen Config.
 * An empty value counts as unset. Throws a ConfigError on the first problem found, checking
 * unknown variables (typos) before values so a misspelt name is not reported as a missing one.
 */
export function loadConfig(given: NodeJS.ProcessEnv = process.env, opts?: { cpus?: number; tty?: boolean }): Config {
  rejectUnknown(given);
  const brokersFile = given.FANOUT_BROKERS_FILE === '' ? undefined : given.FANOUT_BROKERS_FILE;
  const env = brokersFile === undefined ? given : { ...given, FANOUT_BROKERS: readBrokersFile(brokersFile, given) };
  const host = { cpus: opts?.cpus ?? os.availableParallelism(), hostname: os.hostname(), tty: opts?.tty ?? process.stdout.isTTY === true };
  const result = envSchema(host).safeParse(env);
  if (!result.success) {
    const issue = result.error.issues[0];
    const variable = String(issue.path[0]);
    const params = issue.code === 'custom' ? (issue.params as ShownParams | undefined) : undefined;
    const value = params?.shown ?? shown(env[variable]);
    if (variable === 'FANOUT_BROKERS' && brokersFile !== undefined) {
      throw new ConfigError('FANOUT_BROKERS_FILE', brokersFile,
        `FANOUT_BROKERS_FILE=${quote(brokersFile)} is invalid: entry ${quote(value)}: ${issue.message}`);
    }
    throw new ConfigError(variable, value, `${variable}=${quote(value)} is invalid: ${issue.message}`);
  }
  const config = result.data;
  // A record must always fit in a ring, or a large publish could never be forwarded.
  const minRing = 2 * (config.maxPacketSize + 64);
  if (config.ringBytes < minRing) {
    const value = String(config.ringBytes);
    throw new ConfigError('FANOUT_RING_BYTES', value,
      `FANOUT_RING_BYTES=${quote(value)} is invalid: expected at least twice FANOUT_MAX_PACKET_SIZE plus 128 (${minRing}); raise it or lower FANOUT_MAX_PACKET_SIZE`);
  }
  checkTls(config);
  checkWssPort(config);
  if (config.spoolDir !== null) {
    try {
      fs.mkdirSync(config.spoolDir, { recursive: true });
      fs.accessSync(config.spoolDir, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK);
    } catch (err) {
      throw new ConfigError('FANOUT_SPOOL_DIR', config.spoolDir,
        `FANOUT_SPOOL_DIR=${quote(config.spoolDir)} is invalid: expected a folder this process can create, read and write (${(err as NodeJS.ErrnoException).code ?? 'unusable'})`);
    }
  }
  if (config.conflateTopics !== null && config.spoolDir === null) {
    const value = config.conflateTopics.join(',');
    throw new ConfigError('FANOUT_CONFLATE_TOPICS', value, `FANOUT_CONFLATE_TOPICS=${quote(value)} is invalid: conflation works on the spool, and FANOUT_SPOOL_DIR is not set`);
  }
  for (const [variable, path] of [['FANOUT_PASSWORD_FILE', config.passwordFile], ['FANOUT_ACL_FILE', config.aclFile]] as const) {
    if (path === null) continue;
    try {
      fs.accessSync(path, fs.constants.R_OK);
    } catch (err) {
      throw new ConfigError(variable, path, `${variable}=${quote(path)} is invalid: expected a readable file (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
    }
  }
  const credentials = applyCredentialFiles(config.brokers, config.embeddedBroker, env);
  if (!credentials.ok) {
    const { variable, value, reason } = credentials;
    throw new ConfigError(variable, value, `${variable}=${quote(value)} is invalid: ${reason}`);
  }
  checkBrokerRules(config, credentials.brokers, env);
  const allowAnonymous = config.allowAnonymous ?? config.passwordFile === null;
  return deepFreeze({ ...config, brokers: credentials.brokers, allowAnonymous });
}

/** FANOUT_BROKERS_FILE's entries as one FANOUT_BROKERS value: one or more comma-separated
 *  entries per line, blank lines and # comments left out. */
function readBrokersFile(path: string, env: NodeJS.ProcessEnv): string {
  const fail = (why: string): never => {
    throw new ConfigError('FANOUT_BROKERS_FILE', path, `FANOUT_BROKERS_FILE=${quote(path)} is invalid: ${why}`);
  };
  if (env.FANOUT_BROKERS !== undefined && env.FANOUT_BROKERS !== '') fail('expected it or FANOUT_BROKERS, not both: unset one of them');
  let text = '';
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    fail(`expected a readable file holding the broker list (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  const entries = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
    .flatMap((l) => l.split(',').map((e) => e.trim()).filter((e) => e !== ''));
  if (entries.length === 0) fail('expected at least one name=url entry: the file has none');
  return entries.join(',');
}

/** credentials=fixed logs every device in with the broker's own user name, which may come from a
 *  file (FANOUT_BROKER_<NAME>_USERNAME_FILE): only known once those are applied. */
function checkBrokerRules(config: Config, brokers: readonly BrokerConfig[], env: NodeJS.ProcessEnv): void {
  const rules: [(b: BrokerConfig) => boolean, (b: BrokerConfig) => string][] = [
    [(b) => b.credentials === 'fixed' && b.username === undefined,
      (b) => `credentials=fixed needs a user name (in the URL or ${credentialVariable(b.name, 'USERNAME')})`],
    // A device's own session lives at one broker: it does not move between addresses.
    [(b) => b.failover !== undefined && upstreamModeOf(config, b) === 'per-device',
      () => 'failover applies to pooled brokers only, and this one is per-device (mode or FANOUT_UPSTREAM_MODE)'],
  ];
  for (const [breaks, why] of rules) {
    const b = brokers.find(breaks);
    if (b === undefined) continue;
    const value = shown(env.FANOUT_BROKERS) ?? '';
    throw new ConfigError('FANOUT_BROKERS', value, `FANOUT_BROKERS=${quote(value)} is invalid: broker "${b.name}": ${why(b)}`);
  }
}

/** The TLS variables go together, and the files must make a usable TLS context now rather than
 *  at the first device. */
function checkTls(c: Config): void {
  const fail = (variable: string, value: string, why: string): never => {
    throw new ConfigError(variable, value, `${variable}=${quote(value)} is invalid: ${why}`);
  };
  for (const [variable, path] of [['FANOUT_TLS_CERT', c.tlsCert], ['FANOUT_TLS_KEY', c.tlsKey], ['FANOUT_TLS_CA', c.tlsCa]] as const) {
    if (path === null) continue;
    try {
      fs.accessSync(path, fs.constants.R_OK);
    } catch (err) {
      fail(variable, path, `expected a readable file (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
    }
  }
  // Both TLS listeners serve the same certificate; the message names the one that asked for it.
  const listener = c.tlsPort !== null ? 'FANOUT_TLS_PORT' : c.wssPort !== null ? 'FANOUT_WSS_PORT' : null;
  if (listener !== null) {
    if (c.tlsCert === null) fail('FANOUT_TLS_CERT', '', `expected a certificate file: ${listener} is set`);
    if (c.tlsKey === null) fail('FANOUT_TLS_KEY', '', `expected a private key file: ${listener} is set`);
    try {
      tls.createSecureContext(tlsFiles(c));
    } catch (err) {
      fail('FANOUT_TLS_CERT', c.tlsCert!, `the certificate, key (FANOUT_TLS_KEY) and CA files do not make a TLS context: ${(err as Error).message}`);
    }
  }
  if (c.tlsRequireClientCert && c.tlsCa === null) fail('FANOUT_TLS_CA', '', 'expected a CA file: FANOUT_TLS_REQUIRE_CLIENT_CERT is true');
  if (c.tlsIdentityAsUsername && !c.tlsRequireClientCert) {
    fail('FANOUT_TLS_CN_AS_USERNAME', 'true', 'needs FANOUT_TLS_REQUIRE_CLIENT_CERT=true (every device then has a certificate)');
  }
}

/** uSockets binds the WebSocket ports with SO_REUSEPORT, so a port shared with another listener
 *  would not fail: the kernel would hand each connection to one of them at random. */
function checkWssPort(c: Config): void {
  if (c.wssPort === null || c.wssPort === 0) return;
  const others = [['FANOUT_PORT', c.port], ['FANOUT_WS_PORT', c.wsPort], ['FANOUT_TLS_PORT', c.tlsPort], ['FANOUT_HTTP_PORT', c.httpPort]] as const;
  const clash = others.find(([, port]) => port === c.wssPort);
  if (clash !== undefined) {
    const value = String(c.wssPort);
    throw new ConfigError('FANOUT_WSS_PORT', value, `FANOUT_WSS_PORT=${quote(value)} is invalid: expected a port no other listener uses (${clash[0]} is ${value})`);
  }
}

/** What the device-facing TLS listeners (TLS and WSS) are configured with. */
export type DeviceTls = Pick<Config, 'tlsCert' | 'tlsKey' | 'tlsCa' | 'tlsRequireClientCert' | 'tlsIdentityAsUsername'>;

/** The TLS and WSS listeners' key material, read from the configured files (again on SIGHUP). */
export function tlsFiles(c: DeviceTls): tls.SecureContextOptions {
  return {
    cert: fs.readFileSync(c.tlsCert!),
    key: fs.readFileSync(c.tlsKey!),
    ca: c.tlsCa === null ? undefined : fs.readFileSync(c.tlsCa),
  };
}

/** The variables as documentation rows, straight from the declarations loadConfig uses. */
export function describeEnv(): Array<{ name: string; default: string; allowed: string; description: string }> {
  return SPECS.map(({ name, default: def, allowed, description }) => ({ name, default: def, allowed, description }));
}

/** The config as a plain object safe to log: a broker password, from its URL or from a file,
 *  is only ever shown as `***`. */
export function redactedConfig(c: Config): object {
  return {
    ...c,
    brokers: c.brokers.map(redactBroker),
    sessionStore: c.sessionStore === null ? null : redactUrl(c.sessionStore),
    adminToken: c.adminToken === null ? null : '***',
  };
}

function redactBroker({ password, ...rest }: BrokerConfig): object {
  return password === undefined ? rest : { ...rest, password: '***' };
}

/** The broker credential files (FANOUT_BROKER_<NAME>_..._FILE) are known by their pattern here;
 *  whether <NAME> is a broker is checked once FANOUT_BROKERS is parsed. */
function rejectUnknown(env: NodeJS.ProcessEnv): void {
  const known = SPECS.map((spec) => spec.name);
  const unknown = Object.keys(env)
    .filter((name) => name.startsWith(PREFIX) && env[name] !== '' && env[name] !== undefined && !known.includes(name) && !isCredentialVariable(name))
    .sort();
  if (unknown.length === 0) return;
  const variable = unknown[0];
  const value = shown(env[variable]);
  const suggestion = closest(variable, [...known, ...credentialVariables(env.FANOUT_BROKERS)]);
  const hint = suggestion === undefined ? '' : ` (did you mean ${suggestion}?)`;
  throw new ConfigError(variable, value, `${variable}=${quote(value)} is not a known variable${hint}`);
}

/** The file variables of the brokers in FANOUT_BROKERS, as suggestions for a misspelt one. */
function credentialVariables(brokers: string | undefined): string[] {
  const parsed = brokers === undefined || brokers === '' ? null : parseBrokerList(brokers);
  if (parsed === null || !parsed.ok) return [];
  return parsed.brokers.flatMap((b) => [credentialVariable(b.name, 'USERNAME'), credentialVariable(b.name, 'PASSWORD')]);
}

/** Every shown value goes through redactList, so a URL with a password pasted into the wrong
 *  variable is not leaked either. */
function shown(raw: string | undefined): string | undefined {
  return raw === undefined ? undefined : redactList(raw);
}

/** JSON quoting keeps the message on one line whatever the value contains. */
function quote(value: string | undefined): string {
  return JSON.stringify(value ?? '');
}

function closest(name: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = MAX_SUGGESTION_DISTANCE + 1;
  for (const candidate of candidates) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/** Levenshtein distance with a single rolling row. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length];
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
