// The package this code was built from: its root folder (README.md, package.json) and version,
// found from dist/src/ (compiled) or src/ alike.

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** The nearest folder at or above `dir` holding a package.json. */
export function packageRoot(dir: string = __dirname): string {
  let current = dir;
  while (!existsSync(path.join(current, 'package.json')) && path.dirname(current) !== current) {
    current = path.dirname(current);
  }
  return current;
}

/** The version in package.json. */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}
