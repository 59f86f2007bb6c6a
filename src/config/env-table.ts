// Renders the README's configuration reference from the variable declarations. Run directly
// (`node dist/src/config/env-table.js`) it rewrites README.md between the markers in place;
// test/config/env-table.test.ts fails whenever the committed README differs from it.

import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describeBrokerParams, describeEnv } from './index';
import { packageRoot } from '../package-info';

export const START_MARKER = '<!-- env-table:start -->';
export const END_MARKER = '<!-- env-table:end -->';
/** From dist/src/config/ (compiled) or src/config/ under ts-node alike: find the package root. */
export const README_PATH = path.join(packageRoot(__dirname), 'README.md');

type Row = { name: string; default: string; allowed: string; description: string };

/** The exact text that belongs between the two markers, surrounding newlines included. */
export function renderEnvTable(): string {
  return [
    '',
    'All settings are environment variables; an empty value counts as unset. Any other variable',
    'starting with `FANOUT_` is rejected at start-up, so typos cannot go unnoticed.',
    '',
    table('Variable', describeEnv()),
    '',
    'Each `FANOUT_BROKERS` URL takes these query parameters, e.g.',
    '`cloud=mqtts://user:pass@mqtt.example.com?pool=8&maxQos=1`. The default port is 1883 for',
    '`mqtt` and 8883 for `mqtts`. User and password are percent-decoded, so `,` `/` `?` `#` `@` and `%` in',
    'them must be percent-encoded.',
    '',
    table('Parameter', describeBrokerParams()),
    '',
    'A broker\'s user name and password can be kept out of the environment, as Docker and Kubernetes',
    'secrets are: `FANOUT_BROKER_<NAME>_USERNAME_FILE` and `FANOUT_BROKER_<NAME>_PASSWORD_FILE` name files',
    'holding them, `<NAME>` being the broker\'s name in `FANOUT_BROKERS` upper-cased, with `_` for any',
    'character other than a letter or a digit (`cloud-eu` → `CLOUD_EU`). Each file holds the value on one',
    'line of UTF-8, not percent-encoded; one trailing newline is dropped. The files are read at start-up and again by a reload (see Hot reload).',
    'Start-up stops, naming the variable, when a file is missing, unreadable, empty or has more than one line,',
    'when no broker (or more than one) has that `<NAME>`, when the URL already has a user name or password',
    'of its own (give each in one place), and when a password has no user name to go with it. Passwords read',
    'from files are hidden like the URL\'s: `***` wherever the configuration is shown, and in no log line.',
    '',
    '```sh',
    "FANOUT_BROKERS='cloud-eu=mqtts://mqtt.example.com,site=mqtt://127.0.0.1:1884'",
    'FANOUT_BROKER_CLOUD_EU_USERNAME_FILE=/run/secrets/cloud_user',
    'FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE=/run/secrets/cloud_password',
    '```',
    '',
  ].join('\n');
}

/** Replaces the text between the markers; throws when they are missing or out of order. */
export function replaceSection(readme: string, section: string): string {
  const start = readme.indexOf(START_MARKER);
  const end = readme.indexOf(END_MARKER);
  if (start < 0 || end < start) throw new Error(`README.md must contain ${START_MARKER} followed by ${END_MARKER}`);
  return readme.slice(0, start + START_MARKER.length) + section + readme.slice(end);
}

/** The text currently between the markers, or undefined when they are missing. */
export function readSection(readme: string): string | undefined {
  const start = readme.indexOf(START_MARKER);
  const end = readme.indexOf(END_MARKER);
  return start < 0 || end < start ? undefined : readme.slice(start + START_MARKER.length, end);
}

function table(firstColumn: string, rows: readonly Row[]): string {
  return [
    `| ${firstColumn} | Default | Allowed | Description |`,
    '| --- | --- | --- | --- |',
    ...rows.map((row) => `| \`${row.name}\` | ${[row.default, row.allowed, row.description].map(cell).join(' | ')} |`),
  ].join('\n');
}

// `|` would end the cell and `<` `*` could start HTML or emphasis; the rest of the texts is
// kept unescaped so the README source stays readable.
function cell(text: string): string {
  return text.replace(/[\\|<>*]/g, (c) => `\\${c}`);
}

if (require.main === module) {
  const readme = readFileSync(README_PATH, 'utf8');
  const updated = replaceSection(readme, renderEnvTable());
  if (updated !== readme) writeFileSync(README_PATH, updated);
  console.log(`${README_PATH}: environment table ${updated === readme ? 'already up to date' : 'updated'}`);
}
