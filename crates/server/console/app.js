// The console's shell: sign-in, the header and navigation, and a router on
// hash routes (#/keys, #/keys/<id>, #/users, #/usage, #/audit). Each page
// is a module with `render(main, ctx)`; ctx.can(scope) says what the
// credential may do (from GET /v1/whoami), so pages show only that.

import { ApiError, api, session } from './api.js';
import { alertBox, busy, field, fill, h } from './ui.js';
import * as keys from './pages/keys.js';
import * as key from './pages/key.js';
import * as users from './pages/users.js';
import * as usage from './pages/usage.js';
import * as audit from './pages/audit.js';

const root = document.getElementById('app');

const ROUTES = [
  { path: /^#\/keys$/, page: keys, nav: 'keys' },
  { path: /^#\/keys\/(key_[0-9A-Za-z]+)$/, page: key, nav: 'keys' },
  { path: /^#\/users$/, page: users, nav: 'users' },
  { path: /^#\/usage$/, page: usage, nav: 'usage' },
  { path: /^#\/audit$/, page: audit, nav: 'audit' },
];
const NAV = [['keys', 'API keys'], ['users', 'Users'], ['usage', 'Usage'], ['audit', 'Audit']];

let ctx = null; // {me, can(scope)} once signed in
let leave = null; // the current page's clean-up (charts)

function signOut() {
  session.clear();
  ctx = null;
  history.replaceState(null, '', '#/');
  showSignIn();
}

/** Step 1: the credential. The operator token goes on to step 2. */
function showSignIn(error) {
  document.title = 'Sign in · keyledger';
  const input = h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  const alert = alertBox();
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'card signin', novalidate: true },
    h('h1', { tabindex: -1 }, 'Sign in to keyledger'),
    h('p', { class: 'muted' }, 'Paste an API key, or the operator token. It is kept in this tab only and cleared when you sign out or close it.'),
    field('API key or operator token', input), alert, h('div', { class: 'actions' }, button));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const credential = input.value.trim();
    if (!credential) return alert.show(new Error('Paste a key or the operator token first.'));
    busy(button, alert, async () => {
      session.try({ credential });
      try {
        await start();
      } catch (e) {
        if (e instanceof ApiError && e.code === 'tenant_required') return showTenant();
        session.try(null);
        throw e;
      }
    });
  });
  fill(root, h('main', { id: 'main' }, form));
  if (error) alert.show(error);
  input.focus();
}

/** Step 2, for the operator token: the tenant and, optionally, a user. */
function showTenant() {
  document.title = 'Choose a tenant · keyledger';
  const s = session.get();
  const credential = s.credential;
  const tenant = h('input', { type: 'text', autocomplete: 'off', value: s?.tenant || '', required: true });
  const actAs = h('input', { type: 'text', autocomplete: 'off', value: s?.actAs || '' });
  const alert = alertBox();
  const button = h('button', { type: 'submit', class: 'primary' }, 'Continue');
  const form = h('form', { class: 'card signin', novalidate: true },
    h('h1', { tabindex: -1 }, 'Act as the operator'),
    h('p', { class: 'muted' }, 'The operator token acts in one tenant at a time, with every scope. Acting as a user records that user as the actor; otherwise the trail records the operator.'),
    field('Tenant', tenant), field('Act as user (optional)', actAs, 'Needed to create keys: a key belongs to a user.'),
    alert, h('div', { class: 'actions' }, button, h('button', { type: 'button', onclick: signOut }, 'Sign out')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!tenant.value.trim()) return alert.show(new Error('Name a tenant, such as acme.'));
    busy(button, alert, async () => {
      session.try({ credential, tenant: tenant.value.trim(), actAs: actAs.value.trim() || undefined });
      try {
        await start();
      } catch (e) {
        session.try({ credential });
        throw e;
      }
    });
  });
  fill(root, h('main', { id: 'main' }, form));
  tenant.focus();
}

/** Who the credential is (GET /v1/whoami), then the shell at the route. */
async function start() {
  const me = await api('/v1/whoami');
  session.keep(session.get());
  const scopes = new Set(me.scopes);
  ctx = { me, can: (scope) => scopes.has(scope) };
  if (!ROUTES.some((r) => r.path.test(location.hash))) history.replaceState(null, '', '#/keys');
  route();
}

function who(me) {
  if (me.operator) return me.owner ? `Operator, acting as ${me.owner}` : 'Operator';
  return `${me.owner} with API key “${me.name}”`;
}

function shell(active) {
  const { me } = ctx;
  const main = h('main', { id: 'main', tabindex: -1 });
  const header = h('header', { class: 'top' },
    h('span', { class: 'brand' }, 'keyledger'),
    h('nav', { 'aria-label': 'Main' }, h('ul', {}, NAV.map(([id, label]) => h('li', {},
      h('a', { href: `#/${id}`, 'aria-current': id === active ? 'page' : null }, label))))),
    h('div', { class: 'who' },
      h('span', { 'data-testid': 'signed-in' }, `Tenant ${me.tenant_id} · ${who(me)}`),
      me.operator ? h('button', { type: 'button', class: 'small', onclick: () => showTenant() }, 'Switch tenant') : null,
      h('button', { type: 'button', class: 'small', onclick: signOut }, 'Sign out')));
  fill(root, header, main);
  return main;
}

async function route() {
  if (!ctx) return;
  if (leave) leave();
  leave = null;
  const hash = location.hash;
  const r = ROUTES.find((x) => x.path.test(hash));
  if (!r) {
    history.replaceState(null, '', '#/keys');
    return route();
  }
  const main = shell(r.nav);
  const args = hash.match(r.path).slice(1);
  try {
    leave = await r.page.render(main, ctx, ...args);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      session.clear();
      ctx = null;
      return showSignIn(e);
    }
    main.append(h('p', { role: 'alert', class: 'alert' }, e.message));
  }
  const h1 = main.querySelector('h1');
  if (h1) {
    h1.tabIndex = -1;
    document.title = `${h1.textContent} · keyledger`;
    if (document.activeElement === document.body || !document.activeElement) h1.focus();
  }
}

window.addEventListener('hashchange', () => {
  if (location.hash === '#main') return; // the skip link
  if (ctx) route();
});
document.addEventListener('click', (ev) => {
  if (ev.target.closest?.('a.skip')) {
    ev.preventDefault();
    document.getElementById('main')?.focus();
  }
});

if (session.get()?.credential) {
  start().catch((e) => {
    if (e instanceof ApiError && e.code === 'tenant_required') return showTenant();
    session.clear();
    showSignIn(e);
  });
} else {
  showSignIn();
}
