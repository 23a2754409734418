// The bundle sizes the README reports: what an app ships for the package, minified (esbuild)
// and gzipped (level 9). Run after `npm run build`: `npm run size`.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

async function measure(contents) {
  const result = await build({
    stdin: { contents, resolveDir: root, loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2022',
    write: false,
    logLevel: 'silent',
  });
  const code = result.outputFiles[0].contents;
  return { minified: code.length, gzipped: gzipSync(code, { level: 9 }).length };
}

const kib = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;
const json = await measure("export { Gateway } from './dist/index.js';");
const both = await measure("export { Gateway } from './dist/index.js'; import './dist/msgpack.js';");
const rows = [
  ['`coregate-client` (JSON; no dependency)', json],
  ['`coregate-client` + `coregate-client/msgpack` (with `@msgpack/msgpack`)', both],
  ['the MessagePack add-on alone', { minified: both.minified - json.minified, gzipped: both.gzipped - json.gzipped }],
];
console.log('| bundle | minified | minified + gzip |');
console.log('|---|---|---|');
for (const [name, size] of rows) console.log(`| ${name} | ${kib(size.minified)} | ${kib(size.gzipped)} |`);
