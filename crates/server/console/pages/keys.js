// API keys: the active count, a sortable, filterable, paged table, and
// create / revoke / rotate behind dialogs. A new secret is shown once.

import { ApiError, api, withQuery } from '../api.js';
import { alertBox, badge, busy, field, fill, h, modal, needs, statusOf, time } from '../ui.js';
import { FieldError, marker, policyInputs, shownAtField } from './key-edit.js';

const SCOPES = ['keys:read', 'keys:write', 'audit:read', 'usage:read', 'users:remove'];
const SORTS = [['name', 'name'], ['created_at', 'created'], ['last_used_at', 'last used']];

// Kept while the console runs, so coming back to the list keeps its view;
// started afresh for another tenant (the operator's "Switch tenant"), whose
// keys the old filter and cursors say nothing about.
const FRESH = { status: '', q: '', sort: 'created_at', order: 'desc', cursors: [null] };
const view = { ...FRESH, tenant: null };

export async function render(main, ctx) {
  if (view.tenant !== ctx.me.tenant_id) Object.assign(view, FRESH, { cursors: [null], tenant: ctx.me.tenant_id });
  main.append(h('h1', {}, 'API keys'));
  if (!ctx.can('keys:read')) {
    main.append(needs('keys:read', 'The list of keys'));
    if (ctx.can('keys:write')) main.append(h('div', { class: 'actions' }, createButton(ctx, () => {})));
    return;
  }
  const count = h('span', { 'data-testid': 'active-count' }, '…');
  const status = h('select', {},
    [['', 'All'], ['active', 'Active'], ['revoked', 'Revoked'], ['expired', 'Expired']]
      .map(([v, label]) => h('option', { value: v, selected: v === view.status }, label)));
  const q = h('input', { type: 'search', value: view.q, autocomplete: 'off' });
  const alert = alertBox();
  const table = h('div');
  const pager = h('div', { class: 'pager' });
  const reload = () => load(ctx, { count, table, pager, alert });
  const first = () => { view.cursors = [null]; reload(); };
  status.addEventListener('change', () => { view.status = status.value; first(); });
  let typing;
  q.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { view.q = q.value.trim(); first(); }, 250);
  });
  main.append(
    h('div', { class: 'toolbar' }, h('p', {}, count, ' active'),
      ctx.can('keys:write') ? createButton(ctx, reload) : needs('keys:write', 'Creating, revoking and rotating keys')),
    h('div', { class: 'row' }, field('Status', status), field('Filter by name', q)),
    alert, table, pager);
  await reload();
}

// Only the answer to the latest request is shown (typing sends several).
let latest = 0;

async function load(ctx, { count, table, pager, alert }) {
  const page = view.cursors.length - 1;
  const mine = ++latest;
  let list;
  try {
    list = await api(withQuery('/v1/keys', {
      status: view.status, q: view.q, sort: view.sort, order: view.order,
      cursor: view.cursors[page], limit: 20,
    }));
  } catch (e) {
    if (mine === latest) alert.show(e);
    return;
  }
  if (mine !== latest) return;
  alert.show(null);
  fill(count, list.active_count);
  fill(table, keyTable(ctx, list.keys, () => load(ctx, { count, table, pager, alert })));
  const go = (cursors) => { view.cursors = cursors; load(ctx, { count, table, pager, alert }); };
  fill(pager,
    h('button', { type: 'button', disabled: page === 0, onclick: () => go(view.cursors.slice(0, -1)) }, 'Previous page'),
    h('span', {}, `Page ${page + 1}`),
    h('button', { type: 'button', disabled: !list.next_cursor, onclick: () => go([...view.cursors, list.next_cursor]) }, 'Next page'));
}

