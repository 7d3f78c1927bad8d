// Validates the AsyncAPI document with the official parser (@asyncapi/parser): the
// AsyncAPI 3.0.0 JSON Schema, the AMQP binding schemas, payload schemas, $refs and the
// parser's own rules. Then two checks the parser (3.6) does not make, both cheap:
//   - every reply's messages belong to the reply's channel (it checks this only for an
//     operation's own messages);
//   - every message example validates against its (resolved) payload and headers
//     schemas with Ajv (draft-07, formats checked): this proves the pydantic schemas,
//     moved into components.schemas by contracts/asyncapi.py, still accept the data the
//     models produce.
//
// usage: node contracts/asyncapi-check/validate.mjs [FILE]   (default: ../asyncapi.yaml)
// Prints every diagnostic; exits 1 when any has severity error, 2 when the file cannot
// be read, 0 otherwise. Warnings, infos and hints are printed but do not fail.
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { DiagnosticSeverity, Parser, fromFile } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const here = dirname(fileURLToPath(import.meta.url));
const file = resolve(process.argv[2] ?? resolve(here, '..', 'asyncapi.yaml'));
const names = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

let result;
try {
  result = await fromFile(new Parser(), file).parse();
} catch (error) {
  console.error(`${file}: cannot parse: ${error?.message ?? error}`);
  process.exit(2);
}

const { document, diagnostics } = result;
let errors = 0;
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join('.') : '(document)';
  const line = d.range ? `:${d.range.start.line + 1}` : '';
  console.log(`${file}${line}: ${names[d.severity] ?? d.severity}: ${d.code}: ${d.message} at ${where}`);
  if (d.severity === DiagnosticSeverity.Error) errors += 1;
}
if (!document) {
  console.log(`${file}: INVALID (${errors} error(s))`);
  process.exit(1);
}

function fail(code, message) {
  console.log(`${file}: error: ${code}: ${message}`);
  errors += 1;
}

for (const operation of document.operations().all()) {
  const reply = operation.reply();
  if (!reply) continue;
  const allowed = new Set((reply.channel()?.messages().all() ?? []).map((m) => m.id()));
  for (const message of reply.messages().all()) {
    if (!allowed.has(message.id())) {
      fail('reply-messages-from-reply-channel',
           `operations.${operation.id()}.reply: message ${message.id()} is not a message of ` +
           `the reply channel ${reply.channel()?.id()}`);
    }
  }
}

const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
let examples = 0;
for (const message of document.components().messages().all()) {
  for (const [index, example] of message.examples().all().entries()) {
    for (const part of ['payload', 'headers']) {
      const schema = message[part]();
      if (!example[`has${part[0].toUpperCase()}${part.slice(1)}`]() || !schema) continue;
      const validate = ajv.compile(schema.json());
      if (!validate(example[part]())) {
        const why = ajv.errorsText(validate.errors, { dataVar: part });
        fail('message-example', `components.messages.${message.id()}.examples[${index}] ` +
                                `(${example.name() ?? 'unnamed'}): ${why}`);
      }
      examples += 1;
    }
  }
}

if (errors) {
  console.log(`${file}: INVALID (${errors} error(s))`);
  process.exit(1);
}
console.log(`${file}: valid AsyncAPI ${document.version()} ` +
            `(${document.channels().length} channels, ${document.operations().length} ` +
            `operations, ${document.components().messages().length} messages, ` +
            `${examples} example parts checked against their schemas)`);
