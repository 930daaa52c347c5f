// One key: its fields, every event of its history, its daily usage.

import { ApiError, api, withQuery } from '../api.js';
import { alertBox, badge, busy, dailyChart, fill, fillDays, h, needs, time } from '../ui.js';
import { describe } from './audit.js';
import { editDialog, policyRows } from './key-edit.js';

export async function render(main, ctx, id) {
  const heading = h('h1', {}, id);
  main.append(h('p', {}, h('a', { href: '#/keys' }, '← API keys')), heading);
  if (!ctx.can('keys:read')) {
    main.append(needs('keys:read', 'The key'));
  } else {
    let k;
    try {
      k = await api(`/v1/keys/${id}`);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      heading.textContent = 'Key not found';
      main.append(h('p', { role: 'alert', class: 'alert' }, `Tenant ${ctx.me.tenant_id} has no key with this id.`));
      return undefined;
    }
    heading.textContent = k.name;
    const link = (other) => (other ? h('a', { href: `#/keys/${other}` }, other) : '—');
    const rows = [
      ['Status', badge(k)],
      ['Id', h('code', {}, k.id)],
      ['Key', h('code', {}, k.masked)],
      ['Description', k.description || '—'],
      ['Scopes', k.scopes.join(', ')],
      ['Created', time(k.created_at)],
      ['Created by', `${k.created_by} (by ${k.created_via.display})`],
      ['Expires', k.expires_at ? time(k.expires_at) : 'Never'],
      ['Last used', time(k.last_used_at)],
      ['Uses', `${k.uses.total} (${k.uses.valid} valid, ${k.uses.rejected} rejected)`],
      k.revoked_at ? ['Revocation', [time(k.revoked_at), ` by ${k.revoked_by?.display}, reason ${k.revoke_reason}`]] : null,
      ['Replaced', link(k.rotated_from)],
      ['Replaced by', link(k.rotated_to)],
      ...policyRows(k),
    ].filter(Boolean);
    main.append(h('dl', { class: 'fields' }, rows.map(([dt, dd]) => [h('dt', {}, dt), h('dd', {}, dd)])));
    if (ctx.can('keys:write') && k.status === 'active') {
      // Saved: the page again, from the API (fields and history).
      const again = () => window.dispatchEvent(new HashChangeEvent('hashchange'));
      main.append(h('div', { class: 'actions' }, h('button', {
        type: 'button', class: 'primary', onclick: () => editDialog(ctx, k, again),
      }, 'Change key')));
    }
  }

  main.append(h('h2', {}, 'History'));
  if (!ctx.can('audit:read')) {
    main.append(needs('audit:read', 'The history'));
  } else {
    const body = h('tbody');
    const more = h('div');
    const alert = alertBox();
    const load = async (cursor) => {
      const page = await api(withQuery(`/v1/keys/${id}/history`, { cursor, limit: 500 }));
      body.append(...page.events.map((e) => h('tr', {},
        h('td', {}, e.position), h('td', {}, describe(e, () => heading.textContent)),
        h('td', {}, time(e.at)), h('td', {}, e.actor.display))));
      fill(more, page.next_cursor ? h('button', {
        type: 'button', onclick: (ev) => busy(ev.currentTarget, alert, () => load(page.next_cursor)),
      }, 'Load more') : null);
    };
    await load(null);
    main.append(h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'History, scrollable' },
      h('table', { 'aria-label': 'History' },
        h('thead', {}, h('tr', {}, ['#', 'Event', 'Time', 'Actor'].map((c) => h('th', { scope: 'col' }, c)))), body)),
    alert, more);
  }

  main.append(h('h2', {}, 'Usage'));
  if (!ctx.can('usage:read')) {
    main.append(needs('usage:read', 'The usage'));
    return undefined;
  }
  const summary = await api('/v1/usage/summary?days=30');
  const usage = await api(withQuery('/v1/usage', { key_id: id, from: summary.from, to: summary.to }));
  const chart = dailyChart(fillDays(usage.days, summary.from, summary.to), `${heading.textContent}, last 30 days`);
  main.append(h('p', { class: 'muted' }, `Last 30 days (${summary.from} to ${summary.to}, UTC).`), chart.el);
  return chart.destroy;
}
