// Signing keys: the key set with each key's state, a rotation timeline,
// and rotation with one confirmation (GET /admin/keys, POST /admin/keys/rotate).

import { admin } from './api.js';
import { h, svg, clear, fill, card, table, fmtTime, toast, showError, confirmAction, pill } from './ui.js';

const STATE_KIND = { active: 'allowed', published: 'dryrun', retiring: 'limited' };

function timeline(data) {
  const now = Date.now() / 1000;
  const keys = data.keys;
  const times = keys.flatMap((k) => [k.created_at, k.activates_at, k.retires_at]).filter((t) => t != null);
  if (data.next_transition_at) times.push(data.next_transition_at);
  const lo = Math.min(now, ...times) - 60;
  const hi = Math.max(now + 3600, ...times) + 60;
  const W = 640, row = 26, top = 22, H = top + keys.length * row + 24, L = 120;
  const x = (t) => L + ((t - lo) / (hi - lo)) * (W - L - 8);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'timeline', role: 'img', 'aria-label': 'Rotation timeline' });
  root.append(svg('title', {}, 'Rotation timeline: each key from creation through activation to retirement'));
  keys.forEach((k, i) => {
    const y = top + i * row;
    const start = k.created_at;
    const act = k.activates_at ?? start;
    const end = k.retires_at ?? hi;
    root.append(svg('text', { x: 4, y: y + 14, class: 'axis' }, k.kid.length > 16 ? k.kid.slice(0, 15) + '…' : k.kid));
    root.append(svg('rect', { x: x(start), y: y + 4, width: Math.max(2, x(act) - x(start)), height: 14, class: 'bar published' }));
    root.append(svg('rect', { x: x(act), y: y + 4, width: Math.max(2, x(end) - x(act)), height: 14, class: 'bar ' + (k.retires_at ? 'retiring' : 'active') }));
  });
  root.append(svg('line', { x1: x(now), x2: x(now), y1: 12, y2: H - 16, class: 'now' }));
  root.append(svg('text', { x: x(now) - 12, y: 10, class: 'axis' }, 'now'));
  if (data.next_transition_at) {
    const t = data.next_transition_at;
    root.append(svg('line', { x1: x(t), x2: x(t), y1: 12, y2: H - 16, class: 'next' }));
    root.append(svg('text', { x: Math.min(x(t) + 3, W - 90), y: H - 4, class: 'axis' }, 'next transition'));
  }
  root.append(svg('text', { x: L, y: H - 4, class: 'axis' }, fmtTime(Math.floor(lo))));
  return root;
}

/** Whether the admin API documents `path` (older gateways have no key API). */
async function served(path) {
  try {
    const r = await fetch('/openapi.json', { credentials: 'omit', cache: 'no-store' });
    const doc = await r.json();
    return Object.prototype.hasOwnProperty.call(doc.paths || {}, path);
  } catch {
    return true;
  }
}

export function mount(root) {
  const box = h('div', { id: 'keys-box' }, h('p', { class: 'muted' }, 'Loading…'));
  const result = h('div', { id: 'rotate-result', role: 'status' });
  const rotate = h('button', { type: 'button', class: 'danger', id: 'rotate-key', disabled: true }, 'Rotate signing key…');
  rotate.addEventListener('click', async () => {
    if (!(await confirmAction('Rotate the signing key',
      'A new key is published now and becomes active after the propagation delay; the current one retires then. Rotate?', 'Rotate'))) return;
    try {
      const r = await admin('POST', '/keys/rotate', {});
      fill(result, h('p', { class: 'ok' }, `New key ${r.kid} (${r.alg}) published; active from ${fmtTime(r.activates_at)}.`));
      toast(`Key ${r.kid} published.`, 'ok');
      load();
    } catch (err) {
      if (err.status === 409) fill(result, h('p', { class: 'error' }, 'A rotation is already pending: ' + err.message));
      else showError(err, result);
    }
  });
  root.append(h('h1', {}, 'Signing keys'), card('Key set', h('div', { class: 'row' }, rotate), result, box));

  async function load() {
    try {
      const d = await admin('GET', '/keys');
      rotate.disabled = false;
      fill(box, 
        h('p', {}, `Propagation delay: ${d.propagation_delay_secs} s. Next transition: ${fmtTime(d.next_transition_at)}.`),
        timeline(d),
        h('ul', { class: 'legend' },
          h('li', {}, h('span', { class: 'swatch bar published', 'aria-hidden': 'true' }), 'published (verifies, does not sign yet)'),
          h('li', {}, h('span', { class: 'swatch bar active', 'aria-hidden': 'true' }), 'active (signs)'),
          h('li', {}, h('span', { class: 'swatch bar retiring', 'aria-hidden': 'true' }), 'retiring (verifies until it retires)')),
        table([
          { label: 'kid', get: (k) => h('code', {}, k.kid) },
          { label: 'alg', get: (k) => k.alg },
          { label: 'State', get: (k) => pill(k.state, STATE_KIND[k.state]) },
          { label: 'Source', get: (k) => k.source },
          { label: 'Created', get: (k) => fmtTime(k.created_at) },
          { label: 'Activates', get: (k) => fmtTime(k.activates_at) },
          { label: 'Retires', get: (k) => fmtTime(k.retires_at) },
        ], d.keys, { empty: 'No keys.', class: 'keys' }));
    } catch (err) {
      rotate.disabled = true;
      if (err.status === 404 || (err.status === 403 && !(await served('/admin/keys')))) {
        fill(box, h('p', { class: 'notice', id: 'keys-unavailable' },
          'This gateway has no key rotation API yet (GET /admin/keys is not served). ',
          'Keys are read from keys.dir; rotate them with the command line.'));
      } else {
        fill(box, h('p', { class: 'error' }, err.message));
      }
    }
  }
  load();
}
