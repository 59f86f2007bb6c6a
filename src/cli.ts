#!/usr/bin/env node
// Entry point: configuration from the environment, then the daemon until SIGTERM/SIGINT.

import * as v8 from 'node:v8';
import { loadConfig, ConfigError } from './config/index';
import { createMainLogger } from './log';
import { startDaemon } from './main';

// Threads give memory back after a load spike by collecting once they are idle (see
// src/metrics/vitals.ts); worker threads started after this see `gc`.
v8.setFlagsFromString('--expose-gc');

async function run(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if ((err as ConfigError).code === 'FANOUT_ERR_CONFIG') {
      process.stderr.write(`mqtt-fanout: ${(err as Error).message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const log = createMainLogger(config.logLevel);
  let daemon;
  try {
    daemon = await startDaemon(config, log);
  } catch (err) {
    if ((err as ConfigError).code === 'FANOUT_ERR_CONFIG') {
      process.stderr.write(`mqtt-fanout: ${(err as Error).message}\n`);
      process.exit(2);
    }
    log.logger.fatal({ err }, 'start-up failed');
    await log.flush();
    process.exit(1);
  }
  const shutdown = (signal: string): void => {
    log.logger.info({ signal }, 'signal received');
    void daemon.stop().then(() => log.flush()).then(() => process.exit(0));
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGHUP', () => {
    log.logger.info({ signal: 'SIGHUP' }, 'signal received: reloading');
    daemon.reload().catch((err: Error) => log.logger.error({ err }, 'reload failed'));
  });
}

void run();
