// A source feeds the ObjectStore from somewhere (the Kubernetes API, or a
// directory of manifests). The agent starts every source, waits for `synced`
// before it enforces anything (a half-loaded model would drop traffic that
// policies not yet read allow), and stops them on shutdown.

export interface Source {
  /**
   * Performs the first full load into the store, then keeps watching. Resolves
   * once the first load is done (`synced` is then true); rejects if the
   * source cannot start at all (a missing directory, no credentials).
   */
  start(): Promise<void>;
  /** Stops watching. Idempotent. Objects already in the store stay there. */
  stop(): Promise<void>;
  /** True once the first full load has been applied to the store. */
  readonly synced: boolean;
}
