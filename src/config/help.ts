// What `mqtt-fanout --help` prints: the options, then every FANOUT_* variable from the same
// declarations loadConfig() and the README table use, grouped by what it configures.

import { VARIABLES, type VarSpec } from './schema';

type Key = keyof typeof VARIABLES;

/** Every variable belongs to one group; a variable added to the schema but not here is listed
 *  under "Other", never left out. */
const GROUPS: ReadonlyArray<readonly [string, readonly Key[]]> = [
  ['Listeners', ['host', 'port', 'wsPort', 'wssPort', 'wsPath', 'httpPort', 'tlsPort', 'tlsCert', 'tlsKey', 'tlsCa',
    'tlsRequireClientCert', 'tlsIdentityAsUsername']],
  ['Brokers and routes', ['brokers', 'brokersFile', 'routes', 'coverFilters', 'ack', 'proxyId', 'statusTopic',
    'reconnectMinMs', 'reconnectMaxMs', 'pendingThrottleMs', 'upstreamMode', 'upstreamClientId', 'upstreamConnectRate',
    'upstreamConnectTimeoutMs']],
  ['Devices and limits', ['passwordFile', 'aclFile', 'allowAnonymous', 'maxPacketSize', 'maxInflight', 'maxConnections',
    'maxConnectRate', 'maxTopicLength', 'maxTopicLevels', 'maxSubscriptions', 'maxPublishRate', 'maxQueuedMessages',
    'queueOverflow', 'sessionExpiryMaxS', 'sessionStore', 'connectTimeoutMs']],
  ['Durable spool', ['spoolDir', 'spoolFsyncMs', 'spoolMaxBytes', 'spoolOverflow', 'conflateTopics']],
  ['Threads and memory', ['shards', 'ringBytes', 'uplinkQueueBytes', 'threadHeapMb', 'threadYoungMb', 'malloc']],
  ['Operation', ['logLevel', 'logFormat', 'traceClients', 'adminToken', 'shutdownTimeoutMs', 'testHooks']],
];

const WIDTH = 100;
const INDENT = '      ';

export const USAGE = 'Usage: mqtt-fanout [--help | --version | --check]';

export function renderHelp(): string {
  const listed = new Set(GROUPS.flatMap(([, keys]) => keys));
  const other = (Object.keys(VARIABLES) as Key[]).filter((key) => !listed.has(key));
  const groups = other.length > 0 ? [...GROUPS, ['Other', other] as const] : GROUPS;
  return [
    USAGE,
    '',
    'MQTT fan-out proxy: devices connect once, every publish reaches several upstream brokers.',
    'Without an option it runs until SIGTERM or SIGINT; SIGHUP reloads. It is configured by the',
    'FANOUT_* environment variables below only (an empty value counts as unset).',
    '',
    'Options:',
    '  --help, -h   print this text and exit',
    '  --version    print the version and exit',
    '  --check      validate the environment, print the effective configuration as JSON with',
    '               secrets shown as ***, and exit: 0 when valid, 2 when not',
    ...groups.flatMap(([title, keys]) => ['', `${title}:`, ...keys.flatMap((key) => variable(VARIABLES[key]))]),
    '',
  ].join('\n');
}

function variable(spec: VarSpec<unknown>): string[] {
  const header = `  ${spec.name}  (default: ${spec.default})`;
  const text = `${spec.description} Allowed: ${spec.allowed}.`;
  return header.length <= WIDTH ? [header, ...wrap(text)] : [`  ${spec.name}`, ...wrap(`(default: ${spec.default}) ${text}`)];
}

function wrap(text: string): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line !== '' && INDENT.length + line.length + 1 + word.length > WIDTH) {
      lines.push(INDENT + line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(INDENT + line);
  return lines;
}
