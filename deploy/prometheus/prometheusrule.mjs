#!/usr/bin/env node
// Writes prometheusrule.yaml (a PrometheusRule for the Prometheus Operator)
// from weir-rules.yaml, the plain rule file: the groups are copied as they
// are. Run after editing weir-rules.yaml: node deploy/prometheus/prometheusrule.mjs
// (test/unit/alert-rules.test.ts fails while the two differ).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Document, parseDocument } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));

export function prometheusRuleYaml(rulesYaml) {
  const rules = parseDocument(rulesYaml);
  const doc = new Document({
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'PrometheusRule',
    metadata: {
      name: 'weir',
      // Add the label your Prometheus selects rules by (ruleSelector), e.g. release: kube-prometheus-stack.
      labels: { 'app.kubernetes.io/name': 'weir', 'app.kubernetes.io/component': 'alert-rules' },
    },
    spec: { groups: rules.get('groups', true) },
  });
  return `# Generated from weir-rules.yaml by prometheusrule.mjs in this directory: edit weir-rules.yaml, then run it.\n${doc.toString({ lineWidth: 0 })}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(join(here, 'prometheusrule.yaml'), prometheusRuleYaml(readFileSync(join(here, 'weir-rules.yaml'), 'utf8')));
}
