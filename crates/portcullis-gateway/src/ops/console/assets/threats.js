// Threats: anomaly detections, bans (add / lift), the webhooks' last
// deliveries, and who is refused most, from the audit log's recent refusals
// and the live stream.

import { admin, qs } from './api.js';
import { h, clear, fill, card, table, field, fmtMs, fmtUs, toast, showError, confirmAction } from './ui.js';
import { recentEvents, isAdminCall, classify } from './live.js';

function top(events, key, n) {
  const m = new Map();
  for (const e of events) {
    const k = key(e);
    if (!k) continue;
    m.set(k, (m.get(k) || 0) + 1);
  }
  return [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n || 10);
}

function topTable(title, rows, what) {
  return h('div', { class: 'top-list' }, h('h3', {}, title), table([
    { label: what, get: (r) => r[0] },
    { label: 'Count', class: 'num', get: (r) => r[1] },
  ], rows, { empty: 'None.' }));
}

export function mount(root) {
  const anomalies = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const deliveries = h('div', { id: 'deliveries' }, h('p', { class: 'muted' }, 'Loading…'));
  const bans = h('div', { id: 'bans' }, h('p', { class: 'muted' }, 'Loading…'));
  const tops = h('div', { class: 'tops' }, h('p', { class: 'muted' }, 'Loading…'));
  const banError = h('p', { class: 'error', role: 'alert' });

  const kind = h('select', { id: 'ban-kind' }, h('option', { value: 'ip' }, 'IP address'), h('option', { value: 'subject' }, 'Subject'));
  const target = h('input', { id: 'ban-target', required: true, placeholder: '203.0.113.7', spellcheck: 'false' });
  const minutes = h('input', { id: 'ban-minutes', type: 'number', min: '1', max: '525600', value: '60', required: true });
  const reason = h('input', { id: 'ban-reason', maxlength: '200', placeholder: 'manual' });
  const form = h('form', { class: 'inline-form', id: 'ban-form' },
    field('Ban', kind), field('Target', target), field('Minutes', minutes), field('Reason', reason),
    h('button', { type: 'submit', class: 'danger' }, 'Ban'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    banError.textContent = '';
    try {
      await admin('POST', '/bans', {
        target: `${kind.value}:${target.value.trim()}`,
        duration_seconds: Math.max(1, Math.round(Number(minutes.value) * 60)),
        reason: reason.value.trim() || undefined,
      });
      toast(`Banned ${kind.value}:${target.value.trim()}.`, 'ok');
      target.value = '';
      loadBans();
    } catch (err) { showError(err, banError); }
  });

  root.append(
    h('h1', {}, 'Threats'),
    card('Bans', form, banError, bans),
    card('Anomalies', h('p', { class: 'muted' }, "This replica's latest detections, newest first."), anomalies),
    card('Webhook deliveries', h('p', { class: 'muted' }, "This replica's last alert and security-event deliveries, newest first."), deliveries),
    card('Most refused', h('p', { class: 'muted', id: 'tops-source' }, 'From the latest refusals in the audit log and the live stream.'), tops));

  async function loadBans() {
    try {
      const r = await admin('GET', '/bans');
      fill(bans, table([
        { label: 'Target', get: (b) => b.target },
        { label: 'Until', get: (b) => fmtMs(b.until_ms) },
        { label: 'Reason', get: (b) => b.reason || '—' },
        { label: 'Action', get: (b) => h('button', {
          type: 'button', 'data-lift': b.target, 'aria-label': `Lift the ban on ${b.target}`,
          onclick: async () => {
            if (!(await confirmAction('Lift ban', `Lift the ban on ${b.target}?`, 'Lift'))) return;
            try {
              await admin('DELETE', '/bans/' + encodeURIComponent(b.target));
              toast(`Lifted the ban on ${b.target}.`, 'ok');
              loadBans();
            } catch (err) { showError(err); }
          },
        }, 'Lift') },
      ], r.bans, { empty: 'No active bans.', class: 'bans' }));
    } catch (err) { fill(bans, h('p', { class: 'error' }, err.message)); }
  }

  async function loadAnomalies() {
    try {
      const r = await admin('GET', '/anomalies');
      fill(anomalies, table([
        { label: 'Detector', get: (d) => String(d.detector) },
        { label: 'Key', get: (d) => d.key },
        { label: 'Count', class: 'num', get: (d) => d.count },
        { label: 'Window', get: (d) => `${d.window_secs} s` },
        { label: 'Last seen', get: (d) => fmtMs(d.last_seen_ms) },
        { label: 'Action', get: (d) => {
          const m = /^(ip|subject|account):(.+)$/.exec(d.key || '');
          if (!m || m[1] === 'account') return '—';
          return h('button', { type: 'button', onclick: () => { kind.value = m[1]; target.value = m[2]; target.focus(); } }, 'Ban…');
        } },
      ], r.detections || [], { empty: 'No anomalies detected.' }));
      if (r.deliveries == null) {
        fill(deliveries, h('p', { class: 'muted' }, 'No webhook is configured ([[anomaly.webhooks]]).'));
      } else {
        fill(deliveries, table([
          { label: 'When', get: (d) => fmtMs(d.at_ms) },
          { label: 'Webhook', get: (d) => d.url },
          { label: 'What', get: (d) => d.what },
          { label: 'Outcome', get: (d) => d.outcome },
          { label: 'Attempts', class: 'num', get: (d) => d.attempts },
        ], r.deliveries, { empty: 'Nothing delivered yet.', class: 'deliveries' }));
      }
    } catch (err) { fill(anomalies, h('p', { class: 'error' }, err.message)); }
  }

  async function loadTops() {
    let events = [];
    let source = 'the live stream only';
    try {
      const r = await admin('GET', '/audit' + qs({ decision: 'deny', limit: 500 }));
      events = r.events || [];
      source = `the latest ${events.length} refusals in the audit log`;
    } catch (err) {
      source = `the live stream only (audit log: ${err.message})`;
    }
    const seen = new Set(events.map((e) => e.id));
    for (const e of recentEvents()) if (e.decision === 'deny' && !seen.has(e.id)) events.push(e);
    // Dry-run refusals were not enforced: they are not counted here.
    events = events.filter((e) => !isAdminCall(e) && classify(e) !== 'dryrun');
    const failures = events.filter((e) => e.kind === 'login.failed' || (e.code && e.code.startsWith('auth.')));
    document.getElementById('tops-source').textContent = `From ${source}.`;
    fill(tops, 
      topTable('IPs', top(events, (e) => e.client_ip), 'IP'),
      topTable('Subjects', top(events, (e) => e.subject), 'Subject'),
      topTable('Routes', top(events, (e) => e.route || e.path), 'Route'),
      topTable('Auth failures by account', top(failures, (e) => e.subject || e.credential_id || (e.client_ip ? 'ip:' + e.client_ip : null)), 'Account'));
    if (events.length) {
      tops.append(h('p', { class: 'muted' }, `Oldest refusal counted: ${fmtUs(Math.min(...events.map((e) => e.ts_us)))}`));
    }
  }

  loadBans();
  loadAnomalies();
  loadTops();
  const t = setInterval(() => { loadBans(); loadAnomalies(); }, 15000);
  return () => clearInterval(t);
}
