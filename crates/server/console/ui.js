// DOM helpers. Elements are built, never parsed from strings (no HTML
// parsing), so text from the API is never markup; no inline styles (CSP).

/** h('tag', {attr: value, onclick: fn}, ...children): an element. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A labelled control: {label, input} where the label names the input. */
let ids = 0;
export function field(label, input, hint) {
  const id = input.id || `f${++ids}`;
  input.id = id;
  const hintEl = hint ? h('div', { class: 'muted', id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
  return h('div', {}, h('label', { for: id }, label), input, hintEl);
}

/** `2026-12-07 08:01 UTC`, in a <time> element; a dash for none. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, 'Never');
  return h('time', { datetime: iso, class: 'nowrap' }, fmtTime(iso));
}

export function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

/** The key's status as people read it: rotated and in grace is "Expiring". */
export function statusOf(key) {
  if (key.status === 'active' && key.rotated_to) return 'Expiring';
  return { active: 'Active', revoked: 'Revoked', expired: 'Expired' }[key.status] || key.status;
}

export function badge(key) {
  const s = statusOf(key);
  return h('span', { class: `badge ${s.toLowerCase()}` }, s);
}

/** The text shown instead of a section the credential may not see. */
export function needs(scope, what) {
  return h('p', { role: 'status', class: 'notice' },
    `${what} needs the ${scope} scope, which this credential does not hold.`);
}

/** An element that reads errors out (role=alert), empty until `show`. */
export function alertBox() {
  const el = h('div', { role: 'alert', class: 'alert' });
  el.show = (err) => fill(el, err ? err.message || String(err) : '');
  return el;
}

/**
 * A modal <dialog> (focus is trapped by the browser and returned, on close,
 * to what had it). `role` is 'dialog' or 'alertdialog'; the title names it.
 * The dialog is removed from the page when closed, whatever closed it.
 */
export function modal({ title, role = 'dialog', content, onClose }) {
  const back = document.activeElement;
  const titleId = `d${++ids}`;
  const dlg = h('dialog', { role: role === 'dialog' ? null : role, 'aria-labelledby': titleId },
    h('h2', { id: titleId }, title), content);
  dlg.addEventListener('close', () => {
    dlg.remove();
    if (onClose) onClose();
    if (back && back.isConnected) back.focus();
    else document.querySelector('main h1')?.focus();
  });
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

/** Runs `task` with `button` disabled, showing failures in `alert`. */
export async function busy(button, alert, task) {
  button.disabled = true;
  alert?.show(null);
  try {
    return await task();
  } catch (e) {
    alert?.show(e);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

/** Every day from `from` to `to` (YYYY-MM-DD, UTC), oldest first. */
export function daysBetween(from, to) {
  const out = [];
  for (let d = new Date(`${from}T00:00:00Z`); d <= new Date(`${to}T00:00:00Z`); d.setUTCDate(d.getUTCDate() + 1)) {
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

/** Day rows of `/v1/usage` (days with uses only) as one row per day. */
export function fillDays(rows, from, to) {
  const by = new Map(rows.map((r) => [r.day, r]));
  const zero = { total: 0, valid: 0, rejected: 0, revoked: 0, expired: 0, insufficient_scope: 0 };
  return daysBetween(from, to).map((day) => ({ ...zero, ...by.get(day), day }));
}

const OUTCOMES = [
  ['valid', 'Valid'],
  ['revoked', 'Revoked key'],
  ['expired', 'Expired key'],
  ['insufficient_scope', 'Missing scope'],
];

/**
 * A stacked daily bar chart (Chart.js) of valid uses and each rejection
 * outcome, with a table of the same numbers: `label` names both.
 * Returns the element and a `destroy` for the chart.
 */
export function dailyChart(rows, label) {
  const canvas = h('canvas', { role: 'img', 'aria-label': `Daily uses: ${label}` });
  const wrap = h('div', { class: 'chart' }, canvas);
  const table = h('table', { 'aria-label': 'Daily usage' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Day'), h('th', { scope: 'col' }, 'Total'),
      OUTCOMES.map(([, name]) => h('th', { scope: 'col' }, name)))),
    h('tbody', {}, rows.map((r) => h('tr', {},
      h('th', { scope: 'row', class: 'nowrap' }, r.day), h('td', {}, r.total),
      OUTCOMES.map(([k]) => h('td', {}, r[k]))))));
  const tableWrap = h('div', { class: 'table-wrap tall', tabindex: 0, role: 'region', 'aria-label': 'Daily usage, as a table' }, table);
  let chart = null;
  if (window.Chart) {
    const css = getComputedStyle(document.documentElement);
    const colors = ['#16a34a', '#dc2626', '#9ca3af', '#d97706'];
    const fg = css.getPropertyValue('--fg').trim();
    const grid = css.getPropertyValue('--line').trim();
    chart = new window.Chart(canvas, {
      type: 'bar',
      data: {
        labels: rows.map((r) => r.day.slice(5)),
        datasets: OUTCOMES.map(([k, name], i) => ({
          label: name, data: rows.map((r) => r[k]), backgroundColor: colors[i], stack: 'uses',
        })),
      },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        scales: {
          x: { stacked: true, ticks: { color: fg }, grid: { color: grid } },
          y: { stacked: true, beginAtZero: true, ticks: { color: fg, precision: 0 }, grid: { color: grid } },
        },
        plugins: { legend: { labels: { color: fg } } },
      },
    });
  } else {
    wrap.append(h('p', { class: 'muted' }, 'The chart library did not load; the table below has the numbers.'));
  }
  return { el: h('div', {}, wrap, tableWrap), destroy: () => chart?.destroy() };
}
