#!/usr/bin/env node
// A loopback HTTP proxy that adds `Authorization: Bearer <task token>` to every request:
// the MCP conformance suite cannot send headers of its own, and Mandate's MCP gateway
// answers nothing without a task token. Everything else passes through untouched, in both
// directions and as it streams (SSE): method, path, query, body, and every header,
// including Host and Origin (the suite's DNS-rebinding scenario must reach Mandate as sent).
//
//   SHIM_TOKEN=<task token> node auth-shim.mjs <upstream host:port> [listen port]
// Prints "shim listening on http://127.0.0.1:<port>" once it accepts connections.

import http from 'node:http';

const [target, listenPort = '0'] = process.argv.slice(2);
const token = process.env.SHIM_TOKEN;
if (!target || !/^[\w.-]+:\d+$/.test(target) || !token) {
  console.error('usage: SHIM_TOKEN=<token> node auth-shim.mjs <host:port> [listen port]');
  process.exit(2);
}
const [targetHost, targetPort] = [
  target.slice(0, target.lastIndexOf(':')),
  Number(target.slice(target.lastIndexOf(':') + 1))
];

// Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection, not to the message.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade'
]);

function forwardable(rawHeaders) {
  const out = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i];
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === 'authorization') continue;
    out.push(name, rawHeaders[i + 1]);
  }
  return out;
}

const server = http.createServer((req, res) => {
  const headers = forwardable(req.rawHeaders);
  headers.push('Authorization', `Bearer ${token}`);
  const upstream = http.request({
    host: targetHost,
    port: targetPort,
    method: req.method,
    path: req.url,
    headers, // raw [name, value, …] pairs: order, case and the client's Host are kept
    setHost: false
  });
  upstream.on('response', (up) => {
    // One line per exchange, for reading a run afterwards (never the token).
    console.log(
      `${req.method} ${req.url} -> ${up.statusCode} session=${req.headers['mcp-session-id'] ?? '-'}` +
        (up.headers['mcp-session-id'] ? ` new-session=${up.headers['mcp-session-id']}` : '')
    );
    res.writeHead(up.statusCode ?? 502, up.statusMessage, forwardable(up.rawHeaders));
    res.flushHeaders();
    up.pipe(res);
    up.on('error', () => res.destroy());
  });
  upstream.on('error', (e) => {
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`auth-shim: upstream ${target} unreachable: ${e.message}\n`);
    } else {
      res.destroy();
    }
  });
  // The client hung up (e.g. it stopped reading an SSE stream): so does the shim.
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
});

server.listen(Number(listenPort), '127.0.0.1', () => {
  console.log(`shim listening on http://127.0.0.1:${server.address().port}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.closeAllConnections?.();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
