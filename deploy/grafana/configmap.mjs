#!/usr/bin/env node
// Writes dashboard-configmap.yaml from weir.json: the dashboard as a
// ConfigMap that Grafana's dashboard sidecar (kube-prometheus-stack,
// grafana/helm-charts) picks up by its label grafana_dashboard: "1".
// Run after editing weir.json: node deploy/grafana/configmap.mjs
// (test/unit/dashboard.test.ts fails while the two differ).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Document, Scalar } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));

export function configMapYaml(dashboardJson) {
  const body = new Scalar(dashboardJson.endsWith('\n') ? dashboardJson : `${dashboardJson}\n`);
  body.type = Scalar.BLOCK_LITERAL;
  const doc = new Document({
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: 'weir-grafana-dashboard',
      labels: { grafana_dashboard: '1', 'app.kubernetes.io/name': 'weir', 'app.kubernetes.io/component': 'dashboard' },
    },
    data: { 'weir.json': body },
  });
  return `# Generated from weir.json by configmap.mjs in this directory: edit weir.json, then run it.\n${doc.toString({ lineWidth: 0 })}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const json = readFileSync(join(here, 'weir.json'), 'utf8');
  writeFileSync(join(here, 'dashboard-configmap.yaml'), configMapYaml(json));
}
