// The Live page, and the decision stream every page shares: one
// EventSource on the admin API's /admin/audit/stream (through the
// console), per-second counts for the last hour, the latest decisions.

import { admin, call, qs } from './api.js';
import { h, svg, clear, fill, fmtUs, pill, table } from './ui.js';

const HOUR = 3600;
const KEEP = 1000; // latest decisions kept in memory
const counts = new Array(HOUR).fill(null); // slot -> {sec, allowed, refused, limited, dryrun}
const recent = []; // newest first
const listeners = new Set();
let source = null;
let state = 'off';
let skipped = 0;
const seenIds = new Set(); // events counted (stream and backfill overlap)
let history = ''; // where the charts' past comes from

/** allowed | refused | limited | dryrun */
export function classify(e) {
  // A dry-run route records the refusal it did not enforce as a deny
  // whose reason starts with `dry_run:`; the request went through.
  if (e.reason && e.reason.startsWith('dry_run')) return 'dryrun';
  if (e.code === 'rate_limit.exceeded') return 'limited';
  if (e.decision === 'deny') return 'refused';
  return 'allowed';
}

export function isAdminCall(e) {
  return !!(e.route && /^[A-Z]+ \/(admin\/|openapi\.json)/.test(e.route));
}

function count(e) {
  if (seenIds.has(e.id)) return false;
  if (seenIds.size > 50000) seenIds.clear();
  seenIds.add(e.id);
  if (e.kind !== 'request') return true;
  const sec = Math.floor(e.ts_us / 1e6);
  const slot = ((sec % HOUR) + HOUR) % HOUR;
  let c = counts[slot];
  if (!c || c.sec !== sec) {
    c = { sec, allowed: 0, refused: 0, limited: 0, dryrun: 0 };
    counts[slot] = c;
  }
  c[classify(e)] += 1;
  return true;
}

/** The last hour from the audit log (at most 5,000 events), so the charts
 * and the table do not start empty. */
