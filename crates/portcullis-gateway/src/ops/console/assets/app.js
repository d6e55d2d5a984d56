// The console's shell: sign-in, the hash router, the shared stream.

import { call, setCsrf, whenSignedOut } from './api.js';
import { clear, toast } from './ui.js';
import * as live from './live.js';
import * as threats from './threats.js';
import * as people from './people.js';
import * as keys from './keys.js';
import * as audit from './audit.js';
import * as config from './config.js';
import * as explain from './explain.js';

const PAGES = { live, threats, people, keys, audit, explain, config };
const TITLES = { live: 'Live', threats: 'Threats', people: 'Users & keys', keys: 'Signing keys', audit: 'Audit', explain: 'Explain', config: 'Config' };

let session = null;
let unmount = null;

const $ = (id) => document.getElementById(id);

function showSignIn(message) {
  session = null;
  setCsrf('');
  live.stopStream();
  if (unmount) { unmount(); unmount = null; }
  clear($('page'));
  $('nav').hidden = true;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message || '';
  document.title = 'Sign in — Portcullis console';
  $('admin-key').focus();
}

function signedIn(s) {
  session = s;
  setCsrf(s.csrf_token);
  $('sign-in').hidden = true;
  $('admin-key').value = '';
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  $('who').textContent = `${s.owner} (${s.key_id})`;
  live.startStream();
  route();
}

function route() {
  if (!session) return;
  const name = (location.hash.match(/^#\/([a-z]+)/) || [])[1] || 'live';
  const page = PAGES[name] ? name : 'live';
  if (unmount) { unmount(); unmount = null; }
  const root = clear($('page'));
  root.dataset.page = page;
  for (const a of $('nav').querySelectorAll('a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${TITLES[page]} — Portcullis console`;
  const r = PAGES[page].mount(root, { session });
  unmount = typeof r === 'function' ? r : null;
  $('main').focus({ preventScroll: true });
}

async function start() {
  whenSignedOut(() => { if (session) showSignIn('Your console session ended: sign in again.'); });
  $('sign-in-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    $('sign-in-error').textContent = '';
    try {
      const s = await call('POST', '/console/session', { key: $('admin-key').value.trim() });
      signedIn(s);
    } catch (err) {
      $('sign-in-error').textContent = err.status === 401 ? 'That is not a valid admin API key.' : err.message;
    }
  });
  $('sign-out').addEventListener('click', async () => {
    try { await call('DELETE', '/console/session'); } catch { /* signed out either way */ }
    showSignIn('Signed out.');
    toast('Signed out.');
  });
  window.addEventListener('hashchange', route);
  try {
    signedIn(await call('GET', '/console/api/session'));
  } catch {
    showSignIn('');
  }
}

start();
