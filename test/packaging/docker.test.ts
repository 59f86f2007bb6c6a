// packaging/docker, checked statically (no image can be built here): every file the Dockerfile
// copies from the build context exists and is not excluded by .dockerignore, its build steps are
// the ones .ci/run runs, it ends non-root on Node 20 with jemalloc and a /readyz healthcheck; the
// compose file's build context, Dockerfile and mounted files exist.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const DOCKER = path.join(ROOT, 'packaging', 'docker');
const dockerfile = fs.readFileSync(path.join(DOCKER, 'Dockerfile'), 'utf8');
/** Instructions with their continuation lines joined, comments left out. */
const instructions = dockerfile.replace(/\\\n\s*/g, ' ').split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#'));
const ignored = fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#'));

test('every COPY from the build context names files that exist and .dockerignore keeps', () => {
  const copies = instructions.filter((l) => /^COPY /.test(l) && !/--from=/.test(l));
  assert.ok(copies.length >= 3);
  for (const line of copies) {
    const sources = line.split(/\s+/).slice(1, -1);
    for (const source of sources) {
      assert.ok(fs.existsSync(path.join(ROOT, source)), `${source} (${line}) exists`);
      assert.ok(!ignored.some((pattern) => source === pattern || source.startsWith(`${pattern}/`)), `${source} is not in .dockerignore`);
    }
  }
  // What the runtime stage takes from the build stage is what the launcher needs.
  for (const needed of ['/app/dist', '/app/node_modules', '/app/src/mqtt-fanout']) {
    assert.ok(instructions.some((l) => l.startsWith('COPY --from=build ') && l.includes(` ${needed} `)), `${needed} is copied`);
  }
  for (const pattern of ['node_modules', 'dist']) assert.ok(ignored.includes(pattern), `${pattern} is ignored`);
});

test('the build runs the commands .ci/run uses: npm ci, then the build npm test starts with', () => {
  const ci = fs.readFileSync(path.join(ROOT, '.ci', 'run'), 'utf8');
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  assert.match(ci, /^npm ci$/m);
  assert.match(ci, /^npm test$/m);
  assert.ok(pkg.scripts.test.startsWith('npm run build && '), pkg.scripts.test);
  const runs = instructions.filter((l) => l.startsWith('RUN ')).map((l) => l.slice(4));
  assert.ok(runs.includes('npm ci'), runs.join(' | '));
  assert.ok(runs.some((r) => r.startsWith('npm run build')), runs.join(' | '));
  assert.ok(runs.indexOf('npm ci') < runs.findIndex((r) => r.startsWith('npm run build')));
});

test('Node 20 images, libjemalloc2, non-root, healthcheck on /readyz, the launcher as entry point', () => {
  const froms = instructions.filter((l) => l.startsWith('FROM '));
  assert.ok(froms.length > 0 && froms.every((l) => /^FROM node:20[-.\w]* ?/.test(l)), froms.join(' | '));
  assert.match(dockerfile, /apt-get install [^\n]*libjemalloc2/);
  const users = instructions.filter((l) => l.startsWith('USER '));
  assert.ok(users.length > 0 && !['root', '0'].includes(users.at(-1)!.slice(5).trim()), 'the last USER is not root');
  const health = instructions.find((l) => l.startsWith('HEALTHCHECK '));
  assert.match(health ?? '', /CMD .*\/readyz/);
  assert.match(instructions.find((l) => l.startsWith('ENTRYPOINT ')) ?? '', /"\/app\/src\/mqtt-fanout"/);
  assert.ok(fs.existsSync(path.join(ROOT, 'src', 'mqtt-fanout')));
});

test('compose.yaml: two brokers, two instances, HAProxy and Redis; its build context, Dockerfile and mounted files exist', () => {
  const compose = fs.readFileSync(path.join(DOCKER, 'compose.yaml'), 'utf8');
  const services = compose.slice(compose.indexOf('\nservices:'), compose.indexOf('\nvolumes:')).match(/^ {2}([a-z0-9-]+):$/gm)?.map((s) => s.trim().slice(0, -1));
  assert.deepEqual(services, ['broker-a', 'broker-b', 'redis', 'fanout1', 'fanout2', 'haproxy']);
  const context = /context: (\S+)/.exec(compose)![1];
  const file = /dockerfile: (\S+)/.exec(compose)![1];
  assert.ok(fs.existsSync(path.join(DOCKER, context, file)), `${context}/${file}`);
  for (const m of compose.matchAll(/"(\.[^":]+):[^"]+"/g)) assert.ok(fs.existsSync(path.join(DOCKER, m[1])), `${m[1]} is mounted and exists`);
  const haproxy = fs.readFileSync(path.join(DOCKER, 'haproxy.cfg'), 'utf8');
  assert.match(haproxy, /server fanout1 .*check port/);
  assert.match(haproxy, /server fanout2 .*check port/);
  assert.match(haproxy, /http-check send meth GET uri \/readyz/);
});
