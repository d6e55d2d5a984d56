// Explain: what the running gateway makes of one request, step by step
// (POST /admin/explain, permission admin.explain): routes and why the
// winner wins, credential and revocation, caller, bans, rate-limit
// counters (read, not consumed), mode, upstream and header changes, and
// the decision. A token or key typed here goes to the admin API only and
// is never shown back.

import { admin } from './api.js';
import { h, fill, card, field, table, showError, pill, list } from './ui.js';

function section(title, ...children) {
  return h('section', { class: 'explain-step' }, h('h3', {}, title), ...children);
}

function kv(rows) {
  return h('dl', { class: 'kv' }, rows.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function render(r) {
  const out = [];
  const q = r.request;
  out.push(section('Request', kv([
    ['Method', q.method], ['Host', q.host || '—'],
    ['Path', q.path + (q.query ? '?' + q.query : '')], ['Client', q.client_ip || '—'],
    r.malformed && ['Malformed', `${r.malformed.reason}: ${r.malformed.detail}`],
    r.surface !== 'proxy' && ['Surface', r.surface],
  ])));
  if (r.routes) {
    const rt = r.routes;
    out.push(section('Routes',
      rt.matches.length ? table([
        { label: '#', get: (m) => String(m.i + 1) },
        { label: 'Route', get: (m) => m.name === rt.decided_by ? h('strong', {}, m.name) : m.name },
        { label: 'Effect', get: (m) => pill(m.effect, m.effect === 'deny' ? 'denied' : 'allowed') },
      ], rt.matches.map((m, i) => ({ ...m, i })), { class: 'explain-routes' }) : h('p', {}, `No route matches: default ${rt.default || 'deny'}.`),
      h('ul', {}, rt.why.map((w) => h('li', {}, `${rt.decided_by} wins over ${w.over}: ${w.detail}`)))));
  }
  if (r.credentials) {
    const c = r.credentials;
    out.push(section('Credentials', kv([
      ['Sources', c.sources.map((s) => `${s.source}${s.present ? ' (present)' : ''}`).join(', ') || '—'],
      ['Outcome', `${c.outcome}${c.presented ? ' — ' + c.presented : ''}${c.code ? ': ' + c.code : ''}`],
      ['Revocation', c.revocation.replaceAll('_', ' ')],
      c.note && ['Note', c.note],
    ])));
  }
  if (r.principal) {
    const p = r.principal;
    out.push(section('Caller', kv([
      ['Subject', `${p.subject} (${p.auth_method})`], ['Roles', list(p.roles)],
      ['Permissions', list(p.effective_permissions)], p.tenant && ['Tenant', p.tenant],
    ])));
  }
  if (r.requirement) {
    const q2 = r.requirement;
    out.push(section(`Requirement of ${q2.route}`, kv([
      ['Credentials', list(q2.credentials)],
      q2.roles_any && ['Roles (any)', list(q2.roles_any)], q2.roles_all && ['Roles (all)', list(q2.roles_all)],
      q2.permissions_all && ['Permissions', list(q2.permissions_all)],
      q2.permissions_any && ['Permissions (any)', list(q2.permissions_any)],
      r.authorization && ['Checked', `${r.authorization.allowed ? 'granted' : 'NOT granted'} (${r.authorization.detail})`],
    ])));
  }
  if (r.bans.length) out.push(section('Bans', kv(r.bans.map((b) => [b.on, b.result.replaceAll('_', ' ')]))));
  out.push(section('Rate limits', r.rate_limits.length ? table([
    { label: 'Rule', get: (l) => l.rule },
    { label: 'Key', get: (l) => l.key ? h('code', {}, l.key) : 'does not apply' },
    { label: 'Left', get: (l) => l.remaining === null || l.remaining === undefined ? '—' : `${l.remaining} of ${l.limit}` },
    { label: '', get: (l) => l.limited ? pill('limited', 'limited') : '' },
  ], r.rate_limits, {}) : h('p', {}, 'None on this route.')));
  if (r.mode) out.push(section('Mode', h('p', {}, r.mode.replace('_', '-'))));
  if (r.upstream) {
    const u = r.upstream;
    out.push(section('Upstream',
      h('p', {}, u.name ? `${u.name} ${u.url || ''}` : (u.error || '—')),
      h('ul', { class: 'headers' },
        u.headers.added.map((x) => h('li', {}, `+ ${x.name}: ${x.value}`)),
        u.headers.replaced.map((x) => h('li', {}, `~ ${x.name}: ${x.value}`)),
        u.headers.removed.map((x) => h('li', {}, `- ${x}`)))));
  }
  const d = r.decision;
  let verdict;
  if (d.undetermined) verdict = h('p', { class: 'notice' }, `Undetermined: ${d.undetermined}`);
  else if (d.allow) verdict = h('p', {}, pill('allow', 'allowed'), ` ${d.reason || ''}`,
    d.dry_run_would_refuse ? ` — dry run: would refuse ${d.dry_run_would_refuse.status} ${d.dry_run_would_refuse.code}` : '');
  else verdict = h('p', {}, pill(`${d.status} ${d.code}`, 'denied'), ` ${d.reason || ''}: ${d.detail || ''}`);
  out.push(section('Decision', verdict));
  return h('div', { id: 'explain-report' }, out);
}

export function mount(root) {
  const method = h('select', { id: 'explain-method' },
    ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'].map((m) => h('option', { value: m }, m)));
  const target = h('input', { id: 'explain-target', required: true, spellcheck: 'false', placeholder: 'https://api.example.com/docs/1 or /docs/1' });
  const kind = h('select', { id: 'explain-kind' },
    h('option', { value: 'none' }, 'no credential'), h('option', { value: 'token' }, 'access token'),
    h('option', { value: 'api_key' }, 'API key'), h('option', { value: 'as' }, 'assumed caller'));
  const secret = h('input', { id: 'explain-secret', type: 'password', autocomplete: 'off', spellcheck: 'false' });
  const subject = h('input', { id: 'explain-subject', spellcheck: 'false' });
  const roles = h('input', { id: 'explain-roles', spellcheck: 'false', placeholder: 'editor, viewer' });
  const perms = h('input', { id: 'explain-permissions', spellcheck: 'false', placeholder: 'docs.read' });
  const ip = h('input', { id: 'explain-ip', spellcheck: 'false', placeholder: '192.0.2.1' });
  const result = h('div', { id: 'explain-result', role: 'status' });
  const split = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);
  const form = h('form', { id: 'explain-form', autocomplete: 'off' },
    field('Method', method), field('Path or URL', target), field('Credential', kind),
    field('Token or key', secret), field('Subject (assumed)', subject), field('Roles (assumed)', roles),
    field('Permissions (assumed)', perms), field('Client IP', ip),
    h('button', { type: 'submit', class: 'primary' }, 'Explain'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { method: method.value, target: target.value.trim() };
    if (kind.value === 'token') body.token = secret.value;
    if (kind.value === 'api_key') body.api_key = secret.value;
    if (kind.value === 'as') body.as = { subject: subject.value.trim() || undefined, roles: split(roles.value), permissions: split(perms.value) };
    if (ip.value.trim()) body.client_ip = ip.value.trim();
    try {
      fill(result, render(await admin('POST', '/explain', body)));
    } catch (err) {
      showError(err, result);
    }
  });
  root.append(h('h1', {}, 'Explain'),
    card('A request', h('p', { class: 'muted' }, 'What the running gateway decides for it, step by step; counters are read, not consumed.'), form),
    result);
}
