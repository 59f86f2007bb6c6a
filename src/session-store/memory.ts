// The default store: sessions live in their shard's memory only (today's behaviour). Moving a
// session between shards is the shards' export; an instance that stops takes its sessions along.

import type { SessionJournal, SessionStore } from './types';

export class MemoryStore implements SessionStore {
  readonly shared = false;

  journal(): SessionJournal | null {
    return null;
  }

  remove(): void {
    // nothing recorded
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
