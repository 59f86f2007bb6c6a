// The routing of a configuration. Without FANOUT_ROUTES the proxy is transparent: every broker
// gets every publish and the first one serves every subscription, '$' topics included. With
// routes, FANOUT_ROUTES decides both directions (src/config/routes.ts).

import type { Config } from '../config/types';
import { RouteTable } from '../config/routes';
import type { DownlinkRouting } from './routing';

/** The route table of `config`, or null when the proxy is transparent. */
export function buildRoutes(config: Config): RouteTable | null {
  return config.routes.length === 0 ? null : new RouteTable(config.routes, config.brokers.map((b) => b.name));
}

export function buildRouting(config: Config): DownlinkRouting {
  const table = buildRoutes(config);
  if (table !== null) return table;
  return {
    inFilters: (broker, localFilter) => (broker === 0 ? [{ upstream: localFilter, qos: 2 }] : []),
    localTopics: (broker, remoteTopic, out) => {
      out.length = 0;
      if (broker !== 0) return 0;
      out.push(remoteTopic);
      return 1;
    },
  };
}
