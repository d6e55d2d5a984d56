// Signing keys: the key set with each key's state, a rotation timeline,
// and rotation with one confirmation (GET /admin/keys, POST /admin/keys/rotate).

import { admin } from './api.js';
import { h, svg, clear, fill, card, table, fmtTime, toast, showError, confirmAction, pill } from './ui.js';

const STATE_KIND = { active: 'allowed', published: 'dryrun', retiring: 'limited' };

function timeline(data, width) {
  // A window around now wide enough for the propagation schedule: bars
  // that start earlier are clipped at the left edge (marked with an arrow).
  const now = Date.now() / 1000;
  const delay = Math.max(60, data.propagation_delay_secs || 0);
  const keys = data.keys;
  const lo = now - Math.max(3 * delay, 6 * 3600);
  let hi = now + Math.max(2 * delay, 3600);
  if (data.next_transition_at) hi = Math.max(hi, data.next_transition_at + delay);
  for (const k of keys) if (k.retires_at) hi = Math.max(hi, Math.min(k.retires_at + delay, now + 30 * delay));
  const W = Math.max(340, Math.round(width || 1000)), row = 28, top = 24, L = Math.min(170, Math.round(W * 0.3)), R = 20;
  const H = top + keys.length * row + 26;
  const clamp = (t) => Math.min(hi, Math.max(lo, t));
  const x = (t) => L + ((clamp(t) - lo) / (hi - lo)) * (W - L - R);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'timeline', role: 'img', 'aria-label': 'Rotation timeline' });
  root.append(svg('title', {}, 'Rotation timeline: each key published, active, then retiring'));
  const bar = (y, from, to, cls) => {
    if (to <= lo || from >= hi || to <= from) return;
    root.append(svg('rect', { x: x(from), y: y + 5, width: Math.max(2, x(to) - x(from)), height: 14, class: 'bar ' + cls }));
  };
  keys.forEach((k, i) => {
    const y = top + i * row;
    const act = k.activates_at ?? k.created_at;
    root.append(svg('text', { x: 4, y: y + 16, class: 'axis' }, k.kid.length > L / 8 ? k.kid.slice(0, Math.floor(L / 8) - 1) + '…' : k.kid));
    bar(y, k.created_at, act, 'published');
    if (k.state === 'retiring') {
      bar(y, act, Math.min(now, k.retires_at ?? now), 'active');
      bar(y, now, k.retires_at ?? hi, 'retiring');
    } else if (k.state === 'published') {
      bar(y, act, k.retires_at ?? hi, 'future');
    } else {
      bar(y, act, k.retires_at ?? hi, 'active');
    }
    if (Math.min(k.created_at, act) < lo) root.append(svg('text', { x: L - 14, y: y + 17, class: 'axis' }, '◀'));
  });
  root.append(svg('line', { x1: x(now), x2: x(now), y1: 14, y2: H - 18, class: 'now' }));
  root.append(svg('text', { x: x(now) - 12, y: 11, class: 'axis' }, 'now'));
  if (data.next_transition_at) {
    const t = data.next_transition_at;
    root.append(svg('line', { x1: x(t), x2: x(t), y1: 14, y2: H - 18, class: 'next' }));
    root.append(svg('text', { x: Math.min(x(t) + 4, W - 110), y: H - 4, class: 'axis' }, 'next transition'));
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
      // The detail already says which key is pending and when it activates.
      if (err.status === 409) fill(result, h('p', { class: 'error' }, err.detail || err.message));
      else showError(err, result);
    }
  });
  root.append(h('h1', {}, 'Signing keys'), card('Key set', h('div', { class: 'row' }, rotate), result, box));
  let drawTimeline = () => {};
  let resizeTimer = 0;
  const onResize = () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => drawTimeline(), 100); };
  window.addEventListener('resize', onResize);

  async function load() {
    try {
      const d = await admin('GET', '/keys');
      rotate.disabled = false;
      const timelineBox = h('div', { class: 'timeline-box' });
      const draw = () => fill(timelineBox, timeline(d, timelineBox.clientWidth));
      drawTimeline = draw;
      requestAnimationFrame(draw);
      fill(box, 
        h('p', {}, `Propagation delay: ${d.propagation_delay_secs} s. Next transition: ${fmtTime(d.next_transition_at)}.`),
        timelineBox,
        h('ul', { class: 'legend' },
          h('li', {}, h('span', { class: 'swatch bar published', 'aria-hidden': 'true' }), 'published (verifies, does not sign yet)'),
          h('li', {}, h('span', { class: 'swatch bar active', 'aria-hidden': 'true' }), 'active (signs)'),
          h('li', {}, h('span', { class: 'swatch bar future', 'aria-hidden': 'true' }), 'will sign from its activation'),
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
  return () => window.removeEventListener('resize', onResize);
}
