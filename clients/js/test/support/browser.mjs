// Debian's Chromium driven by playwright-core (no browser download: the system's), and a
// static server for the test page, the built package and @msgpack/msgpack's ES modules.
import http from 'node:http';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

const routes = [
  ['/dist/', path.join(root, 'dist')],
  ['/msgpack/', path.join(root, 'node_modules/@msgpack/msgpack/dist.esm')],
];
const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.map': 'application/json' };

/** Serves the test page at `/`, the other pages of test/browser by name, and the files under the routes above. */
export async function startStaticServer() {
  const server = http.createServer(async (request, response) => {
    const url = new URL(request.url, 'http://x');
    let file;
    if (url.pathname === '/') file = path.join(root, 'test/browser/page.html');
    if (/^\/[a-z-]+\.html$/.test(url.pathname)) file = path.join(root, 'test/browser', url.pathname);
    for (const [prefix, dir] of routes) {
      if (url.pathname.startsWith(prefix)) file = path.join(dir, url.pathname.slice(prefix.length));
    }
    if (!file || file.includes('..')) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      response.writeHead(200, { 'Content-Type': types[path.extname(file)] ?? 'application/octet-stream' });
      response.end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    async stop() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/** Headless Chromium, with a fresh profile (playwright makes one per launch), and `extraArgs`. */
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
      ...extraArgs,
    ],
    timeout: 30_000,
  });
}