async function backfill() {
  const since = new Date(Date.now() - HOUR * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
  const fetched = [];
  let cursor;
  let pages = 0;
  try {
    do {
      const r = await admin('GET', '/audit' + qs({ since, limit: 1000, cursor }));
      fetched.push(...(r.events || []));
      cursor = r.next;
      pages += 1;
    } while (cursor && pages < 5 && source);
  } catch (err) {
    history = `no history (audit log: ${err.message})`;
    notify();
    return;
  }
  if (!source) return;
  for (const e of fetched) {
    if (count(e) && recent.length < KEEP) recent.push(e);
  }
  recent.sort((a, b) => b.ts_us - a.ts_us);
  if (cursor && fetched.length) {
    history = `history from the audit log since ${fmtUs(fetched[fetched.length - 1].ts_us)} (busier than shown before that)`;
  } else {
    history = 'history from the audit log: the whole last hour';
  }
  notify();
}

function notify() { for (const f of listeners) f(); }

export function startStream() {
  if (source) return;
  state = 'connecting';
  source = new EventSource('/console/api/admin/audit/stream');
  let first = true;
  source.addEventListener('open', () => {
    state = 'live';
    notify();
    if (first) { first = false; backfill(); }
  });
  source.addEventListener('error', () => {
    state = source && source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting';
    notify();
  });
  source.addEventListener('skipped', (m) => { skipped += Number(m.data) || 0; notify(); });
  // The session or its key ended: no reconnect; asking for the session
  // again brings the sign-in page (401).
  source.addEventListener('revoked', () => {
    if (source) source.close();
    state = 'closed';
    notify();
    call('GET', '/console/api/session').catch(() => {});
  });
  source.addEventListener('decision', (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch { return; }
    if (!count(e)) return;
    recent.unshift(e);
    if (recent.length > KEEP) recent.length = KEEP;
    notify();
  });
}

export function stopStream() {
  if (source) source.close();
  source = null;
  state = 'off';
  recent.length = 0;
  counts.fill(null);
  seenIds.clear();
  history = '';
  skipped = 0;
}

export function recentEvents() { return recent; }
export function subscribe(f) { listeners.add(f); return () => listeners.delete(f); }

/** Per-second rates over the last `secs` seconds in buckets of `step`. */
function series(secs, step) {
  const now = Math.floor(Date.now() / 1000);
  const out = [];
  for (let start = now - secs + 1; start <= now; start += step) {
    const b = { t: start, allowed: 0, refused: 0, limited: 0, dryrun: 0 };
    for (let s = start; s < start + step && s <= now; s++) {
      const c = counts[((s % HOUR) + HOUR) % HOUR];
      if (c && c.sec === s) {
        b.allowed += c.allowed; b.refused += c.refused; b.limited += c.limited; b.dryrun += c.dryrun;
      }
    }
    for (const k of KINDS) b[k] /= step;
    out.push(b);
  }
  return out;
}

const KINDS = ['allowed', 'refused', 'limited', 'dryrun'];
const LABELS = { allowed: 'allowed', refused: 'refused', limited: 'rate-limited', dryrun: 'dry-run would refuse' };

function chart(points, title) {
  const W = 600, H = 160, P = 28;
  const max = Math.max(1, ...points.flatMap((p) => KINDS.map((k) => p[k])));
  const x = (i) => P + (i * (W - P - 4)) / Math.max(1, points.length - 1);
  const y = (v) => H - 18 - (v * (H - 30)) / max;
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title });
  root.append(svg('title', {}, title));
  for (const f of [0, 0.5, 1]) {
    root.append(svg('line', { x1: P, x2: W - 4, y1: y(max * f), y2: y(max * f), class: 'grid' }));
    root.append(svg('text', { x: 2, y: y(max * f) + 4, class: 'axis' }, (max * f).toFixed(max < 4 ? 1 : 0)));
  }
  root.append(svg('text', { x: P, y: H - 4, class: 'axis' }, title.includes('60') ? '−60 min' : '−5 min'));
  root.append(svg('text', { x: W - 30, y: H - 4, class: 'axis' }, 'now'));
  for (const k of KINDS) {
    const d = points.map((p, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(p[k]).toFixed(1)}`).join('');
    root.append(svg('path', { d, class: 'series s-' + k }));
  }
  return root;
}

function legend(points) {
  const last = points.slice(-5);
  return h('ul', { class: 'legend' }, KINDS.map((k) => {
    const avg = last.reduce((a, p) => a + p[k], 0) / Math.max(1, last.length);
    return h('li', {}, h('span', { class: 'swatch s-' + k, 'aria-hidden': 'true' }), `${LABELS[k]}: `, h('strong', { 'data-rate': k }, avg.toFixed(1)), '/s');
  }));
}

export function mount(root) {
  let paused = false;
  let frozen = [];
  const filterText = h('input', { type: 'search', id: 'live-filter', placeholder: 'route, subject, IP, code…' });
  const filterDecision = h('select', { id: 'live-decision' },
    h('option', { value: '' }, 'all'), h('option', { value: 'allowed' }, 'allowed'),
    h('option', { value: 'refused' }, 'refused'), h('option', { value: 'limited' }, 'rate-limited'),
    h('option', { value: 'dryrun' }, 'dry-run would refuse'));
  const hideAdmin = h('input', { type: 'checkbox', id: 'live-hide-admin', checked: true });
  const pause = h('button', { type: 'button', id: 'live-pause', 'aria-pressed': 'false' }, 'Pause');
  const status = h('span', { class: 'muted', id: 'live-status', role: 'status' });
  const charts = h('div', { class: 'charts' });
  const tableBox = h('div', { id: 'live-table' });
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    frozen = recent.slice();
    draw();
  });
  for (const el of [filterText, filterDecision, hideAdmin]) el.addEventListener('input', () => drawTable());

  root.append(
    h('h1', {}, 'Live decisions'),
    h('div', { class: 'card' }, h('div', { class: 'row' }, h('span', {}, 'Stream: '), status), charts),
    h('section', { class: 'card', 'aria-labelledby': 'latest-title' },
      h('h2', { id: 'latest-title' }, 'Latest decisions'),
      h('div', { class: 'row controls' },
        h('label', { for: 'live-filter' }, 'Filter'), filterText,
        h('label', { for: 'live-decision' }, 'Decision'), filterDecision,
        h('label', { class: 'check' }, hideAdmin, ' hide admin API calls'),
        pause),
      tableBox));

  function drawTable() {
    const q = filterText.value.trim().toLowerCase();
    const want = filterDecision.value;
    const rows = (paused ? frozen : recent).filter((e) => {
      if (hideAdmin.checked && isAdminCall(e)) return false;
      if (want && classify(e) !== want) return false;
      if (!q) return true;
      return [e.route, e.path, e.subject, e.client_ip, e.code, e.method, e.kind].some((v) => v && String(v).toLowerCase().includes(q));
    }).slice(0, 100);
    fill(tableBox, table([
      { label: 'Time', get: (e) => fmtUs(e.ts_us) },
      { label: 'Route', get: (e) => `${e.method || ''} ${e.path || e.route || e.kind}` },
      { label: 'Subject or IP', get: (e) => e.subject || e.client_ip || '—' },
      { label: 'Decision', get: (e) => { const c = classify(e); return pill(LABELS[c], c); } },
      { label: 'Code', get: (e) => e.code || '—' },
      { label: 'Latency', class: 'num', get: (e) => (e.latency_us == null ? '—' : (e.latency_us / 1000).toFixed(1) + ' ms') },
    ], rows, { empty: 'No decisions yet: requests through the gateway appear here as they are decided.', class: 'decisions' }));
  }

  function draw() {
    status.textContent = state + (paused ? ' (table paused)' : '') + (skipped ? ` — ${skipped} skipped (too fast to show)` : '') + (history ? ` — ${history}` : '');
    const five = series(300, 1);
    const hour = series(HOUR, 10);
    fill(charts, 
      h('figure', {}, h('figcaption', {}, 'Last 5 minutes (requests per second)'), chart(five, 'Requests per second, last 5 minutes'), legend(five)),
      h('figure', {}, h('figcaption', {}, 'Last 60 minutes (10 s averages)'), chart(hour, 'Requests per second, last 60 minutes')));
    if (!paused) drawTable();
  }

  draw();
  let pending = false;
  const off = subscribe(() => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  });
  const tick = setInterval(draw, 5000);
  return () => { off(); clearInterval(tick); };
}
