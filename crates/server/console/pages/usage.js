// Usage: 7/30/90-day summary (uses, success rate), a stacked daily bar
// chart of valid uses and each rejection, a per-key drill-down, CSV.

import { api, download, withQuery } from '../api.js';
import { alertBox, busy, dailyChart, field, fill, fillDays, h, needs } from '../ui.js';

const view = { days: 30, key: '' };

export async function render(main, ctx) {
  main.append(h('h1', {}, 'Usage'));
  if (!ctx.can('usage:read')) {
    main.append(needs('usage:read', 'Usage'));
    return undefined;
  }
  const periods = [7, 30, 90].map((d) => h('button', {
    type: 'button', 'aria-pressed': String(d === view.days),
    onclick: () => { view.days = d; periods.forEach((b, i) => b.setAttribute('aria-pressed', String([7, 30, 90][i] === d))); show(); },
  }, `${d} days`));
  const keySelect = h('select', {}, h('option', { value: '' }, 'All keys'));
  if (ctx.can('keys:read')) {
    const list = await api('/v1/keys?limit=1000&sort=name&order=asc');
    for (const k of list.keys) keySelect.append(h('option', { value: k.id, selected: k.id === view.key }, `${k.name} (${k.masked})`));
  }
  keySelect.addEventListener('change', () => { view.key = keySelect.value; show(); });
  const alert = alertBox();
  const figures = h('div');
  const chartBox = h('div');
  const csv = h('a', { href: '#/usage', class: 'button' }, 'Download CSV');
  csv.addEventListener('click', (ev) => {
    ev.preventDefault();
    busy(csv, alert, () => download(withQuery('/v1/usage/export', { format: 'csv', key_id: view.key, from: csv.from, to: csv.to }),
      `usage-${ctx.me.tenant_id}${view.key ? `-${view.key}` : ''}-${csv.from}-${csv.to}.csv`));
  });
  main.append(
    h('div', { class: 'row' },
      h('div', { role: 'group', 'aria-label': 'Period' }, periods.map((b) => [b, ' '])),
      field('Key', keySelect),
      h('div', {}, csv)),
    alert, figures, chartBox);
  if (!ctx.can('keys:read')) main.append(needs('keys:read', 'Choosing one key'));

  let destroy = null;
  let latest = 0;
  async function show() {
    const mine = ++latest;
    try {
      const summary = await api(`/v1/usage/summary?days=${view.days}`);
      let rows = summary.series;
      let totals = summary.totals;
      let rate = summary.success_rate;
      if (view.key) {
        const one = await api(withQuery('/v1/usage', { key_id: view.key, from: summary.from, to: summary.to }));
        rows = fillDays(one.days, summary.from, summary.to);
        totals = rows.reduce((t, r) => ({ total: t.total + r.total, valid: t.valid + r.valid }), { total: 0, valid: 0 });
        rate = totals.total ? totals.valid / totals.total : null;
      }
      if (mine !== latest) return;
      csv.from = summary.from;
      csv.to = summary.to;
      const which = view.key ? keySelect.selectedOptions[0].textContent : 'all keys';
      fill(figures, h('dl', { class: 'figures' },
        h('div', {}, h('dt', {}, 'Uses'), h('dd', { 'data-testid': 'usage-total' }, totals.total.toLocaleString('en'))),
        h('div', {}, h('dt', {}, 'Success rate'), h('dd', { 'data-testid': 'usage-success-rate' },
          rate == null ? '—' : `${(rate * 100).toFixed(1)}%`))),
      h('p', { class: 'muted' }, `${which}, ${summary.from} to ${summary.to} (UTC days).`));
      if (destroy) destroy();
      const chart = dailyChart(rows, `${which}, last ${view.days} days`);
      destroy = chart.destroy;
      fill(chartBox, chart.el);
      alert.show(null);
    } catch (e) {
      if (mine === latest) alert.show(e);
    }
  }
  await show();
  return () => destroy?.();
}
