// Process entry point of the `weir` command (bin/weir.js imports this).
import { main } from './main.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const e = err as Error & { verifierLog?: string; code?: string };
    process.stderr.write(`weir: ${e.message}\n`);
    if (e.verifierLog) process.stderr.write(`\nverifier log:\n${e.verifierLog}\n`);
    if (process.env.WEIR_DEBUG && e.stack) process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  },
);
