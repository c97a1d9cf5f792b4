#!/usr/bin/env node
// An MCP server that implements what the MCP conformance suite's server scenarios check
// (npm @modelcontextprotocol/conformance), written for Mandate's conformance harness
// (scripts/conformance.sh) from the scenarios' documented requirements.
//
// One streamable HTTP endpoint, /mcp, serves both protocol eras the suite tests:
//   - 2025-11-25 (stateful): the initialize handshake opens a session (Mcp-Session-Id),
//     served by a WebStandardStreamableHTTPServerTransport of the official TypeScript SDK,
//     with an event store so a stream closed mid-call can be resumed (Last-Event-ID);
//   - 2026-07-28 (stateless): every request carries its own _meta envelope, served by the
//     SDK's createMcpHandler (server/discover, input_required results, subscriptions/listen).
// Both eras get the same tools, resources and prompts from one factory. Requests whose Host
// or Origin is not a loopback name are refused (403): a DNS-rebinding guard.
//
//   node fixture-server.mjs [PORT]        (or PORT=…; 0 or nothing: a free port)
// Prints "fixture listening on http://127.0.0.1:<port>/mcp" once it accepts connections.
// FIXTURE_LOG=1 logs each request (method, session, protocol version, body) to stderr;
// FIXTURE_DEBUG=1 logs the SDK's errors.

import http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  McpServer,
  ProtocolError,
  ResourceTemplate,
  WebStandardStreamableHTTPServerTransport,
  acceptedContent,
  createMcpHandler,
  createRequestStateCodec,
  fromJsonSchema,
  hostHeaderValidationResponse,
  inputRequired,
  isLegacyRequest,
  localhostAllowedHostnames,
  localhostAllowedOrigins,
  originValidationResponse
} from '@modelcontextprotocol/server';

const SERVER_INFO = { name: 'mandate-conformance-fixture', version: '1.0.0' };

// A 1×1 PNG and a short silent WAV (8 kHz, 8-bit mono, 8 samples), built here.
const PNG_1X1 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
const WAV_SILENCE = (() => {
  const samples = Buffer.alloc(8, 0x80);
  const h = Buffer.alloc(44);
  h.write('RIFF', 0);
  h.writeUInt32LE(36 + samples.length, 4);
  h.write('WAVE', 8);
  h.write('fmt ', 12);
  h.writeUInt32LE(16, 16); // fmt chunk size
  h.writeUInt16LE(1, 20); // PCM
  h.writeUInt16LE(1, 22); // mono
  h.writeUInt32LE(8000, 24); // sample rate
  h.writeUInt32LE(8000, 28); // byte rate
  h.writeUInt16LE(1, 32); // block align
  h.writeUInt16LE(8, 34); // bits per sample
  h.write('data', 36);
  h.writeUInt32LE(samples.length, 40);
  return Buffer.concat([h, samples]).toString('base64');
})();