function keyTable(ctx, keys, reload) {
  const sortHeader = ([field, words], label) => {
    const on = view.sort === field;
    const sort = on ? (view.order === 'asc' ? 'ascending' : 'descending') : null;
    return h('th', { scope: 'col', 'aria-sort': sort, 'aria-label': label },
      h('button', {
        type: 'button', 'aria-label': `Sort by ${words}`,
        onclick: () => {
          view.order = on && view.order === 'asc' ? 'desc' : on ? 'asc' : field === 'name' ? 'asc' : 'desc';
          view.sort = field;
          view.cursors = [null];
          reload();
        },
      }, label, on ? (view.order === 'asc' ? ' ▲' : ' ▼') : ''));
  };
  const col = (label) => h('th', { scope: 'col' }, label);
  const rows = keys.map((k) => h('tr', {},
    h('td', {}, h('a', { href: `#/keys/${k.id}` }, k.name)),
    h('td', {}, h('code', {}, k.masked)),
    h('td', {}, k.scopes.join(', ')),
    h('td', {}, time(k.created_at)),
    h('td', {}, k.created_by),
    h('td', {}, time(k.last_used_at)),
    h('td', {}, badge(k)),
    h('td', { class: 'nowrap' }, actions(ctx, k, reload))));
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'API keys, scrollable' },
    h('table', { 'aria-label': 'API keys' },
      h('thead', {}, h('tr', {}, sortHeader(SORTS[0], 'Name'), col('Key'), col('Scopes'),
        sortHeader(SORTS[1], 'Created'), col('Created by'), sortHeader(SORTS[2], 'Last used'),
        col('Status'), col('Actions'))),
      h('tbody', {}, rows.length ? rows
        : h('tr', {}, h('td', { colspan: 8 }, 'No keys match.')))));
}

function actions(ctx, k, reload) {
  if (!ctx.can('keys:write') || k.status !== 'active') return null;
  return [
    h('button', { type: 'button', class: 'small', 'aria-label': `Revoke ${k.name}`, onclick: () => revokeDialog(k, reload) }, 'Revoke'),
    ' ',
    statusOf(k) === 'Active'
      ? h('button', { type: 'button', class: 'small', 'aria-label': `Rotate ${k.name}`, onclick: () => rotateDialog(k, reload) }, 'Rotate')
      : null,
  ];
}

function createButton(ctx, reload) {
  return h('button', { type: 'button', class: 'primary', onclick: () => createDialog(ctx, reload) }, 'Create key');
}

function createDialog(ctx, reload) {
  const name = h('input', { type: 'text', maxlength: 100, required: true, autocomplete: 'off' });
  const description = h('textarea', { maxlength: 500, rows: 2 });
  const expires = h('input', { type: 'datetime-local' });
  const held = SCOPES.filter((s) => ctx.can(s));
  const boxes = held.map((s) => h('input', { type: 'checkbox', value: s, checked: s !== 'users:remove' }));
  // Credits, rate limits and metadata: closed until asked for, and a
  // refusal of one of them is shown beside it (the change dialog's controls).
  const policy = policyInputs();
  const more = h('details', {}, h('summary', {}, 'Credits, rate limits and metadata'), ...policy.els);
  const { clear, mark } = marker(policy.places);
  const alert = alertBox();
  const create = h('button', { type: 'submit', class: 'primary' }, 'Create');
  const form = h('form', { method: 'dialog', novalidate: true },
    field('Name', name), field('Description', description),
    field('Expires', expires, 'Optional; your local time. Leave empty for a key that does not expire.'),
    h('fieldset', {}, h('legend', {}, 'Scopes'),
      boxes.map((b, i) => h('label', { class: 'inline' }, b, held[i]))),
    more,
    ctx.me.operator && !ctx.me.owner
      ? h('p', { class: 'notice' }, 'The operator creates keys only while acting as a user: use “Switch tenant” and name one.') : null,
    alert, h('div', { class: 'actions' }, create, h('button', { type: 'button', onclick: () => dlg.close() }, 'Cancel')));
  const dlg = modal({ title: 'Create API key', content: form });
  const shown = (field, message) => {
    more.open = true;
    return mark(field, message);
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    clear();
    busy(create, alert, async () => {
      const body = { name: name.value, scopes: boxes.filter((b) => b.checked).map((b) => b.value) };
      if (description.value.trim()) body.description = description.value.trim();
      if (expires.value) body.expires_at = new Date(expires.value).toISOString();
      let created;
      try {
        const { credits, limits, meta } = policy.read();
        if (credits) body.credits = credits;
        if (limits.length) body.limits = limits;
        if (meta) body.meta = meta;
        created = await api('/v1/keys', { method: 'POST', body });
      } catch (e) {
        if (e instanceof FieldError && shown(e.field, e.message)) return;
        if (e instanceof ApiError && shownAtField(e, shown)) return;
        throw e;
      }
      dlg.close();
      secretDialog(created);
      reload();
    });
  });
  name.focus();
}

