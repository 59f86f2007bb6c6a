// How evenly the daemon spreads device connections over its shards.
//
//   node dist/bench/distribution.bench.js
//
// Starts the daemon in-process (embedded broker, FANOUT_BROKERS unset), opens 1,000 raw MQTT
// 3.1.1 connections (CONNECT from mqtt-packet.generate, each waiting for its CONNACK), reads
// daemon.shardStats() and prints the connections per shard and the largest deviation from an
// even split, for FANOUT_SHARDS=2 and 4, three rounds each.

import * as net from 'node:net';
import * as mqttPacket from 'mqtt-packet';
import { loadConfig } from '../src/config';
import { startDaemon, type Daemon } from '../src/main';
import { createMainLogger } from '../src/log';
import { emit, median, table } from './common';

const CONNECTIONS = 1000;
const ROUNDS = 3;
const SHARD_COUNTS = [2, 4];
/** Connections opened at the same time. */
const CONCURRENCY = 100;

function openDevice(port: number, clientId: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${clientId}: no CONNACK within 10 s`));
    }, 10_000);
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('connect', () => {
      socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean: true, keepalive: 0 }));
    });
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      if (got.length < 4) return;
      clearTimeout(timer);
      socket.off('data', onData);
      if (got[0] !== 0x20 || got[1] !== 2 || got[3] !== 0) {
        socket.destroy();
        reject(new Error(`${clientId}: unexpected answer ${got.toString('hex')}`));
        return;
      }
      socket.on('error', () => {});
      resolve(socket);
    };
    socket.on('data', onData);
  });
}

async function openAll(port: number, round: string): Promise<net.Socket[]> {
  const sockets: net.Socket[] = new Array(CONNECTIONS);
  let next = 0;
  const lanes = Array.from({ length: CONCURRENCY }, async () => {
    while (next < CONNECTIONS) {
      const i = next++;
      sockets[i] = await openDevice(port, `bench-${round}-${i}`);
    }
  });
  await Promise.all(lanes);
  return sockets;
}

async function settle(daemon: Daemon, want: (total: number) => boolean): Promise<number[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const per = daemon.shardStats().map((s) => s.connections);
    const total = per.reduce((a, b) => a + b, 0);
    if (want(total) || Date.now() > deadline) return per;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function main(): Promise<void> {
  const log = createMainLogger('warn');
  const rows: string[][] = [];
  for (const shards of SHARD_COUNTS) {
    const deviations: number[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const config = loadConfig({ FANOUT_PORT: '0', FANOUT_HOST: '127.0.0.1', FANOUT_LOG_LEVEL: 'warn', FANOUT_SHARDS: String(shards) });
      const daemon = await startDaemon(config, log);
      const started = process.hrtime.bigint();
      const sockets = await openAll(daemon.port, `${shards}-${round}`);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const per = await settle(daemon, (total) => total >= CONNECTIONS);
      const even = CONNECTIONS / shards;
      const deviation = (Math.max(...per.map((c) => Math.abs(c - even))) / even) * 100;
      deviations.push(deviation);
      rows.push([String(shards), String(round), `[${per.join(', ')}]`, `${deviation.toFixed(1)} %`, `${(CONNECTIONS / seconds).toFixed(0)}/s`]);
      for (const s of sockets) s.destroy();
      await settle(daemon, (total) => total === 0);
      await daemon.stop();
    }
    const m = median(deviations);
    emit({ bench: 'distribution', case: `FANOUT_SHARDS=${shards}, ${CONNECTIONS} connections`, variant: 'max deviation from even', value: m, unit: '%', runs: ROUNDS, extra: { value: Math.max(...deviations), unit: '% worst round' } });
  }
  console.log(`Connections per shard, ${CONNECTIONS} MQTT connections per round (CONNECT + CONNACK each)\n`);
  console.log(table(['shards', 'round', 'connections per shard', 'max deviation', 'connect rate'], rows));
  await log.flush();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