// requestState is integrity-protected (HMAC) with a key that lives as long as the process:
// a tampered or foreign state is refused with -32602 before any handler runs.
const stateCodec = createRequestStateCodec({
  key: randomBytes(32),
  ttlSeconds: 600
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (t) => ({ content: [{ type: 'text', text: t }] });
const schema = (properties = {}, required = []) =>
  fromJsonSchema({ type: 'object', properties, required });

/** The client's declared capabilities, whichever era the request belongs to. */
function clientCapabilities(server, ctx) {
  return (
    ctx.mcpReq.envelope?.['io.modelcontextprotocol/clientCapabilities'] ??
    server.server.getClientCapabilities?.() ??
    {}
  );
}

/** The input response for `key` if it is a well-formed object, else undefined. */
function response(ctx, key) {
  const r = ctx.mcpReq.inputResponses?.[key];
  return r && typeof r === 'object' && !Array.isArray(r) ? r : undefined;
}

function sampledText(r) {
  const c = r?.content;
  return (Array.isArray(c) ? c.find((x) => x?.type === 'text') : c)?.text;
}

// Open 2025-era sessions, to tell them about list changes and resource updates.
const legacySessions = new Map(); // session id → { transport, server, subscriptions }
let modern; // the 2026-07-28 handler (its notify bus reaches subscriptions/listen streams)

function notifyToolsChanged() {
  modern?.notify.toolsChanged();
  for (const s of legacySessions.values()) s.server.sendToolListChanged();
}
function notifyPromptsChanged() {
  modern?.notify.promptsChanged();
  for (const s of legacySessions.values()) s.server.sendPromptListChanged();
}

/** One server instance: per request (2026-07-28) or per session (2025-11-25). */
function buildServer({ era }) {
  const server = new McpServer(SERVER_INFO, {
    capabilities: {
      tools: { listChanged: true },
      prompts: { listChanged: true },
      resources: { listChanged: true, subscribe: true },
      completions: {},
      logging: {}
    },
    instructions: 'A fixture for the MCP conformance suite.',
    cacheHints: {
      'tools/list': { ttlMs: 60000, cacheScope: 'public' },
      'prompts/list': { ttlMs: 60000, cacheScope: 'public' },
      'resources/list': { ttlMs: 60000, cacheScope: 'public' },
      'resources/templates/list': { ttlMs: 60000, cacheScope: 'public' },
      'resources/read': { ttlMs: 0, cacheScope: 'private' },
      'server/discover': { ttlMs: 60000, cacheScope: 'public' }
    },
    requestState: { verify: stateCodec.verify }
  });

  // ---- tools: content kinds -------------------------------------------------------------
  server.registerTool(
    'test_simple_text',
    { description: 'Returns a simple text response', inputSchema: schema() },
    async () => text('This is a simple text response for testing.')
  );
  server.registerTool(
    'test_image_content',
    { description: 'Returns a 1x1 PNG image', inputSchema: schema() },
    async () => ({
      content: [{ type: 'image', data: PNG_1X1, mimeType: 'image/png' }]
    })
  );
  server.registerTool(
    'test_audio_content',
    { description: 'Returns a short WAV clip', inputSchema: schema() },
    async () => ({
      content: [{ type: 'audio', data: WAV_SILENCE, mimeType: 'audio/wav' }]
    })
  );
  server.registerTool(
    'test_embedded_resource',
    { description: 'Returns an embedded text resource', inputSchema: schema() },
    async () => ({
      content: [
        {
          type: 'resource',
          resource: {
            uri: 'test://embedded-resource',
            mimeType: 'text/plain',
            text: 'This is an embedded resource content.'
          }
        }
      ]
    })
  );
  server.registerTool(
    'test_multiple_content_types',
    {
      description: 'Returns text, image and resource content together',
      inputSchema: schema()
    },
    async () => ({
      content: [
        { type: 'text', text: 'Multiple content types test:' },
        { type: 'image', data: PNG_1X1, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 })
          }
        }
      ]
    })
  );
  server.registerTool(
    'test_error_handling',
    {
      description: 'Always fails, as a tool error (isError)',
      inputSchema: schema()
    },
    async () => ({
      isError: true,
      content: [
        {
          type: 'text',
          text: 'This tool intentionally returns an error for testing'
        }
      ]
    })
  );

  // ---- tools: notifications during a call -------------------------------------------------
  const withLogging = async (ctx) => {
    // ctx.mcpReq.log honours logging/setLevel (2025) and _meta logLevel (2026: nothing
    // is sent to a request that did not ask for a level).
    await ctx.mcpReq.log('info', 'Tool execution started');
    await sleep(50);
    await ctx.mcpReq.log('info', 'Tool processing data');
    await sleep(50);
    await ctx.mcpReq.log('info', 'Tool execution completed');
    return text('Tool with logging executed successfully');
  };
  server.registerTool(
    'test_tool_with_logging',
    {
      description: 'Sends three log messages while it runs',
      inputSchema: schema()
    },
    async (_args, ctx) => withLogging(ctx)
  );
  server.registerTool(
    'test_logging_tool',
    {
      description:
        'Tries to log while it runs (silent unless the request asked for a log level)',
      inputSchema: schema()
    },
    async (_args, ctx) => withLogging(ctx)
  );
  server.registerTool(
    'test_tool_with_progress',
    {
      description: 'Reports progress 0, 50 and 100 of 100',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const token = ctx.mcpReq._meta?.progressToken;
      for (const progress of [0, 50, 100]) {
        if (token !== undefined) {
          await ctx.mcpReq.notify({
            method: 'notifications/progress',
            params: { progressToken: token, progress, total: 100 }
          });
        }
        if (progress < 100) await sleep(50);
      }
      return text('Tool with progress executed successfully');
    }
  );
  server.registerTool(
    'test_reconnection',
    {
      description:
        'Closes its response stream mid-call; the result arrives when the client resumes',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      await sleep(50);
      ctx.http?.closeSSE?.();
      await sleep(200);
      return text('Reconnection test completed');
    }
  );

  // ---- tools: asking the client (sampling, elicitation, roots) ----------------------------
  // Written once as input_required results: 2026-07-28 clients answer them and retry; on a
  // 2025-11-25 session the SDK sends the embedded requests to the client itself.
  server.registerTool(
    'test_sampling',
    {
      description: 'Asks the client for an LLM completion of the prompt',
      inputSchema: schema(
        { prompt: { type: 'string', description: 'The prompt to send' } },
        ['prompt']
      )
    },
    async ({ prompt }, ctx) => {
      const answer = response(ctx, 'llm');
      if (!answer) {
        return inputRequired({
          inputRequests: {
            llm: inputRequired.createMessage({
              messages: [{ role: 'user', content: { type: 'text', text: prompt } }],
              maxTokens: 100
            })
          }
        });
      }
      return text(`LLM response: ${sampledText(answer) ?? ''}`);
    }
  );
  server.registerTool(
    'test_elicitation',
    {
      description: 'Asks the user for a username and an email address',
      inputSchema: schema(
        { message: { type: 'string', description: 'What to show the user' } },
        ['message']
      )
    },
    async ({ message }, ctx) => {
      const answer = response(ctx, 'user');
      if (!answer) {
        return inputRequired({
          inputRequests: {
            user: inputRequired.elicit({
              message,
              requestedSchema: {
                type: 'object',
                properties: {
                  username: { type: 'string', description: "User's response" },
                  email: { type: 'string', description: "User's email address" }
                },
                required: ['username', 'email']
              }
            })
          }
        });
      }
      return text(
        `User response: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`
      );
    }
  );
  server.registerTool(
    'test_elicitation_sep1034_defaults',
    {
      description: 'Elicits values of every primitive type, each with a default',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const answer = response(ctx, 'defaults');
      if (!answer) {
        return inputRequired({
          inputRequests: {
            defaults: inputRequired.elicit({
              message: 'Please review and update the form fields with defaults',
              requestedSchema: {
                type: 'object',
                properties: {
                  name: { type: 'string', description: 'Name', default: 'John Doe' },
                  age: { type: 'integer', description: 'Age', default: 30 },
                  score: { type: 'number', description: 'Score', default: 95.5 },
                  status: {
                    type: 'string',
                    description: 'Status',
                    enum: ['active', 'inactive', 'pending'],
                    default: 'active'
                  },
                  verified: { type: 'boolean', description: 'Verified', default: true }
                }
              }
            })
          }
        });
      }
      return text(
        `Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`
      );
    }
  );
  server.registerTool(
    'test_elicitation_sep1330_enums',
    {
      description: 'Elicits a choice in each of the five enum schema forms',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const answer = response(ctx, 'enums');
      if (!answer) {
        return inputRequired({
          inputRequests: {
            enums: inputRequired.elicit({
              message: 'Please pick from each list',
              requestedSchema: {
                type: 'object',
                properties: {
                  untitledSingle: {
                    type: 'string',
                    description: 'Pick one',
                    enum: ['option1', 'option2', 'option3']
                  },
                  titledSingle: {
                    type: 'string',
                    description: 'Pick one (titled)',
                    oneOf: [
                      { const: 'value1', title: 'First Option' },
                      { const: 'value2', title: 'Second Option' },
                      { const: 'value3', title: 'Third Option' }
                    ]
                  },
                  legacyEnum: {
                    type: 'string',
                    description: 'Pick one (legacy titles)',
                    enum: ['opt1', 'opt2', 'opt3'],
                    enumNames: ['Option One', 'Option Two', 'Option Three']
                  },
                  untitledMulti: {
                    type: 'array',
                    description: 'Pick several',
                    items: { type: 'string', enum: ['option1', 'option2', 'option3'] }
                  },
                  titledMulti: {
                    type: 'array',
                    description: 'Pick several (titled)',
                    items: {
                      anyOf: [
                        { const: 'value1', title: 'First Choice' },
                        { const: 'value2', title: 'Second Choice' },
                        { const: 'value3', title: 'Third Choice' }
                      ]
                    }
                  }
                }
              }
            })
          }
        });
      }
      return text(
        `Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`
      );
    }
  );
  server.registerTool(
    'test_streaming_elicitation',
    {
      description: 'Needs an answer from the user before it can finish',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const answer = response(ctx, 'confirm');
      if (!answer) {
        return inputRequired({
          inputRequests: {
            confirm: inputRequired.elicit({
              message: 'Continue?',
              requestedSchema: {
                type: 'object',
                properties: { ok: { type: 'boolean' } },
                required: ['ok']
              }
            })
          }
        });
      }
      return text(`Confirmed: ${JSON.stringify(answer.content ?? {})}`);
    }
  );
  // Its answer needs sampling. Like every tool here that asks the client for something, it
  // does not check the client's capabilities itself: the SDK refuses (-32021, HTTP 400) an
  // input_required result that asks a client for what it did not declare.
  server.registerTool(
    'test_missing_capability',
    {
      description: 'Needs the client to support sampling; refused (-32021) otherwise',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const answer = response(ctx, 'llm');
      if (!answer) {
        return inputRequired({
          inputRequests: {
            llm: inputRequired.createMessage({
              messages: [{ role: 'user', content: { type: 'text', text: 'Say hello' } }],
              maxTokens: 20
            })
          }
        });
      }
      return text(`Sampled: ${sampledText(answer) ?? ''}`);
    }
  );

  // ---- tools: multi-round-trip (input_required) flows -------------------------------------
  const askName = (message = 'What is your name?') =>
    inputRequired.elicit({
      message,
      requestedSchema: {
        type: 'object',
        properties: { name: { type: 'string' } },
        required: ['name']
      }
    });
  server.registerTool(
    'test_input_required_result_elicitation',
    { description: "Asks for the user's name, then greets them", inputSchema: schema() },
    async (_args, ctx) => {
      if (ctx.mcpReq.inputResponses === null) {
        throw new ProtocolError(-32602, 'inputResponses must be an object');
      }
      const name = acceptedContent(ctx.mcpReq.inputResponses, 'user_name')?.name;
      if (typeof name !== 'string') {
        return inputRequired({ inputRequests: { user_name: askName() } });
      }
      return text(`Hello, ${name}!`);
    }
  );
  server.registerTool(
    'test_input_required_result_sampling',
    { description: 'Asks the client to sample an answer', inputSchema: schema() },
    async (_args, ctx) => {
      const answer = response(ctx, 'capital_question');
      if (!answer) {
        return inputRequired({
          inputRequests: {
            capital_question: inputRequired.createMessage({
              messages: [
                {
                  role: 'user',
                  content: { type: 'text', text: 'What is the capital of France?' }
                }
              ],
              maxTokens: 100
            })
          }
        });
      }
      return text(`The model said: ${sampledText(answer) ?? ''}`);
    }
  );
  server.registerTool(
    'test_input_required_result_list_roots',
    { description: "Asks for the client's roots", inputSchema: schema() },
    async (_args, ctx) => {
      const answer = response(ctx, 'client_roots');
      if (!Array.isArray(answer?.roots)) {
        return inputRequired({
          inputRequests: { client_roots: inputRequired.listRoots() }
        });
      }
      return text(
        `Roots: ${answer.roots.map((r) => r?.uri).filter(Boolean).join(', ') || '(none)'}`
      );
    }
  );
  server.registerTool(
    'test_input_required_result_request_state',
    {
      description: 'Asks for a confirmation and keeps its own state in requestState',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const state = ctx.mcpReq.requestState();
      const confirm = acceptedContent(ctx.mcpReq.inputResponses, 'confirm');
      if (state?.step === 'confirm' && confirm) {
        return text(`state-ok: confirmed=${JSON.stringify(confirm.ok)}`);
      }
      return inputRequired({
        inputRequests: {
          confirm: inputRequired.elicit({
            message: 'Please confirm',
            requestedSchema: {
              type: 'object',
              properties: { ok: { type: 'boolean' } },
              required: ['ok']
            }
          })
        },
        requestState: await stateCodec.mint({ step: 'confirm' })
      });
    }
  );
  server.registerTool(
    'test_input_required_result_multiple_inputs',
    {
      description: 'Asks for an elicitation, a sample and the roots at once',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const state = ctx.mcpReq.requestState();
      const keys = ['user_name', 'greeting', 'client_roots'];
      if (state?.step === 'all' && keys.every((k) => response(ctx, k))) {
        const name = acceptedContent(ctx.mcpReq.inputResponses, 'user_name')?.name;
        return text(
          `Got all three: name=${name ?? '?'}, greeting=${sampledText(response(ctx, 'greeting')) ?? '?'}`
        );
      }
      return inputRequired({
        inputRequests: {
          user_name: askName(),
          greeting: inputRequired.createMessage({
            messages: [
              { role: 'user', content: { type: 'text', text: 'Generate a greeting' } }
            ],
            maxTokens: 50
          }),
          client_roots: inputRequired.listRoots()
        },
        requestState: await stateCodec.mint({ step: 'all' })
      });
    }
  );
  server.registerTool(
    'test_input_required_result_multi_round',
    {
      description: 'Asks two questions, one round each, carrying state between them',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const state = ctx.mcpReq.requestState();
      if (state?.round === 1) {
        const name = acceptedContent(ctx.mcpReq.inputResponses, 'step1')?.name;
        if (typeof name === 'string') {
          return inputRequired({
            inputRequests: {
              step2: inputRequired.elicit({
                message: 'Step 2: What is your favorite color?',
                requestedSchema: {
                  type: 'object',
                  properties: { color: { type: 'string' } },
                  required: ['color']
                }
              })
            },
            requestState: await stateCodec.mint({ round: 2, name })
          });
        }
      }
      if (state?.round === 2) {
        const color = acceptedContent(ctx.mcpReq.inputResponses, 'step2')?.color;
        if (typeof color === 'string') {
          return text(`${state.name}'s favorite color is ${color}`);
        }
      }
      return inputRequired({
        inputRequests: { step1: askName('Step 1: What is your name?') },
        requestState: await stateCodec.mint({ round: 1 })
      });
    }
  );
  server.registerTool(
    'test_input_required_result_tampered_state',
    {
      description: 'Signs its requestState; a changed state is refused',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const state = ctx.mcpReq.requestState();
      const ok = acceptedContent(ctx.mcpReq.inputResponses, 'confirm');
      if (state?.step === 'signed' && ok) return text('state verified');
      return inputRequired({
        inputRequests: {
          confirm: inputRequired.elicit({
            message: 'Please confirm',
            requestedSchema: {
              type: 'object',
              properties: { ok: { type: 'boolean' } },
              required: ['ok']
            }
          })
        },
        requestState: await stateCodec.mint({ step: 'signed' })
      });
    }
  );
  server.registerTool(
    'test_input_required_result_capabilities',
    {
      description: 'Asks only for what the client declared it can answer',
      inputSchema: schema()
    },
    async (_args, ctx) => {
      const caps = clientCapabilities(server, ctx);
      const requests = {};
      if (caps.elicitation && !response(ctx, 'user_name')) requests.user_name = askName();
      if (caps.sampling && !response(ctx, 'summary')) {
        requests.summary = inputRequired.createMessage({
          messages: [{ role: 'user', content: { type: 'text', text: 'Summarise' } }],
          maxTokens: 50
        });
      }
      if (caps.roots && !response(ctx, 'client_roots')) {
        requests.client_roots = inputRequired.listRoots();
      }
      if (Object.keys(requests).length > 0) {
        return inputRequired({ inputRequests: requests });
      }
      return text(`Capabilities used: ${Object.keys(caps).join(', ') || '(none)'}`);
    }
  );

  // ---- tools: schema and header features, list changes -----------------------------------
  server.registerTool(
    'json_schema_2020_12_tool',
    {
      description: 'Tool with JSON Schema 2020-12 features',
      inputSchema: fromJsonSchema({
        $schema: 'https://json-schema.org/draft/2020-12/schema',
        type: 'object',
        $defs: {
          address: {
            $anchor: 'addressDef',
            type: 'object',
            properties: { street: { type: 'string' }, city: { type: 'string' } }
          }
        },
        properties: {
          name: { type: 'string' },
          address: { $ref: '#/$defs/address' },
          contactMethod: { type: 'string', enum: ['phone', 'email'] },
          phone: { type: 'string' },
          email: { type: 'string' }
        },
        allOf: [{ anyOf: [{ required: ['phone'] }, { required: ['email'] }] }],
        if: {
          properties: { contactMethod: { const: 'phone' } },
          required: ['contactMethod']
        },
        then: { required: ['phone'] },
        else: { required: ['email'] },
        additionalProperties: false
      })
    },
    async (args) => text(`Received: ${JSON.stringify(args)}`)
  );
  server.registerTool(
    'test_custom_header',
    {
      description: 'Echoes a region that clients also send as the Mcp-Param-Region header',
      inputSchema: schema(
        {
          region: {
            type: 'string',
            description: 'A region name',
            'x-mcp-header': 'Region'
          }
        },
        ['region']
      )
    },
    async ({ region }) => text(`Region: ${region}`)
  );
  server.registerTool(
    'test_trigger_tool_change',
    {
      description: 'Announces a tool list change to listening clients',
      inputSchema: schema()
    },
    async () => {
      notifyToolsChanged();
      return text('tools/list_changed sent');
    }
  );
  server.registerTool(
    'test_trigger_prompt_change',
    {
      description: 'Announces a prompt list change to listening clients',
      inputSchema: schema()
    },
    async () => {
      notifyPromptsChanged();
      return text('prompts/list_changed sent');
    }
  );

  // ---- resources ---------------------------------------------------------------------------
  server.registerResource(
    'static-text',
    'test://static-text',
    { description: 'A static text resource', mimeType: 'text/plain' },
    async (uri) => ({
      contents: [
        {
          uri: uri.href,
          mimeType: 'text/plain',
          text: 'This is the content of the static text resource.'
        }
      ]
    })
  );
  server.registerResource(
    'static-binary',
    'test://static-binary',
    { description: 'A static binary resource (a PNG image)', mimeType: 'image/png' },
    async (uri) => ({
      contents: [{ uri: uri.href, mimeType: 'image/png', blob: PNG_1X1 }]
    })
  );
  server.registerResource(
    'watched-resource',
    'test://watched-resource',
    { description: 'A resource clients may subscribe to', mimeType: 'text/plain' },
    async (uri) => ({
      contents: [
        { uri: uri.href, mimeType: 'text/plain', text: 'Watched resource content' }
      ]
    })
  );
  server.registerResource(
    'template-data',
    new ResourceTemplate('test://template/{id}/data', { list: undefined }),
    {
      description: 'Data for an id, from a URI template',
      mimeType: 'application/json'
    },
    async (uri, { id }) => ({
      contents: [
        {
          uri: uri.href,
          mimeType: 'application/json',
          text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` })
        }
      ]
    })
  );

  // ---- prompts -----------------------------------------------------------------------------
  server.registerPrompt(
    'test_simple_prompt',
    { description: 'A prompt without arguments' },
    async () => ({
      messages: [
        {
          role: 'user',
          content: { type: 'text', text: 'This is a simple prompt for testing.' }
        }
      ]
    })
  );
  server.registerPrompt(
    'test_prompt_with_arguments',
    {
      description: 'A prompt with two required arguments',
      argsSchema: schema(
        {
          arg1: { type: 'string', description: 'First test argument' },
          arg2: { type: 'string', description: 'Second test argument' }
        },
        ['arg1', 'arg2']
      )
    },
    async ({ arg1, arg2 }) => ({
      messages: [
        {
          role: 'user',
          content: {
            type: 'text',
            text: `Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`
          }
        }
      ]
    })
  );
  server.registerPrompt(
    'test_prompt_with_embedded_resource',
    {
      description: 'A prompt that embeds the resource it is given',
      argsSchema: schema(
        { resourceUri: { type: 'string', description: 'URI of the resource to embed' } },
        ['resourceUri']
      )
    },
    async ({ resourceUri }) => ({
      messages: [
        {
          role: 'user',
          content: {
            type: 'resource',
            resource: {
              uri: resourceUri,
              mimeType: 'text/plain',
              text: 'Embedded resource content for testing.'
            }
          }
        },
        {
          role: 'user',
          content: { type: 'text', text: 'Please process the embedded resource above.' }
        }
      ]
    })
  );
  server.registerPrompt(
    'test_prompt_with_image',
    { description: 'A prompt with an image' },
    async () => ({
      messages: [
        {
          role: 'user',
          content: { type: 'image', data: PNG_1X1, mimeType: 'image/png' }
        },
        { role: 'user', content: { type: 'text', text: 'Please analyze the image above.' } }
      ]
    })
  );
  server.registerPrompt(
    'test_input_required_result_prompt',
    { description: 'A prompt that first asks the user for context' },
    async (ctx) => {
      const context = acceptedContent(ctx.mcpReq.inputResponses, 'user_context')?.context;
      if (typeof context !== 'string') {
        return inputRequired({
          inputRequests: {
            user_context: inputRequired.elicit({
              message: 'What context should the prompt use?',
              requestedSchema: {
                type: 'object',
                properties: { context: { type: 'string' } },
                required: ['context']
              }
            })
          }
        });
      }
      return {
        messages: [
          { role: 'user', content: { type: 'text', text: `Use this context: ${context}` } }
        ]
      };
    }
  );

  // ---- completion --------------------------------------------------------------------------
  const COMPLETIONS = {
    arg1: ['paris', 'park', 'party', 'test-value', 'testing'],
    arg2: ['alpha', 'beta', 'gamma'],
    id: ['1', '123', '42']
  };
  server.server.setRequestHandler('completion/complete', async (request) => {
    const { argument } = request.params;
    const prefix = String(argument?.value ?? '');
    const all = COMPLETIONS[argument?.name] ?? [];
    const values = all.filter((v) => v.startsWith(prefix));
    return { completion: { values, total: values.length, hasMore: false } };
  });

  // ---- 2025-11-25 only: resource subscriptions ---------------------------------------------
  if (era === 'legacy') {
    server.server.setRequestHandler('resources/subscribe', async (request, ctx) => {
      legacySessions.get(ctx.sessionId)?.subscriptions.add(request.params.uri);
      return {};
    });
    server.server.setRequestHandler('resources/unsubscribe', async (request, ctx) => {
      legacySessions.get(ctx.sessionId)?.subscriptions.delete(request.params.uri);
      return {};
    });
  }
  return server;
}

// ---- 2025-11-25 sessions -------------------------------------------------------------------

/** Every message of a session, so a stream closed mid-call can be replayed (Last-Event-ID). */
class MemoryEventStore {
  #events = new Map(); // event id → { streamId, message }
  async storeEvent(streamId, message) {
    const id = `${streamId}.${randomUUID()}`;
    this.#events.set(id, { streamId, message });
    return id;
  }
  async getStreamIdForEventId(eventId) {
    return this.#events.get(eventId)?.streamId;
  }
  async replayEventsAfter(lastEventId, { send }) {
    const streamId = this.#events.get(lastEventId)?.streamId;
    if (streamId === undefined) return '';
    let after = false;
    for (const [id, e] of this.#events) {
      if (id === lastEventId) after = true;
      else if (after && e.streamId === streamId) await send(id, e.message);
    }
    return streamId;
  }
}

async function openLegacySession(request) {
  const server = buildServer({ era: 'legacy' });
  const transport = new WebStandardStreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    eventStore: new MemoryEventStore(),
    retryInterval: 500,
    onsessioninitialized: (id) => {
      legacySessions.set(id, { transport, server, subscriptions: new Set() });
    },
    onsessionclosed: (id) => {
      legacySessions.delete(id);
    }
  });
  transport.onclose = () => {
    if (transport.sessionId) legacySessions.delete(transport.sessionId);
  };
  await server.connect(transport);
  return transport.handleRequest(request);
}

function jsonRpcError(status, code, message) {
  return new Response(
    JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }),
    { status, headers: { 'content-type': 'application/json' } }
  );
}

// ---- HTTP ----------------------------------------------------------------------------------

async function route(request) {
  if (process.env.FIXTURE_LOG) {
    const body = request.method === 'POST' ? await request.clone().text() : '';
    let method = '';
    try {
      method = JSON.parse(body)?.method ?? '(response)';
    } catch {
      // not JSON: the answer says so
    }
    console.error(
      `${request.method} session=${request.headers.get('mcp-session-id') ?? '-'} ` +
        `version=${request.headers.get('mcp-protocol-version') ?? '-'} ${method} ${body.slice(0, 300)}`
    );
  }
  const guard =
    hostHeaderValidationResponse(request, localhostAllowedHostnames()) ??
    originValidationResponse(request, localhostAllowedOrigins());
  if (guard) return guard;
  if (new URL(request.url).pathname !== '/mcp') {
    return jsonRpcError(404, -32601, 'Not found: the MCP endpoint is /mcp');
  }
  // The era is the request's own claim (the SDK's classification): a POST carrying the
  // 2026-07-28 _meta envelope is served statelessly, whatever session header it also has.
  if (request.method === 'POST' && !(await isLegacyRequest(request))) {
    return modern.fetch(request);
  }
  const sessionId = request.headers.get('mcp-session-id');
  if (sessionId) {
    const session = legacySessions.get(sessionId);
    if (!session) return jsonRpcError(404, -32001, 'Session not found');
    return session.transport.handleRequest(request);
  }
  if (request.method === 'POST') {
    let body;
    try {
      body = await request.clone().json();
    } catch {
      return jsonRpcError(400, -32700, 'Parse error');
    }
    if (!Array.isArray(body) && body?.method === 'initialize') {
      return openLegacySession(request);
    }
    return jsonRpcError(400, -32000, 'Bad Request: no valid session id');
  }
  if (request.method === 'GET' || request.method === 'DELETE') {
    return jsonRpcError(400, -32000, 'Bad Request: no valid session id');
  }
  return jsonRpcError(405, -32000, 'Method not allowed');
}

function toWebRequest(req, body, signal) {
  const headers = new Headers();
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
  }
  const hasBody = body.length > 0 && req.method !== 'GET' && req.method !== 'HEAD';
  return new Request(`http://127.0.0.1${req.url}`, {
    method: req.method,
    headers,
    body: hasBody ? body : undefined,
    signal
  });
}

async function writeWebResponse(res, response) {
  const headers = {};
  response.headers.forEach((value, key) => {
    headers[key] = value;
  });
  res.writeHead(response.status, headers);
  res.flushHeaders();
  if (!response.body) return res.end();
  const reader = response.body.getReader();
  res.on('close', () => reader.cancel().catch(() => {}));
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      res.write(value);
    }
  } catch {
    // the client went away, or the stream was cancelled
  }
  res.end();
}

const httpServer = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const abort = new AbortController();
  res.on('close', () => abort.abort());
  try {
    const response = await route(toWebRequest(req, Buffer.concat(chunks), abort.signal));
    await writeWebResponse(res, response);
  } catch (e) {
    if (!res.headersSent) {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          jsonrpc: '2.0',
          error: { code: -32603, message: `Internal error: ${e?.message ?? e}` },
          id: null
        })
      );
    } else {
      res.end();
    }
  }
});

modern = createMcpHandler(buildServer, {
  legacy: 'reject',
  onerror: (e) => {
    if (process.env.FIXTURE_DEBUG) console.error('fixture:', e);
  }
});

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
httpServer.listen(port, '127.0.0.1', () => {
  console.log(`fixture listening on http://127.0.0.1:${httpServer.address().port}/mcp`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    httpServer.closeAllConnections?.();
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
