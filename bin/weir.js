#!/usr/bin/env node
// Entry point for the `weir` command; the CLI lives in src/cli (built to dist/).
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  console.error(
    `weir: needs Node.js 24 or later, this is ${process.version}. ` +
      'Run it through npm (npm exec weir -- ...) or node_modules/.bin/node, which npm ci installs.',
  );
  process.exit(1);
}
import('../dist/cli/weir.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('weir: dist/ is missing. Build it first: npm ci (or node scripts/build.mjs)');
    process.exit(1);
  }
  throw err;
});
