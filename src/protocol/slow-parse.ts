// mqtt-packet as a parser for single complete packets. Each shard keeps one parser per protocol
// level and only ever feeds it whole packets, so the parser's state is clean between calls.

import * as mqttPacket from 'mqtt-packet';

export class PacketParser {
  private readonly parsers = new Map<number, mqttPacket.Parser>();
  private result: mqttPacket.Packet | null = null;
  private failed = false;

  parse(version: number, packet: Buffer): mqttPacket.Packet | null {
    let p = this.parsers.get(version);
    if (p === undefined) {
      p = mqttPacket.parser({ protocolVersion: version });
      p.on('packet', (pk: mqttPacket.Packet) => { this.result = pk; });
      p.on('error', () => { this.failed = true; });
      this.parsers.set(version, p);
    }
    this.result = null;
    this.failed = false;
    const left = p.parse(packet);
    if (this.failed || left !== 0 || this.result === null) {
      // A parser that saw an error may hold partial state: start afresh next time.
      this.parsers.delete(version);
      return null;
    }
    return this.result;
  }
}
