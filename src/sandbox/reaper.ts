// The reaper: a small process started (detached, in its own session) beside
// every sandbox. It waits for EOF on stdin, its pipe from the owner. The
// owner writes "done" before closing it after a clean destroy(); EOF without
// "done" means the owner died without tearing down (SIGKILL, a test runner's
// watchdog, an OOM kill), and the reaper tears the sandbox down by name.
//
//   node reaper.js ID PREFIX CGROUP_MOUNT
//
// Signals that reach the whole process group (Ctrl-C) do not reach it: it
// runs in its own session and only acts on EOF.

import { teardown, type SandboxLogger } from './lifecycle.js';

const [id, prefix, cgroupMount] = process.argv.slice(2);
if (id === undefined || prefix === undefined || cgroupMount === undefined) {
  process.stderr.write('usage: reaper ID PREFIX CGROUP_MOUNT\n');
  process.exit(2);
}

const log: SandboxLogger = {
  debug() {},
  info(obj, msg) {
    process.stderr.write(`weir sandbox reaper: ${msg ?? ''} ${JSON.stringify(obj)}\n`);
  },
  warn(obj, msg) {
    process.stderr.write(`weir sandbox reaper: ${msg ?? ''} ${JSON.stringify(obj)}\n`);
  },
};

for (const s of ['SIGINT', 'SIGHUP'] as const) process.on(s, () => {});

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d: string) => (input += d));
process.stdin.on('error', () => {});
process.stdin.on('close', () => {
  if (input.includes('done')) process.exit(0);
  try {
    teardown(id, prefix, cgroupMount, log);
    process.exit(0);
  } catch {
    process.exit(1);
  }
});
