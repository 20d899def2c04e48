// Tessera web page: class picker, streamed generation with live previews, and a gallery of
// what this browser made (kept in localStorage). Talks to the API in docs/api.md.

const $ = (sel) => document.querySelector(sel);
const GALLERY_KEY = 'tessera.gallery.v1';
const API_KEY_KEY = 'tessera.apiKey';
const GALLERY_MAX = 24;

let classes = [];        // [{id, name}] from GET /v1/classes
let controller = null;   // AbortController of the running generation

// ---------- HTTP helpers ----------

function headers(extra = {}) {
  const h = { ...extra };
  const key = $('#api-key').value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// Turns a non-2xx response into an Error carrying the server's message.
async function httpError(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch { /* not JSON: keep the status line */ }
  const err = new Error(message);
  err.status = res.status;
  const retry = res.headers.get('Retry-After');
  if (retry) err.message += ` (retry in ${retry} s)`;
  return err;
}

async function getJSON(path) {
  const res = await fetch(path, { headers: headers({ Accept: 'application/json' }) });
  if (!res.ok) throw await httpError(res);
  return res.json();
}

// Reads a text/event-stream body and calls onEvent(name, data) per event. EventSource cannot
// POST, so this parses the stream itself: "event:" and "data:" fields, ":" comments, and a
// blank line that ends each event.
async function readSSE(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = 'message';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let nl;
      // a trailing "\r" may be the first half of a "\r\n": wait for the next chunk
      while ((nl = buf.search(/\r\n|\r(?!$)|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
        if (line === '') {
          if (data.length) onEvent(event, data.join('\n'));
          event = 'message';
          data = [];
          continue;
        }
        if (line.startsWith(':')) continue; // keep-alive comment
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'event') event = val;
        else if (field === 'data') data.push(val);
      }
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  }
}

// ---------- model and classes ----------

async function loadModel() {
  try {
    const { data } = await getJSON('/v1/models');
    const m = data && data[0];
    if (!m) throw new Error('the server lists no model');
    const details = [
      m.family,
      m.image_size && `${m.image_size}x${m.image_size} px`,
      m.tokens && `${m.tokens} tokens per image`,
      m.num_classes && `${m.num_classes} classes`,
    ].filter(Boolean);
    $('#model').textContent = `Model: ${m.id}` + (details.length ? ` (${details.join(', ')})` : '');
    if (m.max_n) $('#n').max = m.max_n;
  } catch (e) {
    $('#model').textContent = `Model information unavailable: ${e.message}`;
  }
}

async function loadClasses() {
  const input = $('#class');
  try {
    ({ classes } = await getJSON('/v1/classes'));
    const list = $('#classes');
    list.replaceChildren(...classes.map((c) => {
      const opt = document.createElement('option');
      opt.value = c.name;
      opt.label = `#${c.id}`;
      return opt;
    }));
    input.placeholder = `${classes.length} classes: type to search`;
    if (!input.value && classes.length) input.value = classes[0].name;
  } catch (e) {
    input.placeholder = 'class name or id';
    showError(`Could not load the class list: ${e.message}`);
  }
}

function className(id) {
  const c = classes.find((x) => x.id === id);
  return c ? c.name : `class ${id}`;
}

// ---------- form ----------

// Empty fields are left out (the server's defaults apply); everything else is sent as typed
// so that the server, not the page, decides what is valid and says why.
function readParams() {
  const p = {};
  const text = $('#class').value.trim();
  const known = classes.find((c) => c.name.toLowerCase() === text.toLowerCase());
  if (known) p.class = known.id;
  else if (text) p.prompt = text;
  for (const id of ['n', 'seed', 'cfg', 'cfg_interval', 'top_k', 'top_p', 'temperature']) {
    const raw = $(`#${id}`).value.trim();
    if (raw !== '') p[id] = Number(raw);
  }
  return p;
}

function setRunning(running) {
  $('#generate').disabled = running;
  $('#cancel').disabled = !running;
  $('#form').setAttribute('aria-busy', String(running));
}

function setStatus(text) { $('#status').textContent = text; }

function showError(message) {
  const el = $('#error');
  el.textContent = message;
  el.hidden = !message;
}

function setProgress(step, total) {
  const bar = $('#progress');
  bar.max = total || 1;
  bar.value = step;
}

function figure(src, caption, alt) {
  const fig = document.createElement('figure');
  const img = document.createElement('img');
  img.src = src;
  img.alt = alt;
  const cap = document.createElement('figcaption');
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

// ---------- generation ----------

function showPreview(ev) {
  const preview = $('#preview');
  let img = preview.querySelector(`img[data-index="${ev.image}"]`);
  if (!img) {
    img = document.createElement('img');
    img.dataset.index = ev.image;
    img.alt = `Preview of image ${ev.image + 1}`;
    // keep the images in index order whatever order their first previews come in
    const after = [...preview.children].find((x) => Number(x.dataset.index) > ev.image);
    preview.insertBefore(img, after || null);
  }
  img.src = `data:image/png;base64,${ev.png}`;
  img.title = `step ${ev.step} of ${ev.total}`;
}

function showResults(body, params, seconds) {
  const label = body.class !== undefined ? className(body.class) : (params.prompt || '');
  const figs = body.images.map((im, i) => {
    const src = `data:image/png;base64,${im.png}`;
    const fig = figure(src, `seed ${im.seed}`, `${label}, seed ${im.seed}`);
    const a = document.createElement('a');
    a.href = src;
    a.download = `tessera-${body.class ?? 'x'}-seed${im.seed}.png`;
    a.textContent = 'download';
    fig.querySelector('figcaption').append(' · ', a);
    fig.dataset.index = i;
    return fig;
  });
  $('#preview').replaceChildren();
  $('#results').replaceChildren(...figs);
  addToGallery(body.images.map((im) => ({
    src: `data:image/png;base64,${im.png}`,
    seed: im.seed,
    label,
    params: describeParams(params),
    time: Date.now(),
  })));
  setStatus(`Done: ${body.images.length} image${body.images.length > 1 ? 's' : ''} in ${seconds.toFixed(1)} s.`);
}

function describeParams(p) {
  const parts = [];
  if (p.cfg !== undefined) parts.push(`cfg ${p.cfg}`);
  if (p.cfg_interval !== undefined && p.cfg_interval !== -1) parts.push(`interval ${p.cfg_interval}`);
  if (p.top_k !== undefined) parts.push(`top-k ${p.top_k}`);
  if (p.top_p !== undefined && p.top_p !== 1) parts.push(`top-p ${p.top_p}`);
  if (p.temperature !== undefined && p.temperature !== 1) parts.push(`T ${p.temperature}`);
  return parts.join(', ');
}

async function generate(ev) {
  ev.preventDefault();
  if (controller) return;
  const params = readParams();
  showError('');
  setProgress(0, 1);
  $('#preview').replaceChildren();
  $('#results').replaceChildren();
  setStatus('Sending…');
  setRunning(true);
  controller = new AbortController();
  const started = performance.now();
  let finished = false;
  try {
    const res = await fetch('/generate', {
      method: 'POST',
      headers: headers({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
      body: JSON.stringify({ ...params, stream: true }),
      signal: controller.signal,
    });
    if (!res.ok) throw await httpError(res);
    if (!(res.headers.get('Content-Type') || '').startsWith('text/event-stream')) {
      throw new Error(`unexpected response type ${res.headers.get('Content-Type')}`);
    }
    await readSSE(res.body, (name, text) => {
      const data = JSON.parse(text);
      switch (name) {
        case 'queued': setStatus(`Queued: position ${data.position}.`); break;
        case 'started': setStatus('Generating…'); break;
        case 'progress':
          setProgress(data.step, data.total);
          setStatus(`Generating: step ${data.step} of ${data.total}.`);
          break;
        case 'preview': showPreview(data); break;
        case 'done':
          finished = true;
          setProgress(1, 1);
          showResults(data, params, (performance.now() - started) / 1000);
          break;
        case 'error':
          finished = true;
          throw new Error((data.error && data.error.message) || 'the server reported an error');
        default: break; // unknown events are ignored
      }
    });
    if (!finished) throw new Error('the connection closed before the images were done');
  } catch (e) {
    if (e.name === 'AbortError') {
      setStatus('Cancelled.');
      $('#preview').replaceChildren();
    } else {
      setStatus('Failed.');
      showError(e.message);
    }
  } finally {
    controller = null;
    setRunning(false);
  }
}

function cancel() {
  if (controller) controller.abort();
}

// ---------- gallery ----------

function loadGallery() {
  try {
    const items = JSON.parse(localStorage.getItem(GALLERY_KEY) || '[]');
    return Array.isArray(items) ? items : [];
  } catch {
    return [];
  }
}

function saveGallery(items) {
  // drop the oldest until it fits the browser's storage quota
  while (items.length) {
    try {
      localStorage.setItem(GALLERY_KEY, JSON.stringify(items));
      return items;
    } catch {
      items = items.slice(0, -1);
    }
  }
  localStorage.removeItem(GALLERY_KEY);
  return items;
}

function addToGallery(newItems) {
  renderGallery(saveGallery([...newItems, ...loadGallery()].slice(0, GALLERY_MAX)));
}

function renderGallery(items = loadGallery()) {
  const gallery = $('#gallery');
  gallery.replaceChildren(...items.map((it) => {
    const caption = [it.label, `seed ${it.seed}`, it.params].filter(Boolean).join(' · ');
    const fig = figure(it.src, caption, `${it.label}, seed ${it.seed}`);
    fig.title = new Date(it.time).toLocaleString();
    return fig;
  }));
  if (!items.length) {
    const p = document.createElement('p');
    p.className = 'empty';
    p.textContent = 'Nothing yet.';
    gallery.append(p);
  }
  $('#clear-gallery').disabled = !items.length;
}

// ---------- start ----------

function init() {
  const keyInput = $('#api-key');
  keyInput.value = localStorage.getItem(API_KEY_KEY) || '';
  keyInput.addEventListener('change', () => {
    localStorage.setItem(API_KEY_KEY, keyInput.value.trim());
    loadModel();
    loadClasses();
  });
  $('#form').addEventListener('submit', generate);
  $('#cancel').addEventListener('click', cancel);
  $('#clear-gallery').addEventListener('click', () => {
    localStorage.removeItem(GALLERY_KEY);
    renderGallery([]);
  });
  renderGallery();
  loadModel();
  loadClasses();
}

init();
