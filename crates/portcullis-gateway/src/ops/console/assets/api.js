// The console's calls: its own endpoints under /console/api and the admin
// API through /console/api/admin. The browser holds only the session
// cookie; every state change carries the session's CSRF token.

let csrfToken = '';
let onSignedOut = () => {};

export function setCsrf(token) { csrfToken = token || ''; }
export function whenSignedOut(f) { onSignedOut = f; }

/** A refusal: HTTP status and the problem+json body (code, detail). */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body === 'object' ? (body.detail || body.title || '') : String(body || '');
    const code = body && typeof body === 'object' ? body.code : undefined;
    super(`${status}${code ? ' ' + code : ''}${detail ? ': ' + detail : ''}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.body = body;
  }
}

export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken;
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!r.ok) {
    if (r.status === 401) onSignedOut();
    throw new ApiError(r.status, data);
  }
  return data;
}

/** A call to the admin API, e.g. admin('GET', '/bans'). */
export function admin(method, path, body) {
  return call(method, '/console/api/admin' + path, body);
}

export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '' || v === false) continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? '?' + s : '';
}
