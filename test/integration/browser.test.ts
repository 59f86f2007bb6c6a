// A real browser: headless Chromium (Debian's package, driven by playwright-core) loads a page
// that connects with mqtt.js's browser build over WebSocket, publishes and receives through
// the proxy; and loads the dashboard and sees its numbers move.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { Collector, closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope } from '../helpers/wait';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const MQTT_BROWSER_BUILD = path.join(path.dirname(require.resolve('mqtt/package.json')), 'dist', 'mqtt.min.js');

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><script src="/mqtt.min.js"></script></head><body><script>
window.result = { connected: false, received: [], error: null };
window.run = (url, topicUp, topicDown) => new Promise((resolve) => {
  const client = mqtt.connect(url, { clientId: 'browser-' + Math.random().toString(36).slice(2), protocolVersion: 5 });
  client.on('error', (e) => { window.result.error = String(e); resolve(window.result); });
  client.on('message', (topic, payload) => { window.result.received.push({ topic, text: payload.toString() }); });
  client.on('connect', () => {
    window.result.connected = true;
    client.subscribe(topicDown, { qos: 1 }, () => {
      client.publish(topicUp, 'hello from the browser', { qos: 1 }, () => resolve(window.result));
    });
  });
});
</script></body></html>`;

describe('a real browser (headless Chromium)', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let up: Mosquitto;
  let daemon: DaemonProcess;
  let pages: http.Server;
  let pagesPort = 0;
  let browser: Browser;
  let httpPort = 0;

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (Debian package "chromium"; .ci/run installs it)`);
    up = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_WS_PORT: 0, FANOUT_HTTP_PORT: 0 }));
    httpPort = Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort);
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
    // The test page and mqtt.js's browser build, served from this process (no CDN).
    pages = http.createServer((req, res) => {
      if (req.url === '/mqtt.min.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(fs.readFileSync(MQTT_BROWSER_BUILD));
      else res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    });
    await new Promise<void>((resolve) => pages.listen(0, '127.0.0.1', resolve));
    pagesPort = (pages.address() as { port: number }).port;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });
  after(async () => {
    await browser?.close();
    pages?.close();
    await scope.close();
  });

  test('mqtt.js in the browser publishes to the broker and receives from it through the proxy over WebSocket', async (t) => {
    const atBroker = await Collector.start(up.port, 'browser/up/#', { qos: 1 });
    t.after(() => atBroker.close());
    const page = await browser.newPage();
    t.after(() => page.close());
    await page.goto(`http://127.0.0.1:${pagesPort}/`);
    const tag = `${process.pid}-${Date.now()}`;
    // Page code is passed as text: it runs in the browser, not in this (DOM-less) program.
    const args = JSON.stringify([`ws://127.0.0.1:${daemon.wsPort}/mqtt`, `browser/up/${tag}`, `browser/down/${tag}`]);
    const result = await page.evaluate(`window.run(...${args})`) as { connected: boolean; error: string | null };
    assert.equal(result.error, null);
    assert.equal(result.connected, true);
    const [m] = await atBroker.waitForCount(1, (x) => x.topic === `browser/up/${tag}`, 10_000, 'the browser publish at the broker');
    assert.equal(m.payload.toString(), 'hello from the browser');
    const upstream = await connectClient(up.port, { clientId: `browser-pub-${tag}` });
    t.after(() => closeClient(upstream));
    await publish(upstream, `browser/down/${tag}`, 'hello to the browser', { qos: 1 });
    await page.waitForFunction('window.result.received.length > 0', undefined, { timeout: 10_000 });
    const received = await page.evaluate('window.result.received') as { topic: string; text: string }[];
    assert.deepEqual(received, [{ topic: `browser/down/${tag}`, text: 'hello to the browser' }]);
  });

  test('the dashboard updates every second and shows live numbers', async (t) => {
    const page = await browser.newPage();
    t.after(() => page.close());
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${httpPort}/`);
    // Traffic to show: a device publishing while the page watches.
    const dev = await connectClient(daemon.port, { clientId: `dash-${process.pid}` });
    t.after(() => closeClient(dev));
    const pump = setInterval(() => void dev.publishAsync('browser/dash', 'x', { qos: 1 }).catch(() => undefined), 20);
    t.after(() => clearInterval(pump));
    await page.waitForFunction('Number(document.body.dataset.updates || 0) >= 3', undefined, { timeout: 15_000 });
    await page.waitForFunction("Number((document.getElementById('rateIn').textContent || '').replace(/[^0-9.]/g, '')) > 0", undefined, { timeout: 15_000 });
    const conns = await page.textContent('#conns');
    assert.match(conns ?? '', /^1 \(0\)$/, 'one TCP device, no WebSocket one');
    const brokers = await page.textContent('#brokers');
    assert.match(brokers ?? '', /up\s*1\/1 up/);
    assert.deepEqual(errors, []);
  });
});
