// mosquitto configurations for the comparison target and for the upstream
// brokers that both targets forward to.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Qos } from './mqtt-wire';

export interface UpstreamRef {
  name: string;
  port: number;
}

/**
 * An upstream broker must never be the bottleneck or the place where messages
 * are lost, or both targets would measure the same receiver: no persistence and
 * no queue or in-flight limits towards our subscriber.
 */
export function upstreamConf(port: number, persist: { dir: string; file: string } | null = null): string {
  return [
    `listener ${port} 127.0.0.1`,
    'allow_anonymous true',
    ...(persist === null
      ? ['persistence false']
      : // Saved only on SIGUSR1 (and exit): one snapshot holding the receiver's session, no disk I/O during the run.
        ['persistence true', `persistence_location ${persist.dir}/`, `persistence_file ${persist.file}`, 'autosave_interval 0']),
    'max_queued_messages 0',
    'max_inflight_messages 0',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    'log_type notice',
    '',
  ].join('\n');
}

/**
 * The mosquitto bridge baseline, in the lossless tuning the team agreed on: an
 * unlimited queue (a bounded one silently drops QoS 1 messages under load) and
 * 100 messages in flight towards each upstream. `try_private false` and
 * mqttv311 make the bridge an ordinary client to the upstream, as our daemon is.
 *
 * `durable` (broker-outage) extends "lossless" to an upstream going away: the
 * bridge keeps its queue for the lost upstream (local_cleansession false; with
 * the default it discards it on reconnect) and retries after 1..10 s
 * (restart_timeout; seconds are its finest unit, fanout's backoff is 0.1..10 s).
 * `wsPort` adds a WebSocket listener for the devices beside the TCP one, `tls`
 * a TLS listener with that certificate and key.
 */
export function bridgeConf(
  port: number,
  upstreams: UpstreamRef[],
  qos: Qos,
  durable = false,
  wsPort: number | null = null,
  tls: { port: number; certPath: string; keyPath: string } | null = null,
): string {
  const lines = [
    `listener ${port} 127.0.0.1`,
    // MQTT over WebSocket for the devices (Debian's mosquitto is built with websockets); any URL path is served.
    ...(wsPort === null ? [] : [`listener ${wsPort} 127.0.0.1`, 'protocol websockets']),
    ...(tls === null ? [] : [`listener ${tls.port} 127.0.0.1`, `certfile ${tls.certPath}`, `keyfile ${tls.keyPath}`]),
    'allow_anonymous true',
    'persistence false',
    'max_queued_messages 0',
    'max_inflight_messages 100',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    'log_type notice',
  ];
  for (const up of upstreams) {
    lines.push(
      '',
      `connection ${up.name}`,
      `address 127.0.0.1:${up.port}`,
      `topic # out ${qos}`,
      ...(durable ? ['cleansession false', 'local_cleansession false', 'restart_timeout 1 10'] : ['cleansession true']),
      'bridge_protocol_version mqttv311',
      'try_private false',
    );
  }
  lines.push('');
  return lines.join('\n');
}

export function writeConf(dir: string, name: string, text: string): string {
  const file = path.join(dir, `${name}.conf`);
  fs.writeFileSync(file, text);
  return file;
}
