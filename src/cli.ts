#!/usr/bin/env node
// Entry point: --help, --version and --check answer and exit; without an argument, configuration
// from the environment, then the daemon until SIGTERM/SIGINT.

import * as v8 from 'node:v8';
import { loadConfig, redactedConfig, ConfigError, type Config } from './config/index';
import { renderHelp, USAGE } from './config/help';
import { createMainLogger } from './log';
import { startDaemon } from './main';
import { packageVersion } from './package-info';

// Threads give memory back after a load spike by collecting once they are idle (see
// src/metrics/vitals.ts); worker threads started after this see `gc`.
v8.setFlagsFromString('--expose-gc');

/** Exit code of a usage or configuration error, as for `--check` on an invalid environment. */
const INVALID = 2;

function invalid(message: string): never {
  process.stderr.write(`mqtt-fanout: ${message}\n`);
  process.exit(INVALID);
}

function configOrExit(): Config {
  try {
    return loadConfig(process.env);
  } catch (err) {
    if ((err as ConfigError).code === 'FANOUT_ERR_CONFIG') invalid((err as Error).message);
    throw err;
  }
}

/** Answers an option; false when there is none (run the daemon). */
function answer(args: readonly string[]): boolean {
  if (args.length === 0) return false;
  if (args.length > 1) invalid(`expected at most one argument, got ${args.length}\n${USAGE}`);
  switch (args[0]) {
    case '--help':
    case '-h':
      process.stdout.write(renderHelp());
      return true;
    case '--version':
      process.stdout.write(`mqtt-fanout ${packageVersion()}\n`);
      return true;
    case '--check':
      process.stdout.write(`${JSON.stringify(redactedConfig(configOrExit()), null, 2)}\n`);
      process.stderr.write('mqtt-fanout: configuration is valid\n');
      return true;
    default:
      return invalid(`unknown argument ${JSON.stringify(args[0])} (mqtt-fanout --help lists the options)\n${USAGE}`);
  }
}

async function run(): Promise<void> {
  if (answer(process.argv.slice(2))) return;
  const config = configOrExit();
  const log = createMainLogger(config.logLevel, config.logFormat);
  let daemon;
  try {
    daemon = await startDaemon(config, log);
  } catch (err) {
    if ((err as ConfigError).code === 'FANOUT_ERR_CONFIG') invalid((err as Error).message);
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
