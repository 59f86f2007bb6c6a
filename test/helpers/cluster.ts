// Several mqtt-fanout instances behind HAProxy (the shipped example configuration), with the
// brokers and optionally the Redis the test gives them: the deployment of README "Several
// instances", on loopback. Used by the scale-out tests and the `scale` load test.

import { DaemonProcess } from './daemon';
import { HaproxyProcess } from './haproxy';

type Env = Record<string, string | number | undefined>;

export class Cluster {
  private constructor(readonly instances: DaemonProcess[], readonly haproxy: HaproxyProcess) {}

  /** Starts `count` instances with `env` (FANOUT_HTTP_PORT is set for each) and HAProxy in front.
   *  `env` may be a function of the instance's index (from 0), for settings of one's own such as
   *  FANOUT_BROKERS_FILE. */
  static async start(count: number, env: Env | ((index: number) => Env), maxconn = 4000): Promise<Cluster> {
    const instances: DaemonProcess[] = [];
    try {
      for (let i = 0; i < count; i++) instances.push(await startInstance(typeof env === 'function' ? env(i) : env, i));
      const haproxy = await HaproxyProcess.start(instances.map((d) => ({ mqtt: d.port, http: httpPortOf(d) })), maxconn);
      return new Cluster(instances, haproxy);
    } catch (err) {
      await Promise.all(instances.map((d) => d.close()));
      throw err;
    }
  }

  get port(): number {
    return this.haproxy.port;
  }

  async close(): Promise<void> {
    await this.haproxy.close();
    await Promise.all(this.instances.map((d) => d.close()));
  }
}

export async function startInstance(env: Env, index: number): Promise<DaemonProcess> {
  return DaemonProcess.start({ FANOUT_HTTP_PORT: 0, FANOUT_PROXY_ID: `fanout${index + 1}-${process.pid}`, ...env });
}

/** The HTTP port an instance's ready line names. */
export function httpPortOf(d: DaemonProcess): number {
  const ready = d.lines.find((l) => l.msg === 'mqtt-fanout ready');
  const port = Number(ready?.httpPort ?? 0);
  if (port === 0) throw new Error(`instance ${d.proxyId} has no HTTP port`);
  return port;
}
