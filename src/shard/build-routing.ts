// The routing of a configuration. Without FANOUT_ROUTES the proxy is transparent: every broker
// gets every publish and the first one serves every subscription, '$' topics included. With
// routes, FANOUT_ROUTES decides both directions (src/config/routes.ts). Config.brokers lists
// broker slots: a slot a reload retired is in no route and serves nothing.

import type { Config, Route } from '../config/types';
import { defaultRoutes, RouteTable } from '../config/routes';
import type { DownlinkRouting } from './routing';

/** Route names per slot: a retired slot gets one no broker name can be ('~' is not allowed). */
export function slotNames(config: Config): string[] {
  return config.brokers.map((b, i) => (b.retired === true ? `~retired-${i}` : b.name));
}

/** The routes in force: FANOUT_ROUTES, or the default over the slots in service. */
export function effectiveRoutes(config: Config): readonly Route[] {
  return config.routes.length > 0 ? config.routes : defaultRoutes(config.brokers.filter((b) => b.retired !== true).map((b) => b.name));
}

/** The slots in service as a bit mask. */
export function liveMask(config: Config): number {
  let mask = 0;
  config.brokers.forEach((b, i) => {
    if (b.retired !== true) mask |= 1 << i;
  });
  return mask;
}

/** The route table of `config`, or null when the proxy is transparent. */
export function buildRoutes(config: Config): RouteTable | null {
  if (config.routes.length === 0) return null;
  // Routes of brokers not listed (FANOUT_BROKERS_FILE) apply once a reload adds them.
  return new RouteTable(config.routes, slotNames(config), 'skip');
}

export function buildRouting(config: Config): DownlinkRouting {
  const table = buildRoutes(config);
  if (table !== null) return table;
  const first = config.brokers.findIndex((b) => b.retired !== true);
  return {
    inFilters: (broker, localFilter) => (broker === first ? [{ upstream: localFilter, qos: 2 }] : []),
    localTopics: (broker, remoteTopic, out) => {
      out.length = 0;
      if (broker !== first) return 0;
      out.push(remoteTopic);
      return 1;
    },
  };
}
