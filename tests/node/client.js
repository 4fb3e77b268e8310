#!/usr/bin/env node
// A Node.js client of blobstore.v1.BlobService built from nothing but proto/:
// @grpc/proto-loader reads the .proto at run time, @grpc/grpc-js makes the calls.
//
// Usage: node client.js <host:port> [input.json]
//
// input.json (optional) gives the data to store:
//   {"json_text": "<JSON text>", "binary_base64": "<bytes>", "value": <any JSON value>}
// TLS and a bearer token come from the environment: BLOBSTORE_TLS_CA (a PEM file to
// trust; turns TLS on), BLOBSTORE_TOKEN (sent as `authorization: Bearer ...` on every
// call, as grpc-js call credentials), and BLOBSTORE_DENIED_TOKEN (a token whose Put
// must be refused: its outcome is reported as `put_denied`).
// Prints one JSON object on stdout with the outcome of every call; binary content is
// returned as base64 so the caller can compare it byte for byte. Exits non-zero only
// if a call that should have succeeded failed (the failure is printed to stderr).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const DEADLINE_MS = 30000;
const STREAM_CHUNK = 64 * 1024;

const DEFAULT_INPUT = {
  json_text: '{ "b" : 1e0, "a" : [1.0, "x"] }',
  binary_base64: Buffer.from([0, 1, 2, 0xfe, 0xff]).toString('base64'),
  value: { name: 'John', status: 'active', scores: [1.0, 2.5] },
};

function loadService() {
  // google/protobuf/struct.proto comes with proto-loader (protobufjs's bundled
  // well-known types), so only our own folder is needed on the include path.
  const definition = protoLoader.loadSync('blobstore/v1/blobstore.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).blobstore.v1.BlobService;
}

// google.protobuf.Value is a message, not plain JSON, in proto-loader's object form. The
// bundled well-known types keep protobufjs's camelCase field names even with keepCase.
function toValue(value) {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  const fields = {};
  for (const [key, item] of Object.entries(value)) fields[key] = toValue(item);
  return { structValue: { fields } };
}

function fromValue(message) {
  switch (message.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
    case 'stringValue':
    case 'boolValue':
      return message[message.kind];
    case 'listValue':
      return (message.listValue.values || []).map(fromValue);
    case 'structValue': {
      const out = {};
      for (const [key, item] of Object.entries(message.structValue.fields || {})) {
        out[key] = fromValue(item);
      }
      return out;
    }
    default:
      throw new Error(`unexpected google.protobuf.Value kind ${message.kind}`);
  }
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

// Resolves with the status of a call that is expected to fail.
async function failure(client, method, request) {
  try {
    const reply = await unary(client, method, request);
    return { ok: true, reply };
  } catch (error) {
    if (error.code === undefined) throw error;
    return { ok: false, code: error.code, code_name: grpc.status[error.code], details: error.details };
  }
}

function putStream(client, blobType, data) {
  return new Promise((resolve, reject) => {
    const call = client.PutStream({ deadline: deadline() }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
    call.write({ blob_type: blobType, total_size: String(data.length) });
    for (let start = 0; start < data.length; start += STREAM_CHUNK) {
      call.write({ chunk: data.subarray(start, start + STREAM_CHUNK) });
    }
    call.end();
  });
}

function getStream(client, id) {
  return new Promise((resolve, reject) => {
    const call = client.GetStream({ id, chunk_size: STREAM_CHUNK }, { deadline: deadline() });
    let info = null;
    const chunks = [];
    call.on('data', (reply) => {
      if (reply.info) info = reply.info;
      chunks.push(reply.chunk);
    });
    call.on('error', reject);
    call.on('end', () => resolve({ info, data: Buffer.concat(chunks) }));
  });
}

function blobReply(reply) {
  const out = { id: reply.id, blob_type: reply.blob_type, size: Number(reply.size) };
  if (reply.created !== undefined) out.created = reply.created;
  if (reply.content === 'data') out.data_base64 = reply.data.toString('base64');
  if (reply.content === 'json') out.json = fromValue(reply.json);
  return out;
}

function credentials(token) {
  const caPath = process.env.BLOBSTORE_TLS_CA;
  if (!caPath) return grpc.credentials.createInsecure();
  const tls = grpc.credentials.createSsl(fs.readFileSync(caPath));
  if (!token) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.add('authorization', `Bearer ${token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

async function run(target, input) {
  const BlobService = loadService();
  const client = new BlobService(target, credentials(process.env.BLOBSTORE_TOKEN));
  const binary = Buffer.from(input.binary_base64, 'base64');
  const result = {};
  try {
    const jsonPut = await unary(client, 'Put', {
      blob_type: 'BLOB_TYPE_JSON',
      data: Buffer.from(input.json_text, 'utf8'),
    });
    result.put_json_text = blobReply(jsonPut);
    result.put_binary = blobReply(await unary(client, 'Put', { blob_type: 'BLOB_TYPE_BINARY', data: binary }));
    result.put_value = blobReply(await unary(client, 'Put', { json: toValue(input.value) }));

    result.get_json_text = blobReply(await unary(client, 'Get', { id: jsonPut.id }));
    result.get_binary = blobReply(await unary(client, 'Get', { id: result.put_binary.id }));
    result.get_value = blobReply(
      await unary(client, 'Get', { id: result.put_value.id, as_json_value: true }),
    );

    result.stat_binary = blobReply(await unary(client, 'Stat', { id: result.put_binary.id }));
    result.stat_binary.exists = true;
    const absent = 'sha256:' + '0'.repeat(64);
    const statAbsent = await unary(client, 'Stat', { id: absent });
    result.stat_absent = { id: statAbsent.id, exists: statAbsent.exists };
    const missing = await unary(client, 'FindMissing', {
      ids: [jsonPut.id, absent, result.put_binary.id.slice('sha256:'.length)],
    });
    result.find_missing = missing.missing_ids;

    result.put_stream = blobReply(await putStream(client, 'BLOB_TYPE_BINARY', binary));
    const streamed = await getStream(client, result.put_stream.id);
    result.get_stream = {
      id: streamed.info && streamed.info.id,
      blob_type: streamed.info && streamed.info.blob_type,
      size: streamed.info && Number(streamed.info.size),
      data_base64: streamed.data.toString('base64'),
    };

    result.get_absent = await failure(client, 'Get', { id: absent });
    result.stat_bad_id = await failure(client, 'Stat', { id: '../../etc/passwd' });
    result.put_bad_json = await failure(client, 'Put', {
      blob_type: 'BLOB_TYPE_JSON',
      data: Buffer.from('{"a": 1,}', 'utf8'),
    });
    if (process.env.BLOBSTORE_DENIED_TOKEN) {
      const denied = new BlobService(target, credentials(process.env.BLOBSTORE_DENIED_TOKEN));
      try {
        result.put_denied = await failure(denied, 'Put', {
          blob_type: 'BLOB_TYPE_BINARY',
          data: Buffer.from('a node reader writing', 'utf8'),
        });
      } finally {
        denied.close();
      }
    }
  } finally {
    client.close();
  }
  return result;
}

async function main() {
  const [target, inputPath] = process.argv.slice(2);
  if (!target) {
    process.stderr.write('usage: node client.js <host:port> [input.json]\n');
    process.exit(2);
  }
  const input = inputPath ? JSON.parse(fs.readFileSync(inputPath, 'utf8')) : DEFAULT_INPUT;
  try {
    process.stdout.write(JSON.stringify(await run(target, input)) + '\n');
  } catch (error) {
    process.stderr.write(`client.js: ${error.stack || error}\n`);
    process.exit(1);
  }
}

main();
