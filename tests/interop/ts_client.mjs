// The TypeScript SDK v2 client (@modelcontextprotocol/client, pinned in ../shared/conformance-2026/) through the
// gateway, for test_interop.py. Run with that folder's Node 22:
//   node ts_client.mjs CONFORMANCE_2026_DIR URL TOKEN MODE PLAIN_TOOL [PROGRESS_TOOL|-] INPUT_TOOL...
// MODE is "auto", "legacy" or a revision to pin ("2026-07-28"). It connects with the bearer token on every
// request, lists tools, calls PLAIN_TOOL with {message}, PROGRESS_TOOL (unless "-") with a progress handler,
// then each INPUT_TOOL with {prompt} (tools that ask the client for input: elicitation, sampling, roots),
// answering with its handlers; prints one JSON object with what it saw and what went over the wire.
// Every request has a timeout, and the whole run a deadline, so a hang is a failure with output, not a stall.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const [confDir, url, token, mode, plainTool, progressTool, ...inputTools] = process.argv.slice(2);
const REQUEST_TIMEOUT_MS = 30000;
const RUN_DEADLINE_MS = 60000;
const NAME = 'Ada Lovelace'; // what the elicitation handler answers
const SAMPLED = 'sampled by ts through the gateway'; // what the sampling handler answers
const ROOT = 'file:///tmp/hmg-interop-ts-root'; // the one root the roots handler answers

// Bare specifiers resolve from the importing file, and this file is not in the folder that has node_modules.
const require = createRequire(join(confDir, 'package.json'));
const { Client, StreamableHTTPClientTransport } = require('@modelcontextprotocol/client');

const deadline = setTimeout(() => {
  process.stderr.write(`ts_client.mjs: no result within ${RUN_DEADLINE_MS} ms\n`);
  process.exit(2);
}, RUN_DEADLINE_MS);

// What went over the wire: POSTed JSON-RPC methods (with whether they were retries of an input_required result),
// HTTP methods, and the session ids the gateway handed out.
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
        const params = message.params || {};
        if ('requestState' in params || 'inputResponses' in params) wire.retried.push(message.method);
      }
    }
  }
  const response = await fetch(input, init);
  const sessionId = response.headers.get('mcp-session-id');
  if (sessionId && !wire.sessionIds.includes(sessionId)) wire.sessionIds.push(sessionId);
  return response;
}

const negotiation = mode === 'auto' || mode === 'legacy' ? { mode } : { mode: { pin: mode } };
const client = new Client({ name: 'hmg-interop-ts', version: '1.0.0' }, {
  capabilities: { elicitation: { form: {} }, sampling: {}, roots: {} }, versionNegotiation: negotiation });
const asked = []; // the server's requests, by method, in order
const elicitations = [];
client.setRequestHandler('elicitation/create', async request => {
  asked.push(request.method);
  elicitations.push(request.params.message);
  return { action: 'accept', content: { name: NAME } };
});
client.setRequestHandler('sampling/createMessage', async request => {
  asked.push(request.method);
  return { role: 'assistant', model: 'interop-model', content: { type: 'text', text: SAMPLED } };
});
client.setRequestHandler('roots/list', async request => {
  asked.push(request.method);
  return { roots: [{ uri: ROOT, name: 'interop' }] };
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
  const plain = textOf(await client.callTool({ name: plainTool, arguments: { message: 'hi from ts' } }, options));
  const progress = [];
  if (progressTool !== '-') {
    await client.callTool({ name: progressTool, arguments: {} },
                          { ...options, onprogress: p => progress.push([p.progress, p.total]) });
  }
  const inputs = {};
  for (const tool of inputTools) {  // (server-everything's sampling tool asks for a prompt; others ignore it)
    inputs[tool] = textOf(await client.callTool({ name: tool, arguments: { prompt: 'say something' } }, options));
  }
  out = {
    era: client.getProtocolEra(), protocolVersion: client.getNegotiatedProtocolVersion(),
    serverName: client.getServerVersion()?.name ?? null,
    supportedVersions: client.getDiscoverResult()?.supportedVersions ?? null,
    tools, plain, progress, inputs, asked, elicitations, wire,
    answers: { name: NAME, sampled: SAMPLED, root: ROOT },
  };
  await client.close();
} catch (error) {
  out = { error: String(error && error.stack || error), wire };
}
clearTimeout(deadline);
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(out.error ? 1 : 0);
