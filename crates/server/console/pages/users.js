// Users: remove a user, after a dialog listing exactly the keys the
// cascade revokes (every active key they created, all pages).

import { all, api } from '../api.js';
import { alertBox, busy, field, fill, h, modal, needs } from '../ui.js';

export async function render(main, ctx) {
  main.append(h('h1', {}, 'Users'),
    h('p', {}, 'Removing a user revokes every active key they own, in one step recorded in the trail.'));
  if (!ctx.can('users:remove')) {
    main.append(needs('users:remove', 'Removing users'));
    return;
  }
  const user = h('input', { type: 'text', autocomplete: 'off', required: true });
  const alert = alertBox();
  const result = h('div');
  const review = h('button', { type: 'submit', class: 'primary' }, 'Review removal');
  const form = h('form', { novalidate: true }, field('User id', user), alert, h('div', { class: 'actions' }, review));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = user.value.trim();
    if (!id) return alert.show(new Error('Type the id of the user to remove.'));
    busy(review, alert, async () => {
      fill(result);
      const keys = ctx.can('keys:read')
        ? await all('/v1/keys', { created_by: id, status: 'active' }, 'keys') : null;
      removeDialog(id, keys, result);
    });
  });
  main.append(form, result);
}

function keyItems(keys) {
  return keys.map((k) => h('li', {}, `${k.name} `, h('code', {}, k.id)));
}

function removeDialog(id, keys, result) {
  const alert = alertBox();
  const remove = h('button', { type: 'button', class: 'danger' }, 'Remove user');
  let listing;
  if (keys === null) listing = needs('keys:read', 'Listing the keys this revokes');
  else if (keys.length === 0) listing = h('p', {}, 'No active keys');
  else listing = [h('p', {}, `These ${keys.length} active key(s) will be revoked:`),
    h('ul', { role: 'list', 'aria-label': 'Keys that will be revoked' }, keyItems(keys))];
  const dlg = modal({
    title: `Remove user ${id}?`, role: 'alertdialog',
    content: [listing, h('p', {}, 'This cannot be undone: a removed user cannot be added back.'), alert,
      h('div', { class: 'actions' }, remove, h('button', { type: 'button', onclick: () => dlg.close() }, 'Cancel'))],
  });
  remove.addEventListener('click', () => busy(remove, alert, async () => {
    const done = await api(`/v1/users/${encodeURIComponent(id)}`, { method: 'DELETE' });
    dlg.close();
    const named = new Map((keys || []).map((k) => [k.id, k.name]));
    fill(result, h('div', { role: 'status', class: 'notice' },
      `Removed ${done.user_id}: ${done.revoked.length} key(s) revoked.`),
    h('ul', { role: 'list', 'aria-label': 'Revoked keys' }, done.revoked.map((kid) => h('li', {},
      named.has(kid) ? `${named.get(kid)} ` : '', h('a', { href: `#/keys/${kid}` }, kid)))));
  }));
  remove.focus();
}
