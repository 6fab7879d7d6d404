// weir agent --dns-service and --dns-resolvers: what the policy engine gets
// as its trusted resolvers, and the usage errors for what is not one.
import { describe, expect, test } from 'vitest';
import { agentCommand, parseResolverFlags } from '../../src/cli/agent-command.js';
import { UsageError } from '../../src/cli/main.js';

describe('trusted resolver flags', () => {
  test('default: the Service kube-system/kube-dns and no addresses', () => {
    expect(parseResolverFlags(undefined, undefined)).toEqual({ service: 'kube-system/kube-dns', addresses: [] });
  });

  test('another Service, none, and addresses of both families (deduplicated, spaces ignored)', () => {
    expect(parseResolverFlags('dns/coredns', undefined)).toEqual({ service: 'dns/coredns', addresses: [] });
    expect(parseResolverFlags('none', '169.254.20.10, fd00::a,169.254.20.10')).toEqual({ service: null, addresses: ['169.254.20.10', 'fd00::a'] });
  });

  test.each([['kube-dns'], ['kube-system/'], ['a/b/c'], ['Kube-System/kube-dns']])('--dns-service %s is a usage error', (v) => {
    expect(() => parseResolverFlags(v, undefined)).toThrow(UsageError);
  });

  test.each([['10.0.0.10:53'], ['10.0.0.0/8'], ['dns.example'], ['10']])('--dns-resolvers %s is a usage error', (v) => {
    expect(() => parseResolverFlags(undefined, v)).toThrow(/--dns-resolvers takes IP addresses/);
  });

  test('both flags are in weir agent --help', () => {
    expect(agentCommand.help).toContain('--dns-service');
    expect(agentCommand.help).toContain('--dns-resolvers');
  });
});
