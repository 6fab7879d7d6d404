#!/bin/sh
# Makes a checkout ready to run: Debian packages, npm packages (which build
# the BPF objects, the addon and the TypeScript), in that order, each only
# when needed. `npm test` and `npm run demo` call this first.
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh
if [ ! -x node_modules/.bin/node ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "weir: installing npm packages (npm ci)"
  npm ci --no-audit --no-fund
else
  node_modules/.bin/node scripts/build.mjs
fi
