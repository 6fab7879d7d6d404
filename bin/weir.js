#!/usr/bin/env node
// Entry point for the `weir` command; the CLI lives in src/cli (built to dist/).
import('../dist/cli/weir.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('weir: dist/ is missing. Build it first: npm ci (or node scripts/build.mjs)');
    process.exit(1);
  }
  throw err;
});
