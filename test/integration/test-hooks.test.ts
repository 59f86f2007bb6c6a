// FANOUT_TEST_HOOKS' heap snapshots (what the fuzz takes of the thread that grew most when RSS
// did not come back): of the main thread and of a shard, written and named in a log line.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { httpPortOf } from '../helpers/cluster';
import { DaemonProcess } from '../helpers/daemon';
import { Scope } from '../helpers/wait';

describe('test hooks: heap snapshots', { timeout: 90_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('kind=heap for main and shard-0: a snapshot file each, named in a warning; an unknown thread is refused', async () => {
    const d = scope.use(await DaemonProcess.start({ FANOUT_TEST_HOOKS: 'true', FANOUT_HTTP_PORT: 0 }));
    const post = (q: string): Promise<Response> => fetch(`http://127.0.0.1:${httpPortOf(d)}/test/crash?${q}`, { method: 'POST' });
    for (const thread of ['main', 'shard-0']) {
      const res = await post(`thread=${thread}&kind=heap`);
      assert.equal(res.status, 202, await res.text());
      const line = await d.waitForLog((l) => l.msg === 'heap snapshot written (FANOUT_TEST_HOOKS)' && String(l.file).includes(`fanout-${thread}-`), 30_000);
      const file = String(line.file);
      try {
        const head = Buffer.alloc(16);
        const fd = fs.openSync(file, 'r');
        fs.readSync(fd, head, 0, 16, 0);
        fs.closeSync(fd);
        assert.match(head.toString(), /^\{"snapshot":/, `${file} is not a heap snapshot`);
      } finally {
        fs.rmSync(file, { force: true });
      }
    }
    assert.notEqual((await post('thread=shard-9&kind=heap')).status, 202);
  });
});
