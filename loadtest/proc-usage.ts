// CPU and memory of the processes under test, read from /proc: CPU time is
// utime+stime of /proc/<pid>/stat (process totals: every thread, including
// threads that already exited), memory is VmRSS of /proc/<pid>/status sampled
// every 250 ms. A process that is killed and restarted on purpose (an upstream
// in broker-outage) keeps one account under its name across both pids.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

export const RSS_SAMPLE_MS = 250;

let clockTicks: number | null = null;

/** Kernel clock ticks per second (USER_HZ); 100 on every common Linux build. */
export function ticksPerSecond(): number {
  if (clockTicks === null) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** CPU seconds (user + system) the process used so far, or null once it is gone. */
export function readCpuSeconds(pid: number): number | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may contain spaces and parentheses: fields are counted after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return (utime + stime) / ticksPerSecond();
}

function statusField(pid: number, field: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

/** Resident set size in KB, or null once the process is gone. */
export function readRssKB(pid: number): number | null {
  return statusField(pid, 'VmRSS');
}

/** The most open files this process may hold (soft RLIMIT_NOFILE), or null if unknown. */
export function openFileLimit(pid: number | 'self' = 'self'): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export type ProcRole = 'target' | 'upstream';

export interface WatchedProc {
  name: string;
  role: ProcRole;
  pid: number;
}

export interface ProcFigures {
  name: string;
  role: ProcRole;
  /** Every pid the account covered (more than one after a restart). */
  pids: number[];
  cpuSeconds: number;
  peakRssKB: number;
  firstRssKB: number;
  lastRssKB: number;
  /** [ms since the meter started, VmRSS KB]. */
  samples: [number, number][];
}

interface Account {
  proc: WatchedProc;
  pids: number[];
  /** CPU of earlier pids under this name plus the current pid's reading minus its baseline. */
  retiredCpu: number;
  baseCpu: number;
  lastCpu: number;
  alive: boolean;
  peak: number;
  first: number;
  last: number;
  samples: [number, number][];
}

/** Measures a set of processes over a window: start() .. stop(). */
export class UsageMeter {
  private readonly accounts = new Map<string, Account>();
  private timer: NodeJS.Timeout | null = null;
  private startedAt = 0;

  constructor(procs: WatchedProc[]) {
    for (const p of procs) {
      this.accounts.set(p.name, { proc: p, pids: [p.pid], retiredCpu: 0, baseCpu: 0, lastCpu: 0, alive: true, peak: 0, first: 0, last: 0, samples: [] });
    }
  }

  start(): this {
    this.startedAt = performance.now();
    for (const a of this.accounts.values()) {
      a.baseCpu = a.lastCpu = readCpuSeconds(a.proc.pid) ?? 0;
    }
    this.sample();
    this.timer = setInterval(() => this.sample(), RSS_SAMPLE_MS);
    this.timer.unref();
    return this;
  }

  private sample(): void {
    const t = Math.round(performance.now() - this.startedAt);
    for (const a of this.accounts.values()) {
      if (!a.alive) continue;
      const cpu = readCpuSeconds(a.proc.pid);
      if (cpu !== null) a.lastCpu = cpu;
      const rss = readRssKB(a.proc.pid);
      if (rss === null) continue;
      if (a.samples.length === 0) a.first = rss;
      a.last = rss;
      a.peak = Math.max(a.peak, rss);
      a.samples.push([t, rss]);
    }
  }

  /** CPU seconds of `name` since start(), as far as read so far. */
  cpuSeconds(name: string): number {
    const a = this.accounts.get(name);
    if (!a) return 0;
    if (a.alive) a.lastCpu = readCpuSeconds(a.proc.pid) ?? a.lastCpu;
    return a.retiredCpu + (a.alive ? a.lastCpu - a.baseCpu : 0);
  }

  /** Call right before killing the process: /proc is gone once it is reaped. */
  retire(name: string): void {
    const a = this.accounts.get(name);
    if (!a || !a.alive) return;
    this.sample();
    a.retiredCpu += (readCpuSeconds(a.proc.pid) ?? a.lastCpu) - a.baseCpu;
    a.alive = false;
  }

  /** Continues the account of `name` with a freshly started process (its whole CPU counts). */
  attach(name: string, pid: number): void {
    const a = this.accounts.get(name);
    if (!a) return;
    a.proc = { ...a.proc, pid };
    a.pids.push(pid);
    a.baseCpu = 0;
    a.lastCpu = 0;
    a.alive = true;
    this.sample();
  }

  stop(): ProcFigures[] {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.sample();
    return [...this.accounts.values()].map((a) => ({
      name: a.proc.name,
      role: a.proc.role,
      pids: a.pids,
      cpuSeconds: this.cpuSeconds(a.proc.name),
      peakRssKB: a.peak,
      firstRssKB: a.first,
      lastRssKB: a.last,
      samples: a.samples,
    }));
  }
}

/** What a scenario reports about resources: per process, and per unit of work. */
export interface ResourceReport {
  /** What the work is counted in: device messages delivered, connections opened, pings answered, HTTP requests answered 2xx. */
  unit: 'msg' | 'conn' | 'ping' | 'req';
  units: number;
  windowS: number;
  processes: ProcFigures[];
  /** Target (daemon or bridge) CPU µs per unit. */
  targetCpuUs: number;
  /** All upstream brokers together, CPU µs per unit. */
  upstreamCpuUs: number;
  targetPeakRssKB: number;
}

export function resourceReport(procs: ProcFigures[], unit: ResourceReport['unit'], units: number, windowS: number): ResourceReport {
  const cpu = (role: ProcRole): number => procs.filter((p) => p.role === role).reduce((s, p) => s + p.cpuSeconds, 0);
  const perUnit = (s: number): number => (units > 0 ? (s * 1e6) / units : NaN);
  return {
    unit,
    units,
    windowS,
    processes: procs,
    targetCpuUs: perUnit(cpu('target')),
    upstreamCpuUs: perUnit(cpu('upstream')),
    targetPeakRssKB: Math.max(0, ...procs.filter((p) => p.role === 'target').map((p) => p.peakRssKB)),
  };
}
