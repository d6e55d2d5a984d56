// Config: the running configuration (secrets redacted), its load time and
// the last reload's result.

import { call } from './api.js';
import { h, clear, fill, card, fmtTime, pill } from './ui.js';

function toml(value, path, out) {
  // Renders the JSON form of the TOML back as TOML-like text.
  const scalars = [];
  const tables = [];
  for (const [k, v] of Object.entries(value)) {
    if (v && typeof v === 'object' && !Array.isArray(v)) tables.push([k, v]);
    else if (Array.isArray(v) && v.length && v.every((x) => x && typeof x === 'object' && !Array.isArray(x))) tables.push([k, v]);
    else scalars.push([k, v]);
  }
  for (const [k, v] of scalars) out.push(`${k} = ${JSON.stringify(v)}`);
  for (const [k, v] of tables) {
    const p = path ? `${path}.${k}` : k;
    if (Array.isArray(v)) {
      for (const item of v) { out.push('', `[[${p}]]`); toml(item, p, out); }
    } else {
      const hasScalars = Object.values(v).some((x) => !(x && typeof x === 'object' && !Array.isArray(x))
        && !(Array.isArray(x) && x.length && x.every((y) => y && typeof y === 'object')));
      if (hasScalars) out.push('', `[${p}]`);
      toml(v, p, out);
    }
  }
  return out;
}

export function mount(root) {
  const box = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  root.append(h('h1', {}, 'Running configuration'), box);
  (async () => {
    try {
      const c = await call('GET', '/console/api/config');
      const last = c.last_reload;
      fill(box, 
        card('Status',
          h('dl', { class: 'facts' },
            h('dt', {}, 'file'), h('dd', {}, h('code', {}, c.file)),
            h('dt', {}, 'loaded at'), h('dd', { id: 'config-loaded-at' }, fmtTime(c.loaded_at)),
            h('dt', {}, 'last reload'), h('dd', { id: 'config-last-reload' }, last
              ? [pill(last.result, last.result === 'ok' ? 'allowed' : 'refused'), ' at ', fmtTime(last.at)]
              : 'none since start'),
            h('dt', {}, 'environment overrides'), h('dd', {}, (c.env_overrides || []).join(', ') || 'none')),
          last && (last.errors || last.warnings || []).length
            ? h('ul', { class: last.result === 'ok' ? 'warnings' : 'errors' }, (last.errors || last.warnings).map((l) => h('li', {}, l)))
            : null),
        card('Configuration',
          h('p', { class: 'muted' }, `As loaded from the file; secrets show as ${c.redacted}. Restart-only keys keep their running values after a reload (see the reload warnings).`),
          c.config ? h('pre', { class: 'config', tabindex: '0', id: 'config-text' }, toml(c.config, '', []).join('\n').trim())
            : h('p', { class: 'error' }, 'The file could not be read or parsed.')));
    } catch (err) {
      fill(box, h('p', { class: 'error' }, err.message));
    }
  })();
}
