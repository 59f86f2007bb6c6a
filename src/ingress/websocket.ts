// MQTT over WebSocket [MQTT-6.0] for one shard, plain (ws://) or over TLS (wss://). The native
// uWebSockets.js serves where it can (ws-uws.ts); the `ws` package on a node http or https
// server serves where it cannot (ws-fallback.ts): where the native binary does not load (another
// Node version or platform), and wss:// that must require client certificates.

import type { DeviceTls } from '../config/index';
import { listenWsPackage } from './ws-fallback';
import { loadUws, listenUws } from './ws-uws';
import type { WsHost, WsImplementation, WsListener, WsOptions } from './ws-common';

export { chooseProtocol, type WsHost, type WsImplementation, type WsListener, type WsOptions } from './ws-common';

/** Which implementation a listener with these TLS settings (null: ws://) gets on this machine. */
export function wsImplementation(tls: DeviceTls | null): WsImplementation {
  return loadUws() !== null && tls?.tlsRequireClientCert !== true ? 'uWebSockets.js' : 'ws';
}

export function listenWebSocket<C>(host: WsHost<C>, opts: WsOptions): Promise<WsListener> {
  const u = loadUws();
  return u !== null && wsImplementation(opts.tls) === 'uWebSockets.js' ? listenUws(u, host, opts) : listenWsPackage(host, opts);
}
