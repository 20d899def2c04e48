// The web page in a real browser (Debian's Chromium driven by playwright-core) against a
// running `tessera serve`. Run by tests/web/run.sh, which starts the server and exports PORT.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const PORT = process.env.PORT;
if (!PORT) throw new Error('PORT is not set: run this through tests/web/run.sh');
const BASE = `http://127.0.0.1:${PORT}`;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 30_000;

let browser;
let page;
let classes;
const pageErrors = [];

async function api(pathname, init) {
  const res = await fetch(BASE + pathname, init);
  const body = await res.json();
  assert.ok(res.ok, `${pathname}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

// Pixel statistics of every image matched by `selector`, measured in the page on a canvas.
function imageStats(selector) {
  return page.$$eval(selector, async (imgs) => Promise.all(imgs.map(async (img) => {
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let sum = 0; let sq = 0; let count = 0;
    const colours = new Set();
    for (let i = 0; i < px.length; i += 4) {
      colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
      for (let k = 0; k < 3; k++) { sum += px[i + k]; sq += px[i + k] * px[i + k]; count++; }
    }
    const mean = sum / count;
    return {
      width: img.naturalWidth,
      height: img.naturalHeight,
      variance: sq / count - mean * mean,
      colours: colours.size,
      pixels: Array.from(px),
    };
  })));
}

async function setField(selector, value) {
  await page.fill(selector, String(value));
}

async function waitStatus(re) {
  await page.waitForFunction((src) => new RegExp(src).test(document.querySelector('#status').textContent),
    re.source, { timeout: TIMEOUT });
}

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  ({ classes } = await api('/v1/classes'));
  assert.ok(classes.length > 1, 'the server lists classes');
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-quic'] });
  const context = await browser.newContext({ viewport: { width: 1024, height: 900 } });
  context.setDefaultTimeout(TIMEOUT);
  page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    // the bad-input test's 422s are expected; anything else is worth seeing
    if (m.type() === 'error' && !/status of 422/.test(m.text())) console.log(`[page console] ${m.text()}`);
  });
  await page.goto(`${BASE}/`);
  await page.evaluate(() => localStorage.clear());
  await page.reload();
});

after(async () => {
  if (browser) await browser.close();
});

test('the page and its assets are served with the right types', async () => {
  for (const [p, type] of [['/', /^text\/html/], ['/app.js', /^(text|application)\/javascript/], ['/style.css', /^text\/css/]]) {
    const res = await fetch(BASE + p);
    assert.equal(res.status, 200, p);
    assert.match(res.headers.get('content-type') || '', type, `${p} content-type`);
    await res.arrayBuffer();
  }
});

test('the class list and the model info load', async () => {
  await page.waitForFunction((n) => document.querySelectorAll('#classes option').length === n, classes.length);
  const values = await page.$$eval('#classes option', (opts) => opts.map((o) => o.value));
  assert.deepEqual(values, classes.map((c) => c.name));
  const models = await api('/v1/models');
  await page.waitForFunction((id) => document.querySelector('#model').textContent.includes(id), models.data[0].id);
});

test('generate: previews stream in, then two final images, kept in the gallery', async () => {
  const cls = classes[3 % classes.length];
  await setField('#class', cls.name);
  await setField('#seed', 5);
  await setField('#n', 2);
  // record the order in which preview and final images enter the DOM
  await page.evaluate(() => {
    window.__events = [];
    const log = (what) => window.__events.push(what);
    new MutationObserver((muts) => {
      // Judge by the mutation's target (the container), not by where an image is now: when the
      // whole stream arrives in one chunk, a preview is added and cleared again before this runs.
      for (const m of muts) {
        if (m.type === 'attributes' && m.target.closest('#preview')) log('preview');
        const where = m.target.nodeType === 1 ? m.target : null;
        for (const n of m.addedNodes) {
          if (n.nodeType !== 1 || !where) continue;
          const imgs = n.matches('img') ? [n] : [...n.querySelectorAll('img')];
          for (const img of imgs) {
            if (where.closest('#preview') && img.getAttribute('src')) log('preview');
            else if (where.closest('#results')) log('result');
          }
        }
      }
    }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['src'] });
  });
  await page.click('#generate');
  await page.waitForFunction(() => document.querySelectorAll('#results img').length === 2);
  await waitStatus(/Done/);

  const events = await page.evaluate(() => window.__events);
  const firstPreview = events.indexOf('preview');
  const firstResult = events.indexOf('result');
  assert.ok(firstPreview >= 0, `a preview image appeared (events: ${events.join(',')})`);
  assert.ok(firstPreview < firstResult, `the preview came before the final images (events: ${events.join(',')})`);

  const stats = await imageStats('#results img');
  for (const s of stats) {
    assert.equal(s.width, 16);
    assert.equal(s.height, 16);
    assert.ok(s.colours > 1 && s.variance > 1, `not a single colour (variance ${s.variance}, ${s.colours} colours)`);
  }
  assert.notDeepEqual(stats[0].pixels, stats[1].pixels, 'the two images differ');
  const captions = await page.$$eval('#results figcaption', (els) => els.map((e) => e.textContent));
  assert.match(captions[0], /seed 5\b/);
  assert.match(captions[1], /seed 6\b/);
  assert.equal(await page.$eval('#error', (e) => e.hidden), true, 'no error shown');
  const bar = await page.$eval('#progress', (p) => [p.value, p.max]);
  assert.equal(bar[0], bar[1], 'the progress bar is full');

  // the page asked for what the form said: a direct API call gives the same pixels
  const direct = await api('/generate', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ class: cls.id, n: 2, seed: 5 }),
  });
  assert.equal(direct.class, cls.id);
  const directPixels = await page.evaluate(async (pngs) => Promise.all(pngs.map(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
  })), direct.images.map((im) => im.png));
  assert.deepEqual(direct.images.map((im) => im.seed), [5, 6]);
  assert.deepEqual(directPixels, stats.map((s) => s.pixels), 'same pixels as POST /generate with the same class and seed');

  // the gallery has them, and keeps them across a reload
  assert.equal(await page.locator('#gallery img').count(), 2);
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll('#gallery img').length === 2);
  const gallery = await page.$$eval('#gallery figcaption', (els) => els.map((e) => e.textContent));
  assert.ok(gallery.some((t) => t.includes('seed 5') && t.includes(cls.name)), `gallery captions: ${gallery}`);
  assert.ok(gallery.some((t) => t.includes('seed 6')), `gallery captions: ${gallery}`);
  const galleryStats = await imageStats('#gallery img');
  assert.ok(galleryStats.every((s) => s.width === 16 && s.colours > 1));
});

test('a screenshot of the page is a real PNG', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-web-'));
  const file = path.join(dir, 'page.png');
  try {
    await page.screenshot({ path: file, fullPage: true });
    const buf = fs.readFileSync(file);
    assert.ok(buf.length > 10_000, `screenshot is ${buf.length} bytes`);
    assert.deepEqual([...buf.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], 'PNG signature');
    assert.equal(buf.toString('latin1', 12, 16), 'IHDR');
    assert.equal(buf.readUInt32BE(16), 1024, 'screenshot width = viewport width');
    assert.ok(buf.readUInt32BE(20) >= 900, 'screenshot height >= viewport height');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// One value of the server's Prometheus text (a metric without labels).
async function metric(name) {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm'));
  assert.ok(m, `metric ${name} in /metrics`);
  return Number(m[1]);
}

async function until(what, fn, ms = TIMEOUT) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('cancel, while queued, stops the request: the UI and the server agree', async () => {
  // The fixture model is fast, so keep the server busy from here with full batches, a few
  // always outstanding: the page's request then waits in the queue whatever the machine's
  // speed, and the click lands before it runs.
  const maxN = (await api('/v1/models')).data[0].max_n || 16;
  const cancelledBefore = await metric('tessera_requests_cancelled_total');
  const imagesBefore = await metric('tessera_images_generated_total');
  let stop = false;
  let made = 0;
  const worker = async (w) => {
    for (let k = 0; !stop; k++) {
      const r = await fetch(`${BASE}/generate`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ class: 0, n: maxN, seed: 1000 * w + k }),
      });
      assert.equal(r.status, 200);
      await r.arrayBuffer();
      made += maxN;
    }
  };
  const workers = Array.from({ length: 6 }, (_, w) => worker(w));
  try {
    await setField('#class', classes[1].name);
    await setField('#seed', '');
    await setField('#n', 8);
    await until('the background load to queue', async () => (await metric('tessera_queue_depth')) >= 3);
    await page.click('#generate');
    assert.equal(await page.$eval('#cancel', (b) => b.disabled), false, 'cancel is enabled while running');
    await waitStatus(/Queued: position \d+/);
    await page.click('#cancel');
    await waitStatus(/Cancelled/);
    await until('the server to count the cancel',
      async () => (await metric('tessera_requests_cancelled_total')) === cancelledBefore + 1);
  } finally {
    stop = true;
    await Promise.all(workers);
  }
  assert.equal(await metric('tessera_images_generated_total'), imagesBefore + made,
    'the cancelled request made no images');
  assert.equal(await page.locator('#results img').count(), 0, 'no final images');
  assert.equal(await page.locator('#preview img').count(), 0, 'no previews left');
  assert.equal(await page.$eval('#error', (e) => e.hidden), true, 'a cancel is not an error');
  assert.equal(await page.$eval('#generate', (b) => b.disabled), false, 'generate is enabled again');
  assert.equal(await page.$eval('#cancel', (b) => b.disabled), true, 'cancel is disabled again');
  assert.equal(await page.locator('#gallery img').count(), 2, 'the gallery did not change');

  // the page and the server go on as before
  await setField('#n', 1);
  await setField('#seed', 11);
  await page.click('#generate');
  await page.waitForFunction(() => document.querySelectorAll('#results img').length === 1);
  await waitStatus(/Done/);
});

async function expectServerError(fill) {
  await fill();
  const [res] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/generate'),
    page.click('#generate'),
  ]);
  await page.waitForFunction(() => !document.querySelector('#error').hidden);
  const shown = await page.$eval('#error', (e) => e.textContent);
  let message;
  if (res.status() === 422) {
    message = (await res.json()).error.message;
  } else {
    // an error that comes as an SSE `error` event instead of a status
    const text = await res.text();
    const m = text.match(/event: ?error\r?\ndata: ?(.*)/);
    assert.ok(m, `expected 422 or an error event, got ${res.status()}: ${text.slice(0, 200)}`);
    message = JSON.parse(m[1]).error.message;
  }
  assert.equal(shown, message, 'the page shows the server\'s message');
  assert.equal(await page.locator('#results img').count(), 0);
  return { status: res.status(), message };
}

test('bad input shows the server\'s error message', async () => {
  const seed = await expectServerError(async () => {
    await setField('#class', classes[0].name);
    await setField('#n', 1);
    await setField('#seed', -1);
  });
  assert.equal(seed.status, 422);
  assert.match(seed.message, /seed/);

  const prompt = await expectServerError(async () => {
    await setField('#class', 'definitely not a class of this model');
    await setField('#seed', 1);
  });
  assert.equal(prompt.status, 422);
  assert.match(prompt.message, /prompt|class/);

  // and the error goes away on the next good request
  await setField('#class', classes[0].name);
  await page.click('#generate');
  await page.waitForFunction(() => document.querySelectorAll('#results img').length === 1);
  assert.equal(await page.$eval('#error', (e) => e.hidden), true);
});

test('the page raised no script errors', () => {
  assert.deepEqual(pageErrors, []);
});
