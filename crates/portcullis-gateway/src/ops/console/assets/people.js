// Users, their sessions and API keys, and app credentials: search,
// disable / enable, revoke, create a key (shown once), rotate a secret.

import { admin, qs } from './api.js';
import { h, clear, fill, card, table, field, fmtTime, toast, showError, confirmAction, secretBox, pill, list } from './ui.js';

const splitList = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

export function mount(root) {
  const search = h('input', { type: 'search', id: 'user-search', placeholder: 'username prefix' });
  const results = h('div', { id: 'user-results' });
  const detail = h('div', { id: 'user-detail' });
  const searchForm = h('form', { class: 'inline-form', id: 'user-search-form' },
    field('Search users', search), h('button', { type: 'submit' }, 'Search'));
  let after = null;
  searchForm.addEventListener('submit', (e) => { e.preventDefault(); after = null; loadUsers(); });

  const owner = h('input', { id: 'owner-id', placeholder: 'user id or admin:<name>', spellcheck: 'false' });
  const ownerForm = h('form', { class: 'inline-form', id: 'owner-form' },
    field('API keys of owner', owner), h('button', { type: 'submit' }, 'Show'));
  const ownerBox = h('div', { id: 'owner-keys' });
  ownerForm.addEventListener('submit', (e) => { e.preventDefault(); if (owner.value.trim()) showKeys(ownerBox, owner.value.trim()); });

  const appId = h('input', { id: 'app-id', placeholder: 'app id', spellcheck: 'false' });
  const appForm = h('form', { class: 'inline-form', id: 'app-form' }, field('App id', appId), h('button', { type: 'submit' }, 'Show'));
  const appBox = h('div', { id: 'app-detail' });
  appForm.addEventListener('submit', (e) => { e.preventDefault(); if (appId.value.trim()) showApp(appBox, appId.value.trim()); });
  const appName = h('input', { id: 'new-app-name', required: true });
  const appPerms = h('input', { id: 'new-app-perms', placeholder: 'invoices.read, …' });
  const newApp = h('form', { class: 'inline-form', id: 'new-app-form' },
    field('New app name', appName), field('Permissions', appPerms), h('button', { type: 'submit', class: 'primary' }, 'Create app'));
  newApp.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const r = await admin('POST', '/apps', { name: appName.value.trim(), permissions: splitList(appPerms.value) });
      appName.value = '';
      appId.value = r.app.app_id;
      await showApp(appBox, r.app.app_id);
      appBox.prepend(h('div', { id: 'new-app-secret', 'data-app-id': r.app.app_id }, secretBox(`Secret of app ${r.app.app_id}`, r.secret)));
    } catch (err) { showError(err); }
  });

  root.append(
    h('h1', {}, 'Users, sessions, API keys and apps'),
    card('Users', searchForm, results, detail),
    card('API keys by owner', h('p', { class: 'muted' }, 'Admin keys belong to owners named admin:<name>.'), ownerForm, ownerBox),
    card('Apps', appForm, newApp, appBox));

  async function loadUsers() {
    try {
      const r = await admin('GET', '/users' + qs({ search: search.value.trim(), after, limit: 50 }));
      const next = r.next;
      fill(results, table([
        { label: 'Username', get: (u) => h('button', { type: 'button', class: 'link', onclick: () => showUser(u.id) }, u.username) },
        { label: 'Roles', get: (u) => list(u.roles) },
        { label: 'State', get: (u) => (u.disabled ? pill('disabled', 'refused') : pill('active', 'allowed')) },
        { label: 'Created', get: (u) => fmtTime(u.created_at) },
      ], r.users, { empty: 'No users match.' }),
      next ? h('button', { type: 'button', onclick: () => { after = next; loadUsers(); } }, 'Next page') : null);
    } catch (err) { fill(results, h('p', { class: 'error' }, err.message)); }
  }

  async function showUser(id) {
    fill(detail, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const u = await admin('GET', '/users/' + encodeURIComponent(id));
      const sessions = h('div', {});
      const keys = h('div', {});
      const toggle = h('button', {
        type: 'button', class: u.disabled ? 'primary' : 'danger', id: 'user-toggle',
        onclick: async () => {
          const verb = u.disabled ? 'enable' : 'disable';
          if (!u.disabled && !(await confirmAction('Disable user', `Disable ${u.username}? Every session is revoked at once.`, 'Disable'))) return;
          try { await admin('POST', `/users/${encodeURIComponent(id)}/${verb}`); toast(`${u.username}: ${verb}d.`, 'ok'); showUser(id); loadUsers(); } catch (err) { showError(err); }
        },
      }, u.disabled ? 'Enable' : 'Disable');
      fill(detail, h('div', { class: 'detail' },
        h('h3', {}, u.username, ' ', u.disabled ? pill('disabled', 'refused') : pill('active', 'allowed')),
        h('dl', { class: 'facts' },
          h('dt', {}, 'id'), h('dd', {}, h('code', {}, u.id)),
          h('dt', {}, 'roles'), h('dd', {}, list(u.roles)),
          h('dt', {}, 'permissions'), h('dd', {}, list(u.permissions)),
          h('dt', {}, 'tenant'), h('dd', {}, u.tenant || '—'),
          h('dt', {}, 'updated'), h('dd', {}, fmtTime(u.updated_at))),
        h('div', { class: 'row' }, toggle),
        h('h4', {}, 'Sessions'), sessions,
        h('h4', {}, 'API keys'), keys));
      showSessions(sessions, id);
      showKeys(keys, id);
    } catch (err) { fill(detail, h('p', { class: 'error' }, err.message)); }
  }

  async function showSessions(box, userId) {
    try {
      const r = await admin('GET', `/users/${encodeURIComponent(userId)}/sessions`);
      const live = r.sessions.filter((s) => !s.revoked_at);
      fill(box, table([
        { label: 'Session', get: (s) => h('code', {}, s.id) },
        { label: 'Client', get: (s) => `${s.client_ip || '—'} ${s.user_agent ? '· ' + s.user_agent.slice(0, 40) : ''}` },
        { label: 'Last seen', get: (s) => fmtTime(s.last_seen_at) },
        { label: 'State', get: (s) => (s.revoked_at ? pill('revoked', 'refused') : pill('live', 'allowed')) },
        { label: 'Action', get: (s) => (s.revoked_at ? '—' : h('button', { type: 'button', 'data-revoke-session': s.id, onclick: async () => {
          try { await admin('DELETE', '/sessions/' + encodeURIComponent(s.id)); toast('Session revoked.', 'ok'); showSessions(box, userId); } catch (err) { showError(err); }
        } }, 'Revoke')) },
      ], r.sessions, { empty: 'No sessions.', class: 'sessions' }),
      live.length ? h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!(await confirmAction('Revoke all sessions', 'Revoke every session and refresh token of this user?', 'Revoke all'))) return;
        try { const c = await admin('DELETE', `/users/${encodeURIComponent(userId)}/sessions`); toast(`Revoked ${c.sessions} sessions.`, 'ok'); showSessions(box, userId); } catch (err) { showError(err); }
      } }, 'Revoke all sessions') : null);
    } catch (err) { fill(box, h('p', { class: 'error' }, err.message)); }
  }

  async function showKeys(box, ownerId) {
    const name = h('input', { id: 'new-key-name', required: true, placeholder: 'ci' });
    const perms = h('input', { id: 'new-key-perms', placeholder: 'deploy, docs.read' });
    const days = h('input', { id: 'new-key-days', type: 'number', min: '1', max: '3650', placeholder: 'never' });
    const created = h('div', { id: 'new-key-shown' });
    const form = h('form', { class: 'inline-form', id: 'new-key-form' },
      field('New key name', name), field('Permissions', perms), field('Expires in days', days),
      h('button', { type: 'submit', class: 'primary' }, 'Create key'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const body = { name: name.value.trim(), permissions: splitList(perms.value) };
        if (days.value) body.expires_in = Math.round(Number(days.value) * 86400);
        const r = await admin('POST', `/users/${encodeURIComponent(ownerId)}/api-keys`, body);
        await render();
        created.dataset.keyId = r.api_key.id;
        fill(created, secretBox(`API key ${r.api_key.id}`, r.key));
      } catch (err) { showError(err); }
    });
    const listBox = h('div', {});
    fill(box, listBox, form, created);
    async function render() {
      try {
        const r = await admin('GET', `/users/${encodeURIComponent(ownerId)}/api-keys`);
        fill(listBox, table([
          { label: 'Key id', get: (k) => h('code', {}, k.id) },
          { label: 'Name', get: (k) => k.name },
          { label: 'Permissions', get: (k) => list(k.permissions) },
          { label: 'Last used', get: (k) => fmtTime(k.last_used_at) },
          { label: 'Expires', get: (k) => fmtTime(k.expires_at) },
          { label: 'State', get: (k) => (k.revoked_at ? pill('revoked', 'refused') : pill('active', 'allowed')) },
          { label: 'Action', get: (k) => (k.revoked_at ? '—' : h('button', { type: 'button', 'data-revoke-key': k.id, onclick: async () => {
            if (!(await confirmAction('Revoke API key', `Revoke key ${k.id} (${k.name})?`, 'Revoke'))) return;
            try { await admin('DELETE', '/api-keys/' + encodeURIComponent(k.id)); toast(`Key ${k.id} revoked.`, 'ok'); render(); } catch (err) { showError(err); }
          } }, 'Revoke')) },
        ], r.api_keys, { empty: 'No API keys.', class: 'api-keys' }));
      } catch (err) { fill(listBox, h('p', { class: 'error' }, err.message)); }
    }
    await render();
  }

  async function showApp(box, id) {
    try {
      const a = await admin('GET', '/apps/' + encodeURIComponent(id));
      const grace = h('input', { id: 'rotate-grace', type: 'number', min: '0', max: '604800', value: '3600' });
      const shown = h('div', { id: 'rotated-secret' });
      const rotate = h('form', { class: 'inline-form', id: 'rotate-app-form' }, field('Old secret works for (s)', grace),
        h('button', { type: 'submit', class: 'danger' }, 'Rotate secret'));
      rotate.addEventListener('submit', async (e) => {
        e.preventDefault();
        if (!(await confirmAction('Rotate app secret', `Rotate the secret of ${a.name}? The old one keeps working for ${grace.value} s.`, 'Rotate'))) return;
        try {
          const r = await admin('POST', `/apps/${encodeURIComponent(id)}/rotate`, { grace_seconds: Number(grace.value) || 0 });
          fill(shown, secretBox(`New secret of app ${id}`, r.secret));
        } catch (err) { showError(err); }
      });
      const verb = a.disabled ? 'enable' : 'disable';
      fill(box, h('div', { class: 'detail' },
        h('h3', {}, a.name || id, ' ', a.disabled ? pill('disabled', 'refused') : pill('active', 'allowed')),
        h('dl', { class: 'facts' }, Object.entries(a).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, Array.isArray(v) ? list(v) : (v === null ? '—' : String(v)))])),
        h('div', { class: 'row' }, h('button', { type: 'button', onclick: async () => {
          try { await admin('POST', `/apps/${encodeURIComponent(id)}/${verb}`); toast(`App ${verb}d.`, 'ok'); showApp(box, id); } catch (err) { showError(err); }
        } }, a.disabled ? 'Enable' : 'Disable')),
        rotate, shown));
    } catch (err) { fill(box, h('p', { class: 'error' }, err.message)); }
  }

  loadUsers();
}
