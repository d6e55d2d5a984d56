// Small DOM helpers: elements are built with createElement and text nodes
// (never parsed as HTML), so nothing the gateway recorded can become markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

const SVG = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

/** Replaces the children of `el` (null / false children are left out). */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

export function fmtTime(unixSecs) {
  if (unixSecs === null || unixSecs === undefined) return '—';
  return new Date(unixSecs * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
export function fmtUs(us) {
  return new Date(Math.floor(us / 1000)).toISOString().replace('T', ' ').replace('Z', '');
}
export function fmtMs(ms) { return fmtTime(Math.floor(ms / 1000)); }

let toastTimer = 0;
export function toast(text, kind) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.className = 'toast show ' + (kind || '');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = 'toast'; }, 5000);
}

/** Shows `err` in `el` (or as a toast). */
export function showError(err, el) {
  const text = err && err.message ? err.message : String(err);
  if (el) { el.textContent = text; el.hidden = false; } else toast(text, 'bad');
}

/** A modal dialog; resolves with the value of the button pressed. */
export function dialog(title, body, buttons) {
  const dlg = document.getElementById('dialog');
  document.getElementById('dialog-title').textContent = title;
  clear(document.getElementById('dialog-body')).append(...[body].flat().filter(Boolean));
  const actions = clear(document.getElementById('dialog-actions'));
  for (const b of buttons) {
    actions.append(h('button', { value: b.value, class: b.class || '', type: 'submit' }, b.label));
  }
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue), { once: true });
    dlg.returnValue = '';
    dlg.showModal();
  });
}

export async function confirmAction(title, text, label) {
  const v = await dialog(title, h('p', {}, text), [
    { label: 'Cancel', value: 'cancel' },
    { label: label || 'Confirm', value: 'ok', class: 'danger' },
  ]);
  return v === 'ok';
}

/** A secret shown once, with a copy button. */
export function secretBox(label, secret) {
  const code = h('code', { class: 'secret', 'data-secret': '' }, secret);
  const status = h('span', { class: 'muted', role: 'status' });
  const copy = h('button', {
    type: 'button',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        status.textContent = 'Copied.';
      } catch {
        const range = document.createRange();
        range.selectNodeContents(code);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        status.textContent = 'Selected: press Ctrl+C to copy.';
      }
    },
  }, 'Copy');
  return h('div', { class: 'once' },
    h('p', {}, h('strong', {}, label), ' — shown once; it cannot be shown again.'),
    h('div', { class: 'row' }, code, copy, status));
}

/** A table of `rows`; `cols` = [{label, get(row) -> node|text, class?}]. */
export function table(cols, rows, opts) {
  const o = opts || {};
  const thead = h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col', class: c.class }, c.label))));
  const tbody = h('tbody', {});
  if (!rows.length) {
    tbody.append(h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, o.empty || 'Nothing to show.')));
  }
  for (const r of rows) {
    const tr = h('tr', {}, cols.map((c) => h('td', { class: c.class, 'data-label': c.label }, c.get(r))));
    if (o.onRow) {
      tr.tabIndex = 0;
      tr.classList.add('clickable');
      tr.addEventListener('click', () => o.onRow(r));
      tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); o.onRow(r); } });
    }
    tbody.append(tr);
  }
  return h('div', { class: 'table-wrap' }, h('table', { class: o.class || '' }, o.caption ? h('caption', {}, o.caption) : null, thead, tbody));
}

export function card(title, ...children) {
  const id = 'c-' + title.toLowerCase().replace(/[^a-z0-9]+/g, '-');
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), ...children);
}

export function field(label, input) {
  const id = input.id || ('f-' + Math.random().toString(36).slice(2, 9));
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input);
}

/** A pill for a decision / state. */
export function pill(text, kind) { return h('span', { class: 'pill ' + (kind || '') }, text); }

export function list(items) { return (items || []).join(', ') || '—'; }
