#!/usr/bin/env node
// Helpers for scripts/conformance.sh.
//
//   node harness.mjs list-tools <MCP URL>
//       The names of the server's tools, one per line (a 2025-11-25 session through the
//       official TypeScript SDK client): what a task's grant must cover.
//
//   node harness.mjs table <results dir> <table.md> [--report-only]
//       Reads the suite's runs, laid out as <results dir>/<server>/<requirement set>/<leg>/
//       (leg: direct or mandate; suite.log is the suite's output, the rest its per-scenario
//       checks.json directories), prints the scenario × {direct, through Mandate} table,
//       writes it as Markdown, and exits 1 if a scenario the suite passes directly fails
//       through Mandate (so Mandate never passes fewer scenarios than direct), unless
//       --report-only.

import fs from 'node:fs';
import path from 'node:path';

const [command, ...rest] = process.argv.slice(2);

if (command === 'list-tools') {
  console.log((await listTools(rest[0])).join('\n'));
} else if (command === 'grant') {
  console.log(await grant(rest[0], rest[1], rest[2]));
} else if (command === 'table') {
  process.exit(table(rest[0], rest[1], rest.includes('--report-only')));
} else {
  console.error('usage: harness.mjs list-tools <url> | table <results dir> <out.md> [--report-only]');
  process.exit(2);
}

/** The names of an MCP server's tools. */
async function listTools(url) {
  const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
  const { StreamableHTTPClientTransport } = await import(
    '@modelcontextprotocol/sdk/client/streamableHttp.js'
  );
  // The capabilities the suite's client declares: some servers list more tools to it.
  const client = new Client(
    { name: 'mandate-conformance-harness', version: '1.0.0' },
    { capabilities: { sampling: {}, elicitation: {}, roots: { listChanged: true } } }
  );
  const transport = new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  const names = [];
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : {});
    names.push(...page.tools.map((t) => t.name));
    cursor = page.nextCursor;
  } while (cursor);
  await transport.terminateSession().catch(() => {});
  await client.close();
  return names;
}

/**
 * Registers an agent for `server` on the Mandate at `mandate` (admin token from
 * MANDATE_ADMIN_TOKEN), attests it with its join token, and starts a task whose scope is
 * every tool the server lists directly at `url` and every pseudo-tool of the server, for
 * every action class, at the server's address. Returns the task token.
 */
async function grant(mandate, server, url) {
  const admin = process.env.MANDATE_ADMIN_TOKEN;
  const call = async (path, bearer, body) => {
    const r = await fetch(new URL(path, mandate), {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(bearer ? { authorization: `Bearer ${bearer}` } : {})
      },
      body: JSON.stringify(body)
    });
    const json = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`POST ${path}: HTTP ${r.status}: ${JSON.stringify(json)}`);
    return json;
  };
  const agent = `conformance-${server}`;
  const registered = await call('/v1/agents', admin, {
    name: agent,
    owner: 'conformance@example.com',
    tier: 1
  });
  const { identity_token: identity } = await call('/v1/attest', null, {
    agent,
    join_token: registered.join_token
  });
  // Its tools, and the pseudo-tools Mandate decides the rest of MCP as: reading resources
  // and prompts, and the server's own requests to the agent (sampling, elicitation, roots).
  const tools = [
    ...(await listTools(url)).map((t) => `${server}.${t}`),
    ...['resources', 'prompts', 'sampling', 'elicitation', 'roots'].map((p) => `${server}.${p}`)
  ];
  const task = await call('/v1/tasks', identity, {
    purpose: `run the MCP conformance suite against ${server}`,
    scope: {
      tools,
      actions: ['read', 'write', 'delete', 'execute'],
      destinations: [new URL(url).host]
    },
    ttl_secs: 3600
  });
  const granted = task.grant?.tools ?? {};
  const missing = tools.filter((t) => !(t in granted));
  if (missing.length > 0) {
    console.error(`harness: ${server}: the grant leaves out ${missing.join(', ')}`);
  }
  if (!task.task_token) throw new Error(`task not active: ${JSON.stringify(task)}`);
  return task.task_token;
}

