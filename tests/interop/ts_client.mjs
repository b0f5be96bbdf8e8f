// The TypeScript SDK v2 client (@modelcontextprotocol/client, pinned in ../shared/conformance-2026/) through the
// gateway, for test_interop.py. Run with that folder's Node 22:
//   node ts_client.mjs CONFORMANCE_2026_DIR URL TOKEN MODE TOOL
// MODE is "auto", "legacy" or a revision to pin ("2026-07-28"). It connects with the bearer token on every
// request, lists tools, calls echo, then calls TOOL (a tool that asks the client for input: elicitation/create),
// answering with an elicitation handler; prints one JSON object with what it saw and what went over the wire.
// Every request has a timeout, and the whole run a deadline, so a hang is a failure with output, not a stall.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const [confDir, url, token, mode, inputTool] = process.argv.slice(2);
const REQUEST_TIMEOUT_MS = 30000;
const RUN_DEADLINE_MS = 60000;
const NAME = 'Ada Lovelace'; // what the elicitation handler answers

// Bare specifiers resolve from the importing file, and this file is not in the folder that has node_modules.
const require = createRequire(join(confDir, 'package.json'));
const { Client, StreamableHTTPClientTransport } = require('@modelcontextprotocol/client');

const deadline = setTimeout(() => {
  process.stderr.write(`ts_client.mjs: no result within ${RUN_DEADLINE_MS} ms\n`);
  process.exit(2);
}, RUN_DEADLINE_MS);

// What went over the wire: POSTed JSON-RPC methods (with whether they carried a requestState), HTTP methods,
// and the session ids the gateway handed out.
const wire = { httpMethods: [], rpcMethods: [], retried: [], sessionIds: [], protocolVersionHeaders: [] };
async function recordingFetch(input, init = {}) {
  wire.httpMethods.push(init.method || 'GET');
  const headers = new Headers(init.headers);
  if (headers.has('mcp-protocol-version')) wire.protocolVersionHeaders.push(headers.get('mcp-protocol-version'));
  if (typeof init.body === 'string') {
    const body = JSON.parse(init.body);
    for (const message of Array.isArray(body) ? body : [body]) {
      if (message && typeof message.method === 'string') {
        wire.rpcMethods.push(message.method);
        if (message.params && 'requestState' in message.params) wire.retried.push(message.method);
      }
    }
  }
  const response = await fetch(input, init);
  const sessionId = response.headers.get('mcp-session-id');
  if (sessionId && !wire.sessionIds.includes(sessionId)) wire.sessionIds.push(sessionId);
  return response;
}

const negotiation = mode === 'auto' || mode === 'legacy' ? { mode } : { mode: { pin: mode } };
const client = new Client({ name: 'hmg-interop-ts', version: '1.0.0' },
                          { capabilities: { elicitation: { form: {} } }, versionNegotiation: negotiation });
const elicitations = [];
client.setRequestHandler('elicitation/create', async request => {
  elicitations.push(request.params.message);
  return { action: 'accept', content: { name: NAME } };
});
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
  fetch: recordingFetch,
});

const textOf = result => result.content.filter(block => block.type === 'text').map(block => block.text).join('\n');
const options = { timeout: REQUEST_TIMEOUT_MS };
let out;
try {
  await client.connect(transport, options);
  const tools = (await client.listTools(undefined, options)).tools.map(tool => tool.name);
  const echo = textOf(await client.callTool({ name: 'echo', arguments: { message: 'hi from ts' } }, options));
  const elicited = textOf(await client.callTool({ name: inputTool, arguments: {} }, options));
  out = {
    era: client.getProtocolEra(), protocolVersion: client.getNegotiatedProtocolVersion(),
    serverName: client.getServerVersion()?.name ?? null,
    supportedVersions: client.getDiscoverResult()?.supportedVersions ?? null,
    tools, echo, elicited, elicitations, wire,
  };
  await client.close();
} catch (error) {
  out = { error: String(error && error.stack || error), wire };
}
clearTimeout(deadline);
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(out.error ? 1 : 0);
