// What a bench run makes on the machine and must not leave behind: temporary
// directories, a bpffs pin directory, a cgroup tree, child processes, a
// sandbox. Each is registered as it is made; the cleanups run once, last
// registered first: when the run ends (close(), in a finally), on
// SIGINT/SIGTERM/SIGHUP (then the process exits 128 + the signal number), or
// when the process exits without close() (an uncaught error, process.exit).
//
//   const scr = scratch();
//   try {
//     const work = scr.dir('weir-fp-');
//     const pinDir = scr.pinDir(`weir-fp-${process.pid}`);
//     scr.defer(() => child.kill('SIGKILL'), () => stopChild(child));
//     ...
//   } finally {
//     await scr.close();
//   }
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanup } from '../datapath/cleanup.js';
import { defaultCgroupRoot } from '../datapath/cgroups.js';
import { removePins } from '../datapath/datapath.js';
import { ensureBpffs } from '../native/index.js';
import { killCgroupTree, removeCgroupTree } from '../sandbox/cgroup.js';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Where the benches pin (pinDir() mounts it if need be). */
export const BPFFS = '/sys/fs/bpf';

export interface Scratch {
  /** A new directory under the system's tmpdir (mkdtemp: `prefix` and six random characters), removed with what is in it. */
  dir(prefix: string): string;
  /**
   * `<bpffs>/<name>` (the bpffs mounted if need be), not created: the
   * datapath or the agent makes it. Removed: weir's links there detached,
   * its maps unpinned (datapath/cleanup.ts), then any other pin of weir's
   * layout (staging).
   */
  pinDir(name: string, bpffs?: string): string;
  /** `<cgroup2 root>/<name>`, created; at cleanup its processes are killed and the tree removed. */
  cgroup(name: string): string;
  /**
   * Adds a cleanup. `now` must be synchronous (it also runs from a signal
   * or exit handler); `stop`, when given, runs instead of it at close(): an
   * orderly, asynchronous stop (wait for a child, an async teardown).
   */
  defer(now: () => void, stop?: () => Promise<void>): void;
  /**
   * Runs the cleanups (once; later calls do nothing) and removes the signal
   * and exit handlers. Every cleanup runs; one that fails is reported on
   * stderr, not thrown (a run's results are not lost to its cleanup).
   */
  close(): Promise<void>;
}

export function scratch(): Scratch {
  const steps: { now: () => void; stop?: () => Promise<void> }[] = [];
  let done = false;
  const report = (err: unknown): void => {
    process.stderr.write(`weir bench: cleanup: ${err instanceof Error ? err.message : String(err)}\n`);
  };
  const unhook = (): void => {
    for (const s of SIGNALS) process.off(s, onSignal);
    process.off('exit', onExit);
  };
  const runSync = (): void => {
    if (done) return;
    done = true;
    unhook();
    for (const step of steps.reverse()) {
      try {
        step.now();
      } catch (err) {
        report(err);
      }
    }
  };
  function onSignal(sig: NodeJS.Signals): void {
    runSync();
    process.exit(128 + constants.signals[sig]);
  }
  function onExit(): void {
    runSync();
  }
  for (const s of SIGNALS) process.on(s, onSignal);
  process.on('exit', onExit);

  const defer = (now: () => void, stop?: () => Promise<void>): void => {
    if (done) throw new Error('scratch: already cleaned up');
    steps.push(stop ? { now, stop } : { now });
  };
  return {
    dir(prefix) {
      const d = mkdtempSync(join(tmpdir(), prefix));
      defer(() => rmSync(d, { recursive: true, force: true }));
      return d;
    },
    pinDir(name, bpffs = BPFFS) {
      const d = join(ensureBpffs(bpffs), name);
      defer(() => {
        if (!existsSync(d)) return;
        cleanup(d);
        removePins(d);
      });
      return d;
    },
    cgroup(name) {
      const d = join(defaultCgroupRoot(), name);
      mkdirSync(d, { recursive: true });
      defer(() => {
        killCgroupTree(d);
        removeCgroupTree(d);
      });
      return d;
    },
    defer,
    async close() {
      if (done) return;
      done = true;
      unhook();
      for (const step of steps.reverse()) {
        try {
          if (step.stop) await step.stop();
          else step.now();
        } catch (err) {
          report(err);
        }
      }
    },
  };
}
