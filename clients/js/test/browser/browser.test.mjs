// The built package in a real browser (Chromium): both encodings, a gateway restart with
// recovery through Redis, and the browser's offline/online signals.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { launchChromium, startStaticServer } from '../support/browser.mjs';
import { token } from '../support/jwt.mjs';
import { cleanups, GatewayProcess, RedisProcess } from '../support/processes.mjs';

const ENCODINGS = ['json', 'msgpack'];

test('Chromium: both encodings connect, receive, survive a gateway restart and recover; offline and back', async (t) => {
  const defer = cleanups(t);
  const redis = await RedisProcess.start();
  defer(() => redis.stop());
  const flags = ['--redis-url', redis.url, '--history', 'channel:=100/1h'];
  let gateway = await GatewayProcess.start(flags);
  defer(() => gateway.kill());
  const publisher = await GatewayProcess.start(flags); // the backend's way in while the other is down
  defer(() => publisher.kill());
  const site = await startStaticServer();
  defer(() => site.stop());
  const browser = await launchChromium();
  defer(() => browser.close());
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(site.url);
  await page.waitForFunction(() => window.ready === true);

  for (const encoding of ENCODINGS) {
    await page.evaluate(([name, url, jwt]) => window.start(name, url, jwt, name), [encoding, gateway.url, token(`web-${encoding}`)]);
  }
  const log = (name) => page.evaluate((n) => window.clients[n].log, name);
  const waitAll = (predicate, arg, timeout = 10_000) =>
    page.waitForFunction(
      ([source, names, a]) => names.every((n) => new Function('log', 'arg', `return (${source})(log, arg)`)(window.clients[n].log, a)),
      [predicate.toString(), ENCODINGS, arg],
      { timeout, polling: 50 },
    );
  await waitAll((l) => l.subscribed.length === 1);
  for (const encoding of ENCODINGS) {
    const state = await page.evaluate((n) => window.clients[n].gw.state, encoding);
    assert.equal(state, 'connected', encoding);
  }

  await gateway.publish('channel:browser', 'message_new', { text: 'one' });
  await waitAll((l) => l.publications.length === 1);

  // Restart: killed, publications made meanwhile, started again on the same port.
  const port = gateway.port;
  await gateway.kill();
  await waitAll((l) => l.states.some(([s]) => s === 'disconnected'));
  await publisher.publish('channel:browser', 'message_new', { text: 'two (while down)' });
  gateway = await GatewayProcess.start(flags, { listen: `127.0.0.1:${port}` });
  await waitAll((l) => l.subscribed.length === 2, undefined, 15_000);
  await publisher.publish('channel:browser', 'message_new', { text: 'three' });
  await waitAll((l) => l.publications.length === 3);
  for (const encoding of ENCODINGS) {
    const { publications, subscribed, gaps, states } = await log(encoding);
    assert.deepEqual(publications, ['one', 'two (while down)', 'three'], encoding);
    assert.deepEqual(subscribed, [false, true], `${encoding}: recovered after the restart`);
    assert.deepEqual(gaps, [], encoding);
    assert.equal(states.filter(([s]) => s === 'connected').length, 2, encoding);
  }

  // The browser says it is offline: the clients drop their connections (3002) and wait;
  // online again, they are back at once, and recover what was published meanwhile.
  await context.setOffline(true);
  await waitAll((l) => l.states.at(-1)[0] === 'disconnected' && l.states.at(-1)[1] === 3002);
  await publisher.publish('channel:browser', 'message_new', { text: 'four (while offline)' });
  await context.setOffline(false);
  await waitAll((l) => l.publications.length === 4);
  for (const encoding of ENCODINGS) {
    const { publications, subscribed } = await log(encoding);
    assert.equal(publications[3], 'four (while offline)', encoding);
    assert.equal(subscribed.at(-1), true, encoding);
  }
  assert.deepEqual(errors, []);
});
