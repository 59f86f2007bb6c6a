// Which connection owns each client id, across all shards. A new CONNECT with an id in use
// takes it over: the previous owner is told to close (MQTT 5: DISCONNECT 0x8E), wherever it is.
// Runs on the supervisor; CONNECT is rare next to PUBLISH, so postMessage is fast enough here.

export interface Owner {
  shard: number;
  conn: number;
}

export class ClientRegistry {
  private readonly owners = new Map<string, Owner>();

  constructor(private readonly kick: (owner: Owner) => void) {}

  claim(clientId: string, owner: Owner): void {
    const previous = this.owners.get(clientId);
    this.owners.set(clientId, owner);
    if (previous !== undefined && (previous.shard !== owner.shard || previous.conn !== owner.conn)) this.kick(previous);
  }

  release(clientId: string, owner: Owner): void {
    const current = this.owners.get(clientId);
    if (current !== undefined && current.shard === owner.shard && current.conn === owner.conn) this.owners.delete(clientId);
  }

  get size(): number {
    return this.owners.size;
  }
}
