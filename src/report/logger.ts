// The agent's structured logger: pino JSON lines on stdout. Components get
// a child logger with a `component` binding; nothing uses a global logger.
import { pino, type Logger, type LevelWithSilent } from 'pino';

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  if (!LOG_LEVELS.includes(level as LevelWithSilent)) {
    throw new Error(`invalid log level ${JSON.stringify(level)} (expected one of ${LOG_LEVELS.join(', ')})`);
  }
  const opts = {
    level,
    base: { app: 'weir' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
    // Never let a credential reach a log line.
    redact: { paths: ['*.token', '*.bearerToken', '*.authorization', '*.password', 'headers.authorization'], censor: '[redacted]' },
  };
  return destination ? pino(opts, destination as pino.DestinationStream) : pino(opts);
}