/** One leg's run: per scenario, whether it passed, its counts, and its failed checks. */
function readLeg(dir) {
  const scenarios = new Map(); // name → { passed, failed, ok, failures: [] }
  const notScored = new Map(); // name → reason
  const log = path.join(dir, 'suite.log');
  const text = fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '';
  // The suite's own summary: "✓ name: 3 passed, 0 failed" (a scenario that threw is
  // listed there too, though it wrote no checks.json).
  for (const m of text.matchAll(/^([✓✗]) (\S+): (\d+) passed, (\d+) failed$/gm)) {
    scenarios.set(m[2], {
      passed: Number(m[3]),
      failed: Number(m[4]),
      ok: m[1] === '✓' && m[4] === '0',
      failures: []
    });
  }
  const section = text.split(/^Not scored for [^:]*:.*$/m)[1] ?? '';
  for (const m of section.matchAll(/^\s+[✓✗] (\S+) \(([^)]+)\)$/gm)) {
    notScored.set(m[1], m[2]);
  }
  // Failure messages, from each scenario's checks.json (server-<scenario>-<timestamp>/).
  if (fs.existsSync(dir)) {
    for (const entry of fs.readdirSync(dir).sort()) {
      const file = path.join(dir, entry, 'checks.json');
      const m = entry.match(/^server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z$/);
      if (!m || !fs.existsSync(file)) continue;
      let checks;
      try {
        checks = JSON.parse(fs.readFileSync(file, 'utf8'));
      } catch {
        continue;
      }
      const failures = [
        ...new Set(
          checks
            .filter((c) => c.status === 'FAILURE')
            .map((c) => `${c.id}: ${c.errorMessage ?? c.description ?? ''}`)
        )
      ];
      const s = scenarios.get(m[1]) ?? {
        passed: checks.filter((c) => c.status === 'SUCCESS').length,
        failed: failures.length,
        ok: failures.length === 0,
        failures: []
      };
      s.failures = failures;
      scenarios.set(m[1], s);
    }
  }
  return { scenarios, notScored, ran: text.length > 0 };
}

function cell(s) {
  if (!s) return '—';
  return `${s.ok ? '✓' : '✗'} ${s.passed}/${s.passed + s.failed}`;
}

function table(resultsDir, outFile, reportOnly) {
  const md = [];
  const regressions = [];
  const servers = fs
    .readdirSync(resultsDir, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort();
  const totals = [];
  for (const server of servers) {
    const sets = fs
      .readdirSync(path.join(resultsDir, server), { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name)
      .sort();
    for (const set of sets) {
      const direct = readLeg(path.join(resultsDir, server, set, 'direct'));
      const mandate = readLeg(path.join(resultsDir, server, set, 'mandate'));
      const names = [...new Set([...direct.scenarios.keys(), ...mandate.scenarios.keys()])];
      const notScored = new Map([...direct.notScored, ...mandate.notScored]);
      // Scored scenarios first, in the suite's order; then the ones it runs unscored.
      names.sort((a, b) => Number(notScored.has(a)) - Number(notScored.has(b)));
      const count = (leg, scored) =>
        names.filter((n) => leg.scenarios.get(n)?.ok && notScored.has(n) !== scored).length;
      const scoredTotal = names.filter((n) => !notScored.has(n)).length;
      totals.push({
        server,
        set,
        direct: count(direct, true),
        mandate: count(mandate, true),
        scoredTotal,
        directUnscored: count(direct, false),
        mandateUnscored: count(mandate, false),
        unscoredTotal: names.length - scoredTotal
      });
      md.push(`### ${server} — requirement set ${set}`, '');
      md.push('| scenario | direct | through Mandate |', '|---|---|---|');
      for (const n of names) {
        const d = direct.scenarios.get(n);
        const m = mandate.scenarios.get(n);
        const label = notScored.has(n) ? `${n} *(not scored: ${notScored.get(n)})*` : n;
        const flag = d?.ok && !m?.ok ? ' **regression**' : '';
        md.push(`| ${label} | ${cell(d)} | ${cell(m)}${flag} |`);
        if (d?.ok && !m?.ok) regressions.push({ server, set, scenario: n, failures: m?.failures ?? [] });
      }
      md.push('');
    }
  }

  const summary = [
    '| server | requirement set | scored scenarios passed: direct | through Mandate | not scored, passed: direct | through Mandate |',
    '|---|---|---|---|---|---|',
    ...totals.map(
      (t) =>
        `| ${t.server} | ${t.set} | ${t.direct}/${t.scoredTotal} | ${t.mandate}/${t.scoredTotal} | ${t.directUnscored}/${t.unscoredTotal} | ${t.mandateUnscored}/${t.unscoredTotal} |`
    ),
    ''
  ];
  const failing = [];
  if (regressions.length > 0) {
    failing.push(
      '### Passed directly, failed through Mandate',
      '',
      ...regressions.flatMap((r) => [
        `- **${r.server} / ${r.set} / ${r.scenario}**`,
        ...(r.failures.length > 0
          ? r.failures.map((f) => `  - \`${f.replace(/`/g, "'").replace(/\s+/g, ' ')}\``)
          : ['  - (no checks.json: the scenario did not complete; see suite.log)'])
      ]),
      ''
    );
  }
  const doc = [
    '## Summary',
    '',
    'Cells: ✓ every check of the scenario passed, ✗ at least one failed; n/m = checks passed of',
    'checks that count (warnings and informational checks are not counted).',
    '',
    ...summary,
    ...failing,
    '## Scenarios',
    '',
    ...md
  ].join('\n');
  fs.writeFileSync(outFile, `${doc}\n`);
  console.log(doc);

  if (regressions.length > 0) {
    console.error(
      `\nconformance: ${regressions.length} scenario(s) pass directly but fail through Mandate` +
        (reportOnly ? ' (--report-only: not failing)' : '')
    );
    return reportOnly ? 0 : 1;
  }
  console.error('\nconformance: Mandate passes every scenario the servers pass directly');
  return 0;
}
