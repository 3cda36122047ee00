// The JSON API, called with the token the person signed in with. The token lives in this
// tab's sessionStorage and travels only in the Authorization header: never in a URL (URLs
// end up in logs and history). The live event stream is read with fetch() for the same
// reason, since EventSource cannot send headers.

const TOKEN_KEY = 'll.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A refused or failed call, with the API's `{error, message, field}`. */
export class ApiFailure extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error || 'http';
    this.field = body?.field;
  }
}

let onUnauthenticated = () => {};
/** What to do when the server no longer accepts the token (401). */
export function whenUnauthenticated(fn) {
  onUnauthenticated = fn;
}

function headers(extra = {}) {
  const h = { Accept: 'application/json', ...extra };
  const tok = token();
  if (tok) h.Authorization = `Bearer ${tok}`;
  return h;
}

/** Query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** GET (or `method` with a JSON `body`) and parse the JSON answer; throws ApiFailure. */
export async function api(path, { method = 'GET', body, quiet401 = false } = {}) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(path, init);
  let data = null;
  const text = await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text }; }
  }
  if (!res.ok) {
    if (res.status === 401 && !quiet401) onUnauthenticated();
    throw new ApiFailure(res.status, data);
  }
  return data;
}

/** Reads a streamed body as text lines; `onLine` is called with each complete line. */
async function readLines(res, onLine) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 1);
      onLine(line);
    }
  }
  if (buffer) onLine(buffer);
}

/** Streams `path`'s JSON lines (application/x-ndjson) to `onValue`. */
export async function jsonLines(path, onValue, signal) {
  const res = await fetch(path, { headers: headers(), signal });
  if (!res.ok) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    if (res.status === 401) onUnauthenticated();
    throw new ApiFailure(res.status, body);
  }
  await readLines(res, (line) => {
    if (line.trim()) onValue(JSON.parse(line));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Follows GET /v1/events/stream from position `from` until `signal` aborts: calls
 * `onRecord(record)` for each record and `onState('live' | 'down')` as the connection comes
 * and goes. Reconnects after the last position it saw, so nothing is missed or repeated.
 */
export async function follow(from, onRecord, onState, signal) {
  let next = from;
  while (!signal.aborted) {
    try {
      const res = await fetch(`/v1/events/stream?from=${next}`, {
        headers: headers({ Accept: 'text/event-stream' }),
        signal,
      });
      if (res.status === 401) { onUnauthenticated(); return; }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      onState('live');
      let event = '';
      let data = '';
      await readLines(res, (raw) => {
        const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
        if (line === '') {
          if (event === 'record' && data) {
            const record = JSON.parse(data);
            next = record.position + 1;
            onRecord(record);
          }
          event = '';
          data = '';
        } else if (line.startsWith('event:')) {
          event = line.slice(6).trim();
        } else if (line.startsWith('data:')) {
          data += line.slice(5).trim();
        }
      });
    } catch (e) {
      if (signal.aborted) return;
    }
    onState('down');
    await sleep(2000);
  }
}
