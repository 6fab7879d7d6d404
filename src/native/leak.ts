// Leak reporting for kernel-object owners. A finalizer only *reports*: it
// never closes, detaches or unpins anything, because garbage collection
// must not change what the kernel enforces. (The native side agrees: a
// collected Link keeps its attachment until the process exits.)

/** Receives one line per owner that was garbage-collected without close(). */
export type LeakReporter = (message: string) => void;

/** Default reporter: a process warning (visible on stderr, catchable). */
export function emitLeakWarning(message: string): void {
  process.emitWarning(message, { code: 'WEIR_KERNEL_OBJECT_LEAK' });
}

interface LeakRecord {
  message: string;
  report: LeakReporter;
}

const registry = new FinalizationRegistry<LeakRecord>((record) => {
  try {
    record.report(record.message);
  } catch {
    // A reporter that throws must not take the process down from a finalizer.
  }
});

/** Registered by an owner at creation, released by its close(). */
export class LeakGuard {
  constructor(owner: object, message: string, report: LeakReporter) {
    registry.register(owner, { message, report }, this);
  }

  release(): void {
    registry.unregister(this);
  }
}
