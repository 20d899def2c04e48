// The official OpenAI Node SDK, unchanged, against `tessera serve`'s
// POST /v1/images/generations. Run by tests/web/run.sh, which starts the server and exports PORT.
//
// `seed` is a Tessera extension, not an OpenAI parameter. The SDK (v4 to v6) sends the params
// object of images.generate() as the JSON body as it is, unknown keys included, so it is passed
// as a plain extra field: images.generate({prompt, n, ..., seed: 3}). (From TypeScript it would
// need a cast; the SDK's documented alternative for undocumented params is the request option
// `{ body: {...} }`, not needed here.)

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import OpenAI from 'openai';

const PORT = process.env.PORT;
if (!PORT) throw new Error('PORT is not set: run this through tests/web/run.sh');

const client = new OpenAI({ baseURL: `http://127.0.0.1:${PORT}/v1`, apiKey: 'unused' });
let prompt;

// Minimal PNG reader: the signature, IHDR, and the inflated image data (enough to compare
// pixels, and to see that an image is not a single colour).
function readPNG(b64) {
  const buf = Buffer.from(b64, 'base64');
  assert.deepEqual([...buf.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], 'PNG signature');
  assert.equal(buf.toString('latin1', 12, 16), 'IHDR', 'IHDR first');
  const png = { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20), bitDepth: buf[24], colourType: buf[25] };
  const idat = [];
  for (let off = 8; off < buf.length;) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    if (type === 'IDAT') idat.push(buf.subarray(off + 8, off + 8 + len));
    off += 12 + len;
  }
  png.data = zlib.inflateSync(Buffer.concat(idat));
  return png;
}

function distinctBytes(data) {
  return new Set(data).size;
}

before(async () => {
  const res = await fetch(`http://127.0.0.1:${PORT}/v1/classes`);
  const { classes } = await res.json();
  prompt = classes[2 % classes.length].name;
});

test('images.generate returns b64 PNGs of the model size', async () => {
  const res = await client.images.generate({
    prompt, n: 2, size: '16x16', response_format: 'b64_json', seed: 3,
  });
  assert.ok(Math.abs(res.created - Date.now() / 1000) < 86400,
    `created is a Unix time in seconds, as OpenAI's (got ${res.created})`);
  assert.equal(res.data.length, 2);
  const pngs = res.data.map((d) => readPNG(d.b64_json));
  for (const p of pngs) {
    assert.equal(p.width, 16);
    assert.equal(p.height, 16);
    assert.ok(distinctBytes(p.data) > 2, 'not a single colour');
  }
  assert.deepEqual(res.data.map((d) => d.seed), [3, 4], 'image i has seed + i');
  assert.notDeepEqual(pngs[0].data, pngs[1].data, 'the two images differ');
});

test('the same seed gives the same bytes', async () => {
  const params = { prompt, n: 2, size: '16x16', response_format: 'b64_json', seed: 3 };
  const a = await client.images.generate(params);
  const b = await client.images.generate(params);
  assert.deepEqual(a.data.map((d) => d.b64_json), b.data.map((d) => d.b64_json));
  // the pixels depend on the seed alone, not on the index in the request (the PNG's
  // `parameters` text chunk does differ: it records the index)
  const c = await client.images.generate({ ...params, seed: 4 });
  assert.equal(c.data[0].seed, 4);
  assert.deepEqual(readPNG(c.data[0].b64_json).data, readPNG(a.data[1].b64_json).data,
    'image 1 of seed 3 has the pixels of image 0 of seed 4');
});

test('size "auto" and the defaults work', async () => {
  const res = await client.images.generate({ prompt, size: 'auto', seed: 1 });
  assert.equal(res.data.length, 1);
  assert.equal(readPNG(res.data[0].b64_json).width, 16);
});

test('streaming: partial images, then the completed images', async () => {
  const stream = await client.images.generate({
    prompt, n: 2, size: '16x16', response_format: 'b64_json', seed: 3, stream: true, partial_images: 2,
  });
  const events = [];
  for await (const ev of stream) events.push(ev);
  const types = events.map((e) => e.type);
  const firstPartial = types.indexOf('image_generation.partial_image');
  const firstCompleted = types.indexOf('image_generation.completed');
  assert.ok(firstPartial >= 0, `a partial image came (types: ${types})`);
  assert.ok(firstPartial < firstCompleted, `partial before completed (types: ${types})`);
  assert.deepEqual(types.filter((t) => !t.startsWith('image_generation.')), [], 'no other event types');

  for (const e of events) {
    assert.ok(Math.abs(e.created_at - Date.now() / 1000) < 86400,
      `${e.type}: created_at is a Unix time in seconds, as OpenAI's (got ${e.created_at})`);
  }
  const partials = events.filter((e) => e.type === 'image_generation.partial_image');
  for (const p of partials) {
    assert.ok(Number.isInteger(p.partial_image_index) && p.partial_image_index >= 0 && p.partial_image_index < 2,
      `partial_image_index ${p.partial_image_index}`);
    assert.equal(readPNG(p.b64_json).width, 16);
  }
  const completed = events.filter((e) => e.type === 'image_generation.completed');
  assert.equal(completed.length, 2, 'one completed event per image');
  for (const c of completed) {
    assert.equal(readPNG(c.b64_json).width, 16);
    assert.ok(c.usage && typeof c.usage === 'object', 'completed carries usage');
  }
  // streamed or not, the same seed gives the same pixels
  const plain = await client.images.generate({ prompt, n: 2, size: '16x16', response_format: 'b64_json', seed: 3 });
  const plainPixels = plain.data.map((d) => readPNG(d.b64_json).data).sort(Buffer.compare);
  const streamedPixels = completed.map((c) => readPNG(c.b64_json).data).sort(Buffer.compare);
  assert.deepEqual(streamedPixels, plainPixels);
});

test('a wrong size is an APIError with status 422', async () => {
  await assert.rejects(
    client.images.generate({ prompt, n: 1, size: '512x512', response_format: 'b64_json' }),
    (e) => {
      assert.ok(e instanceof OpenAI.APIError, `an APIError, got ${e}`);
      assert.equal(e.status, 422);
      assert.match(e.message, /size/);
      return true;
    },
  );
});

test('response_format "url" is refused with 422', async () => {
  await assert.rejects(
    client.images.generate({ prompt, response_format: 'url' }),
    (e) => e instanceof OpenAI.APIError && e.status === 422,
  );
});
