// A redis-server of its own on a free loopback port (no persistence, no config file), for the
// tests and load tests that share sessions between instances (FANOUT_SESSION_STORE).

import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { freePort, HOST } from './ports';
import { exitOf, isRunning, track } from './procs';
import { sleep, waitFor } from './wait';

export const REDIS_BIN = process.env.REDIS_BIN ?? (fs.existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : 'redis-server');

export class RedisServer {
  log = '';
  private constructor(readonly port: number, private readonly proc: ChildProcess) {}

  static async start(): Promise<RedisServer> {
    let lastError = '';
    for (let attempt = 0; attempt < 10; attempt++) {
      const port = await freePort();
      const child = track(spawn(REDIS_BIN, [
        '--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--protected-mode', 'no',
        '--maxclients', '1000', '--loglevel', 'warning', '--dir', '/tmp',
      ], { stdio: ['ignore', 'pipe', 'pipe'] }));
      const r = new RedisServer(port, child);
      for (const s of [child.stdout!, child.stderr!]) {
        s.setEncoding('utf8');
        s.on('data', (t: string) => { r.log += t; });
      }
      let gone = false;
      void exitOf(child).then(() => { gone = true; });
      await waitFor(`redis-server on port ${port}`, async () => gone || await r.ping(), { timeoutMs: 10_000, intervalMs: 50 });
      if (!gone) return r;
      lastError = r.log.trim();
      await sleep(100);
    }
    throw new Error(`redis-server could not start: ${lastError}`);
  }

  get url(): string {
    return `redis://${HOST}:${this.port}`;
  }

  /** True once the server answers PING (a plain RESP exchange, no client library). */
  ping(): Promise<boolean> {
    return this.command(['PING']).then((s) => s.startsWith('+PONG'), () => false);
  }

  /** One command, its raw RESP answer. */
  command(args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: HOST, port: this.port });
      let text = '';
      socket.setEncoding('utf8');
      socket.once('error', reject);
      socket.on('data', (s: string) => {
        text += s;
        if (text.endsWith('\r\n')) {
          socket.end();
          resolve(text);
        }
      });
      socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
  }

  async close(): Promise<void> {
    if (!isRunning(this.proc)) return;
    const exited = exitOf(this.proc);
    this.proc.kill('SIGKILL');
    await exited;
  }
}
