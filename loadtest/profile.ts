// Where mqtt-fanout's threads spend their time, from the V8 CPU profiles a run with `--cpu-prof
// DIR` leaves (one .cpuprofile per thread). Self time per function and per source file, busy time
// only ((idle) is the event loop waiting). Also a command of its own:
//   node dist/loadtest/profile.js DIR [--top N]
import * as fs from 'node:fs';
import * as path from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ThreadProfile {
  file: string;
  /** shard, writer, main, ... from the worker script the profile ran. */
  thread: string;
  /** Sampled time, ms, and the part of it that was not (idle). */
  totalMs: number;
  busyMs: number;
  /** Self time in ms, busiest first. */
  functions: { name: string; ms: number }[];
  files: { name: string; ms: number }[];
}

/** node:internal/..., the project's own file relative to dist/, or a package name. */
function fileOf(url: string): string {
  if (url === '') return '(native)';
  const u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = u.slice(nm + '/node_modules/'.length).split('/');
    return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0];
  }
  const dist = u.lastIndexOf('/dist/');
  if (dist >= 0) return u.slice(dist + '/dist/'.length);
  const workers = u.lastIndexOf('/workers/');
  if (workers >= 0) return u.slice(workers + 1);
  return u;
}

function threadOf(profile: CpuProfile, file: string): string {
  for (const n of profile.nodes) {
    const m = /\/workers\/([\w-]+)\.worker\.js$/.exec(n.callFrame.url);
    if (m !== null) return m[1];
  }
  // CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile: thread 0 is the main thread.
  const parts = path.basename(file).split('.');
  return parts[4] === '0' ? 'main' : `thread ${parts[4] ?? '?'}`;
}

const sorted = (m: Map<string, number>): { name: string; ms: number }[] =>
  [...m].map(([name, us]) => ({ name, ms: us / 1000 })).sort((a, b) => b.ms - a.ms);

export function readProfile(file: string): ThreadProfile {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const fn = new Map<string, number>();
  const files = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    // A sample's delta is the time since the previous one: it is charged to this sample's node.
    const dt = profile.timeDeltas[i] ?? 0;
    const node = byId.get(profile.samples[i]);
    if (node === undefined || dt <= 0) continue;
    total += dt;
    const f = node.callFrame;
    if (f.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    const where = fileOf(f.url);
    const name = f.url === '' ? f.functionName : `${f.functionName || '(anonymous)'} ${where}:${f.lineNumber + 1}`;
    fn.set(name, (fn.get(name) ?? 0) + dt);
    const group = f.url === '' ? f.functionName : where;
    files.set(group, (files.get(group) ?? 0) + dt);
  }
  return { file, thread: threadOf(profile, file), totalMs: total / 1000, busyMs: (total - idle) / 1000, functions: sorted(fn), files: sorted(files) };
}

/** Every profile under `dir` (recursively), busiest thread first. */
export function readProfiles(dir: string): ThreadProfile[] {
  const out: ThreadProfile[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && e.name.endsWith('.cpuprofile')) out.push(readProfile(path.join(e.parentPath ?? e.path, e.name)));
  }
  return out.sort((a, b) => b.busyMs - a.busyMs);
}

export function renderProfiles(profiles: ThreadProfile[], top = 12): string {
  const lines: string[] = [];
  const pct = (ms: number, of: number): string => `${of > 0 ? ((100 * ms) / of).toFixed(1) : '0.0'}%`.padStart(6);
  for (const p of profiles) {
    lines.push(`${p.thread} (${path.basename(p.file)}): busy ${p.busyMs.toFixed(0)} of ${p.totalMs.toFixed(0)} ms sampled`);
    lines.push('  self time by file or category (of busy):');
    for (const f of p.files.slice(0, Math.min(top, 8))) lines.push(`  ${pct(f.ms, p.busyMs)}  ${f.name}`);
    lines.push('  self time by function (of busy):');
    for (const f of p.functions.slice(0, top)) lines.push(`  ${pct(f.ms, p.busyMs)}  ${f.name}`);
  }
  return `${lines.join('\n')}\n`;
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const at = args.indexOf('--top');
  const top = at >= 0 ? Number(args.splice(at, 2)[1]) : 12;
  if (args.length !== 1 || !Number.isInteger(top) || top < 1) {
    process.stderr.write('usage: node dist/loadtest/profile.js DIR [--top N]\n');
    process.exit(2);
  }
  process.stdout.write(renderProfiles(readProfiles(args[0]), top));
}
