// Real processes for the end-to-end tests: a coregate gateway (COREGATE_BIN, or the
// repository's target/debug/coregate) and redis-server, each on free loopback ports, and
// stopped by the test that started them (every test registers its cleanup with `t.after`).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import readline from 'node:readline';
import { SECRET } from './jwt.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The gateway binary under test. */
export function gatewayBinary() {
  return process.env.COREGATE_BIN ?? path.resolve(here, '../../../../target/debug/coregate');
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** Resolves with the process's exit code, or rejects after `ms`. */
function exited(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`pid ${child.pid} still running after ${ms} ms`)), ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** A running gateway. */
export class GatewayProcess {
  /**
   * Starts `coregate serve` on free ports (or `listen`), with the test secret, one shard and
   * `args`; resolves once it printed `listening ws=… admin=…` and its `/ready` says 200
   * (with Redis configured, the node listens before its Redis link is up, and `/publish`
   * answers 503 until it is).
   */
  static async start(args = [], { listen = '127.0.0.1:0' } = {}) {
    const child = spawn(
      gatewayBinary(),
      ['serve', '--listen', listen, '--admin', '127.0.0.1:0', '--jwt-secret', SECRET, '--shards', '1', ...args],
      { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: process.env.GATEWAY_LOG ?? 'warn' } },
    );
    const lines = readline.createInterface({ input: child.stdout });
    const line = await Promise.race([
      once(lines, 'line').then(([l]) => l),
      once(child, 'exit').then(([code]) => {
        throw new Error(`coregate exited (${code}) before listening`);
      }),
    ]);
    lines.close();
    const field = (key) => {
      const found = line.split(/\s+/).find((word) => word.startsWith(key));
      if (!found) throw new Error(`no ${key} in ${JSON.stringify(line)}`);
      return found.slice(key.length);
    };
    const gateway = new GatewayProcess(child, field('ws='), field('admin='));
    await gateway.ready();
    return gateway;
  }

  /** Resolves once `GET /ready` answers 200; rejects after `ms`. */
  async ready(ms = 10_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const status = await fetch(`http://${this.admin}/ready`)
        .then(async (response) => {
          await response.arrayBuffer();
          return response.status;
        })
        .catch(() => 0);
      if (status === 200) return;
      if (Date.now() > deadline) throw new Error(`${this.admin}/ready still ${status} after ${ms} ms`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  constructor(child, ws, admin) {
    this.child = child;
    this.ws = ws;
    this.admin = admin;
  }

  get url() {
    return `ws://${this.ws}/ws`;
  }

  get port() {
    return Number(this.ws.split(':').pop());
  }

  /** `POST /publish` on the admin port; resolves with the HTTP status. */
  async publish(topic, op, d, extra = {}) {
    const response = await fetch(`http://${this.admin}/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ topic, op, d, ...extra }),
    });
    await response.arrayBuffer();
    return response.status;
  }

  /** SIGTERM: the gateway drains (reconnect + 1012 to every client) and exits. */
  async drain(ms = 15_000) {
    this.child.kill('SIGTERM');
    return exited(this.child, ms);
  }

  /** SIGKILL, and waits for the exit. */
  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await exited(this.child, 10_000);
  }

  /** SIGSTOP / SIGCONT: a host that stops answering without closing anything. */
  freeze() {
    this.child.kill('SIGSTOP');
  }

  thaw() {
    this.child.kill('SIGCONT');
  }
}

/** Sends one Redis command (inline form) and resolves with the first reply line. */
function redisCommand(port, command) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    socket.on('error', reject);
    socket.on('data', (chunk) => {
      reply += chunk;
      if (reply.includes('\r\n')) {
        socket.destroy();
        resolve(reply.split('\r\n')[0]);
      }
    });
    socket.on('connect', () => socket.write(`${command}\r\n`));
  });
}

/** A private redis-server without persistence, on a free port. */
export class RedisProcess {
  static async start() {
    const port = await freePort();
    const child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    const redis = new RedisProcess(child, port);
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        if ((await redisCommand(port, 'PING')) === '+PONG') return redis;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline || child.exitCode !== null) {
        await redis.stop();
        throw new Error('redis-server did not come up');
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  constructor(child, port) {
    this.child = child;
    this.port = port;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await exited(this.child, 10_000);
  }
}

/**
 * Cleanups that run last-in, first-out after the test (node:test runs `t.after` hooks in
 * the order they were added): gateways stop before the Redis they use, so they do not log
 * its loss.
 */
export function cleanups(t) {
  const stack = [];
  t.after(async () => {
    while (stack.length > 0) await stack.pop()();
  });
  return (cleanup) => stack.push(cleanup);
}
