// The console's shell: sign-in, navigation, the router (URL hash, so every page has a link and the server
// serves one file), and the one event stream every page listens to for live changes.

import { api, get, session, ApiError } from './api.js';
import { h, errorBox, field, announce } from './dom.js';
import { pages } from './pages.js';

const main = document.getElementById('main');
let me = null; // whoami, with `canWrite` and `isOperator`
let leavePage = null;
let signedOutReason = null; // why the last session ended, shown on the sign-in page until the next one

// One EventSource for the whole session; pages subscribe with `events.on`. The browser reconnects by
// itself after a drop, resuming from the last event id it saw.
const events = {
  source: null,
  listeners: new Set(),
  start() {
    this.stop();
    this.source = new EventSource('/v1/events');
    for (const kind of ['instance.created', 'instance.updated', 'instance.deleted', 'operation.created', 'operation.updated']) {
      this.source.addEventListener(kind, (e) => {
        let event;
        try { event = JSON.parse(e.data); } catch { return; }
        for (const l of this.listeners) l(event);
      });
    }
    this.source.onerror = () => {
      // A stream that fails may mean the session ended (key revoked): ask once, which signs out on a 401.
      if (this.source && this.source.readyState === EventSource.CLOSED) get('/v1/whoami').catch(() => {});
    };
  },
  stop() {
    if (this.source) this.source.close();
    this.source = null;
  },
  on(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  },
};

const sections = [
  ['instances', 'Instances'],
  ['create', 'Create instance'],
  ['snapshots', 'Snapshots'],
  ['volumes', 'Volumes'],
  ['ssh-keys', 'SSH keys'],
  ['api-keys', 'API keys'],
  ['groups', 'Groups'],
  ['quotas', 'Quotas'],
  ['events', 'Event log'],
];
const operatorSections = [['hosts', 'Hosts'], ['projects', 'Projects']];

function renderNav() {
  const nav = document.getElementById('nav');
  const visible = sections.filter(([id]) => id !== 'create' || me.canWrite)
    .concat(me.isOperator ? operatorSections : []);
  nav.replaceChildren(...visible.map(([id, label]) =>
    h('li', {}, h('a', { href: `#/${id}`, 'data-section': id, text: label }))));
  document.getElementById('who').textContent = `${me.project.name} · ${me.role}`;
  document.getElementById('top').hidden = false;
}

function markCurrent(section) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function route() {
  if (leavePage) { leavePage(); leavePage = null; }
  if (!me) return signInPage(signedOutReason);
  const [path, query] = (location.hash.replace(/^#\/?/, '') || 'instances').split('?');
  const parts = path.split('/').filter(Boolean);
  let name = parts[0] || 'instances';
  if (name === 'instances' && parts[1]) name = 'instance';
  const page = pages[name];
  markCurrent(parts[0]);
  main.replaceChildren();
  if (!page) {
    main.append(h('h1', { text: 'Not found' }), errorBox(`There is no page "${path}" in the console.`));
    return;
  }
  try {
    const ctx = { me, events, params: new URLSearchParams(query || ''), id: parts[1] };
    leavePage = (await page(main, ctx)) || null;
  } catch (e) {
    // The session ended while the page loaded: the sign-in page, with why, is already there.
    if (!me) return;
    // Whatever went wrong, the user reads it: never a blank page.
    main.replaceChildren(h('h1', { text: 'Something went wrong' }), errorBox(e));
  }
  const heading = main.querySelector('h1');
  document.title = heading ? `${heading.textContent} · Nimbus` : 'Nimbus';
  main.focus({ preventScroll: true });
}

function signInPage(message) {
  document.getElementById('top').hidden = true;
  document.title = 'Sign in · Nimbus';
  const slot = h('div');
  if (message) slot.append(errorBox(message));
  const key = h('input', { type: 'password', name: 'api_key', autocomplete: 'current-password', spellcheck: false });
  const username = h('input', { type: 'text', name: 'username', autocomplete: 'username' });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password' });
  const submit = async (body, e) => {
    e.preventDefault();
    slot.replaceChildren(h('p', { role: 'status', text: 'Signing in…' }));
    try {
      await api('POST', '/ui/session', body);
      await start();
    } catch (err) {
      slot.replaceChildren(errorBox(err));
    }
  };
  main.replaceChildren(h('section', { class: 'sign-in' },
    h('h1', { text: 'Sign in to Nimbus' }),
    slot,
    h('form', { onsubmit: (e) => submit({ api_key: key.value }, e), 'aria-labelledby': 'with-key' },
      h('h2', { id: 'with-key', text: 'With an API key' }),
      field('API key secret', key, 'The secret printed when the key was made (NIMBUS_TOKEN).'),
      h('button', { type: 'submit', text: 'Sign in' })),
    h('form', { onsubmit: (e) => submit({ username: username.value, password: password.value }, e), 'aria-labelledby': 'with-password' },
      h('h2', { id: 'with-password', text: 'With a username and password' }),
      field('Username', username),
      field('Password', password),
      h('button', { type: 'submit', text: 'Sign in' }))));
  key.focus();
}

async function start() {
  const who = await get('/v1/whoami');
  signedOutReason = null;
  me = { ...who, canWrite: who.role !== 'read-only', isOperator: who.role === 'operator' };
  renderNav();
  events.start();
  if (!location.hash || location.hash === '#/sign-in') location.hash = '#/instances';
  else await route();
}

function signedOut(error) {
  if (!me) return;
  me = null;
  events.stop();
  if (leavePage) { leavePage(); leavePage = null; }
  signedOutReason = error ? `Signed out: ${error.message}` : null;
  signInPage(signedOutReason);
  announce('Signed out');
}

session.onSignedOut = signedOut;

document.getElementById('sign-out').addEventListener('click', async () => {
  try {
    await api('DELETE', '/ui/session');
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
  }
  me = null;
  events.stop();
  if (leavePage) { leavePage(); leavePage = null; }
  signInPage();
  announce('Signed out');
});

window.addEventListener('hashchange', () => route());

// A session cookie may already be there (a reload, a second tab): try it before asking to sign in.
start().catch((e) => signInPage(e instanceof ApiError && e.status === 401 ? null : e.message));
