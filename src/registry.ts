// Which connection owns each client id, across all shards. A new CONNECT with an id in use
// takes it over: the previous owner is told to close (MQTT 5: DISCONNECT 0x8E), wherever it is.
// A CONNECT that wants its persistent session back (clean session 0 / clean start 0) and finds
// the id owned by another connection has the session moved here instead (from its shard, once
// it is there). Runs on the supervisor; CONNECT is rare next to PUBLISH, so postMessage is fast
// enough here.

export interface Owner {
  shard: number;
  conn: number;
  /** The connection has closed, but its session was still on its way to it: the id stays
   *  claimed until the session is there (and passed on or let go). */
  gone?: boolean;
}

export interface RegistryActions {
  /** The previous owner must close; its session, if any, ends. */
  kick(previous: Owner): void;
  /** The previous owner hands its session (if any) to `next`. */
  fetch(previous: Owner, next: Owner, clientId: string): void;
  /** `next` asked for a session and there is none elsewhere in this instance (`clean`: it
   *  starts a clean one, and only claims the id). */
  none(next: Owner, clientId: string, clean: boolean): void;
}

export class ClientRegistry {
  private readonly owners = new Map<string, Owner>();

  constructor(private readonly actions: RegistryActions) {}

  claim(clientId: string, owner: Owner, fetch = false, clean = false): void {
    const previous = this.owners.get(clientId);
    this.owners.set(clientId, owner);
    const other = previous !== undefined && (previous.shard !== owner.shard || previous.conn !== owner.conn);
    if (fetch) {
      // The previous connection may be on this shard too: a CONNECT only asks when its shard
      // has no session for the id, so that one's session is still on its way there (or none).
      if (other && !clean) this.actions.fetch(previous, owner, clientId);
      else {
        if (other) this.actions.kick(previous);
        this.actions.none(owner, clientId, clean);
      }
    } else if (other) {
      this.actions.kick(previous);
    }
  }

  /** True when `owner` had the id (it is free now). */
  release(clientId: string, owner: Owner): boolean {
    const current = this.owners.get(clientId);
    if (current === undefined || current.shard !== owner.shard || current.conn !== owner.conn) return false;
    this.owners.delete(clientId);
    return true;
  }

  /** `owner`'s connection closed while its session was on its way (see Owner.gone). */
  gone(clientId: string, owner: Owner): void {
    const current = this.owners.get(clientId);
    if (current !== undefined && current.shard === owner.shard && current.conn === owner.conn) current.gone = true;
  }

  owner(clientId: string): Owner | undefined {
    return this.owners.get(clientId);
  }

  /** A shard failed: every client id it owned is free. */
  dropShard(shard: number): void {
    for (const [id, owner] of this.owners) if (owner.shard === shard) this.owners.delete(id);
  }

  get size(): number {
    return this.owners.size;
  }
}
