// Audit: the query filters as a form, keyset paging, every field of an event.

import { admin, qs } from './api.js';
import { h, clear, fill, card, table, field, fmtUs, dialog, pill } from './ui.js';
import { classify } from './live.js';

function rfc3339(local) {
  if (!local) return undefined;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString().replace(/\.\d+Z$/, 'Z');
}

export function mount(root) {
  const f = {
    subject: h('input', { id: 'q-subject', spellcheck: 'false' }),
    ip: h('input', { id: 'q-ip', spellcheck: 'false' }),
    path_prefix: h('input', { id: 'q-path', placeholder: '/api/', spellcheck: 'false' }),
    since: h('input', { id: 'q-since', type: 'datetime-local', step: '1' }),
    until: h('input', { id: 'q-until', type: 'datetime-local', step: '1' }),
    status: h('input', { id: 'q-status', type: 'number', min: '100', max: '599' }),
    decision: h('select', { id: 'q-decision' }, h('option', { value: '' }, 'any'), h('option', { value: 'allow' }, 'allow'), h('option', { value: 'deny' }, 'deny')),
    code: h('input', { id: 'q-code', placeholder: 'auth.invalid_api_key', spellcheck: 'false' }),
    anomalies: h('input', { id: 'q-anomalies', type: 'checkbox' }),
    rate_limited: h('input', { id: 'q-rate', type: 'checkbox' }),
    limit: h('select', { id: 'q-limit' }, ['25', '50', '100', '250'].map((n) => h('option', { value: n, selected: n === '50' }, n))),
  };
  const form = h('form', { class: 'query-form', id: 'audit-form' },
    field('Subject', f.subject), field('Client IP', f.ip), field('Path prefix', f.path_prefix),
    field('Since', f.since), field('Until', f.until), field('Status', f.status),
    field('Decision', f.decision), field('Code', f.code), field('Per page', f.limit),
    h('label', { class: 'check' }, f.anomalies, ' anomalies only'),
    h('label', { class: 'check' }, f.rate_limited, ' rate-limited only'),
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Search'), h('button', { type: 'reset' }, 'Clear')));
  const results = h('div', { id: 'audit-results' });
  const pager = h('div', { class: 'row' });
  root.append(h('h1', {}, 'Audit log'), card('Query', form), card('Events', results, pager));

  let cursors = []; // cursor of each page shown so far (null: first)
  form.addEventListener('submit', (e) => { e.preventDefault(); cursors = [null]; load(); });

  function params(cursor) {
    return {
      subject: f.subject.value.trim(), ip: f.ip.value.trim(), path_prefix: f.path_prefix.value.trim(),
      since: rfc3339(f.since.value), until: rfc3339(f.until.value), status: f.status.value,
      decision: f.decision.value, code: f.code.value.trim(), anomalies: f.anomalies.checked,
      rate_limited: f.rate_limited.checked, limit: f.limit.value, cursor,
    };
  }

  async function load() {
    const cursor = cursors[cursors.length - 1];
    try {
      const r = await admin('GET', '/audit' + qs(params(cursor)));
      fill(results, table([
        { label: 'Time', get: (e) => fmtUs(e.ts_us) },
        { label: 'Kind', get: (e) => e.kind },
        { label: 'Request', get: (e) => `${e.method || ''} ${e.path || ''}`.trim() || '—' },
        { label: 'Subject or IP', get: (e) => e.subject || e.client_ip || '—' },
        { label: 'Decision', get: (e) => pill(e.decision, e.decision === 'deny' ? classify(e) : 'allowed') },
        { label: 'Code', get: (e) => e.code || '—' },
        { label: 'Status', class: 'num', get: (e) => e.status ?? '—' },
      ], r.events, { empty: 'No events match.', onRow: show, class: 'audit' }));
      fill(pager, 
        h('span', { class: 'muted' }, `Page ${cursors.length}`),
        cursors.length > 1 ? h('button', { type: 'button', onclick: () => { cursors.pop(); load(); } }, 'Previous page') : null,
        r.next ? h('button', { type: 'button', id: 'audit-next', onclick: () => { cursors.push(r.next); load(); } }, 'Next page') : null);
    } catch (err) {
      fill(results, h('p', { class: 'error' }, err.message));
    }
  }

  function show(e) {
    const dl = h('dl', { class: 'facts event' }, Object.entries(e).flatMap(([k, v]) => [
      h('dt', {}, k),
      h('dd', {}, v === null || v === undefined ? '—' : (typeof v === 'object' ? JSON.stringify(v) : String(v))),
    ]));
    if (e.ts_us) dl.prepend(h('dt', {}, 'time'), h('dd', {}, fmtUs(e.ts_us) + ' UTC'));
    dialog(`Event ${e.id}`, dl, [{ label: 'Close', value: 'close' }]);
  }

  cursors = [null];
  load();
}
