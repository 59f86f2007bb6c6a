// Runs every *.bench.js next to this file, one child process at a time, passes their output
// through and ends with one summary table.
//
//   npm run bench              (= npm run build && node dist/bench/run.js)
//   node dist/bench/run.js ring publish     only the benchmarks whose file name contains a word

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPORT_ENV, RESULT_PREFIX, si, table, type BenchRow } from './common';

interface Outcome {
  file: string;
  code: number | null;
  seconds: number;
  rows: BenchRow[];
}

function runOne(file: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, [REPORT_ENV]: '1' } });
    const rows: BenchRow[] = [];
    let pending = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      pending += chunk;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.startsWith(RESULT_PREFIX)) rows.push(JSON.parse(line.slice(RESULT_PREFIX.length)) as BenchRow);
        else process.stdout.write(`${line}\n`);
      }
    });
    child.on('close', (code) => {
      if (pending.length > 0 && !pending.startsWith(RESULT_PREFIX)) process.stdout.write(`${pending}\n`);
      resolve({ file, code, seconds: (Date.now() - started) / 1000, rows });
    });
  });
}

function format(value: number, unit: string): string {
  if (unit === '%') return `${value.toFixed(1)} %`;
  if (unit === 'MB/s') return `${value.toFixed(0)} MB/s`;
  if (unit.endsWith('/s')) return `${si(value)} ${unit}`;
  if (unit.startsWith('x ')) return `${value.toFixed(1)}${unit}`;
  return `${value.toFixed(1)} ${unit}`;
}

async function main(): Promise<void> {
  const filters = process.argv.slice(2);
  const files = fs.readdirSync(__dirname)
    .filter((f) => f.endsWith('.bench.js'))
    .filter((f) => filters.length === 0 || filters.some((w) => f.includes(w)))
    .sort()
    .map((f) => path.join(__dirname, f));
  if (files.length === 0) throw new Error(`no *.bench.js in ${__dirname}`);
  const outcomes: Outcome[] = [];
  for (const file of files) {
    console.log(`\n=== ${path.basename(file)} ===\n`);
    outcomes.push(await runOne(file));
  }
  const rows: string[][] = [];
  for (const o of outcomes) {
    const name = path.basename(o.file, '.bench.js');
    if (o.code !== 0) rows.push([name, '(failed)', `exit code ${o.code}`, '', '']);
    for (const r of o.rows) rows.push([r.bench, r.case, r.variant, format(r.value, r.unit), r.extra ? format(r.extra.value, r.extra.unit) : '']);
  }
  console.log(`\n=== summary (medians; node ${process.version}, ${process.platform}/${process.arch}) ===\n`);
  console.log(table(['bench', 'case', 'variant', 'median', ''], rows, 3));
  console.log(`\n${outcomes.map((o) => `${path.basename(o.file)} ${o.seconds.toFixed(1)} s`).join(', ')}`);
  if (outcomes.some((o) => o.code !== 0)) process.exitCode = 1;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
