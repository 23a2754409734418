// A small application backend for `--proxy-rpc-url` (PROTOCOL.md §8), on node's http module.
import http from 'node:http';
import { once } from 'node:events';

/**
 * Serves `POST /rpc`: `handler(body)` returns the answer object (`{d}` or `{error}`), or
 * undefined to never answer. Every call's body is kept in `calls`.
 */
export async function startBackend(handler) {
  const calls = [];
  const hanging = new Set();
  const server = http.createServer(async (request, response) => {
    const chunks = [];
    for await (const chunk of request) chunks.push(chunk);
    const body = JSON.parse(Buffer.concat(chunks).toString() || 'null');
    calls.push({ path: request.url, headers: request.headers, body });
    const answer = await handler(body);
    if (answer === undefined) {
      hanging.add(response);
      return;
    }
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify(answer));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}/rpc`,
    calls,
    async stop() {
      for (const response of hanging) response.destroy();
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