/** The new secret, once: Copy, "Copied", and a warning. Closing is final. */
export function secretDialog(created) {
  let secret = created.key;
  const status = h('p', { role: 'status', class: 'muted' });
  const code = h('code', { class: 'secret', 'data-testid': 'secret' }, secret);
  const copy = h('button', {
    type: 'button', class: 'primary',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        fill(status, 'Copied');
      } catch {
        getSelection().selectAllChildren(code);
        fill(status, 'The browser refused the clipboard: the key is selected, copy it with Ctrl+C (⌘C).');
      }
    },
  }, 'Copy');
  const done = h('button', { type: 'button', onclick: () => dlg.close() }, 'Done');
  const dlg = modal({
    title: 'Your new API key',
    content: [
      h('p', {}, `Key “${created.name}” (${created.id}).`),
      code,
      h('p', { class: 'warn' }, 'Copy it now and keep it somewhere safe: it will not be shown again.'),
      status,
      h('div', { class: 'actions' }, copy, done),
    ],
    onClose: () => {
      fill(code);
      secret = null;
      created.key = null;
    },
  });
  copy.focus();
}

function revokeDialog(k, reload) {
  const reason = h('select', {},
    h('option', { value: 'manual' }, 'No longer needed'),
    h('option', { value: 'compromised' }, 'Compromised (leaked)'));
  const alert = alertBox();
  const revoke = h('button', { type: 'button', class: 'danger' }, 'Revoke key');
  const dlg = modal({
    title: `Revoke ${k.name}?`, role: 'alertdialog',
    content: [
      h('p', {}, `Anything using ${k.name} (`, h('code', {}, k.masked), ') is refused from now on. A revoked key cannot be restored.'),
      field('Reason', reason), alert,
      h('div', { class: 'actions' }, revoke, h('button', { type: 'button', onclick: () => dlg.close() }, 'Cancel')),
    ],
  });
  revoke.addEventListener('click', () => busy(revoke, alert, async () => {
    await api(`/v1/keys/${k.id}/revoke`, { method: 'POST', body: { reason: reason.value } });
    dlg.close();
    reload();
  }));
  reason.focus();
}

function rotateDialog(k, reload) {
  const grace = h('input', { type: 'number', min: 0, max: 2592000, step: 1, value: 0 });
  const alert = alertBox();
  const rotate = h('button', { type: 'button', class: 'danger' }, 'Rotate key');
  const dlg = modal({
    title: `Rotate ${k.name}?`, role: 'alertdialog',
    content: [
      h('p', {}, `A new key replaces ${k.name}, with the same owner, name and scopes. The old key stops working after the grace period (0: at once).`),
      field('Grace period (seconds)', grace, 'At most 2,592,000 (30 days).'), alert,
      h('div', { class: 'actions' }, rotate, h('button', { type: 'button', onclick: () => dlg.close() }, 'Cancel')),
    ],
  });
  rotate.addEventListener('click', () => busy(rotate, alert, async () => {
    const seconds = Number(grace.value || 0);
    if (!Number.isInteger(seconds) || seconds < 0) throw new Error('The grace period is a whole number of seconds, 0 or more.');
    const created = await api(`/v1/keys/${k.id}/rotate`, { method: 'POST', body: { grace_seconds: seconds } });
    dlg.close();
    secretDialog(created);
    reload();
  }));
  grace.focus();
}
