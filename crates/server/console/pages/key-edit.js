// A key's policy as the detail page shows it, and the dialog that changes
// a key (PATCH /v1/keys/{id}: only the fields changed are sent; a refusal
// is shown beside the field it names).

import { ApiError, api } from '../api.js';
import { alertBox, busy, fill, h, modal } from '../ui.js';

const SCOPES = ['keys:read', 'keys:write', 'audit:read', 'usage:read', 'users:remove', 'webhooks:manage'];
const UNITS = [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000], ['ms', 1]];

/** A duration in milliseconds as people write it: 1s, 15m, 250ms. */
export function durationText(ms) {
  const [unit, size] = UNITS.find(([, n]) => ms >= n && ms % n === 0) || ['ms', 1];
  return `${ms / size}${unit}`;
}

/** `1s`, `15m`, `250ms`, `2h`, `1d` in milliseconds; NaN for anything else. */
export function parseDuration(text) {
  const m = /^(\d+)\s*(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) return NaN;
  return Number(m[1]) * UNITS.find(([u]) => u === m[2])[1];
}

export function creditsText(c) {
  if (!c) return 'Unlimited';
  if (!c.refill) return `${c.remaining} left`;
  const r = c.refill;
  const when = r.interval === 'monthly' ? `monthly on day ${r.day || 1}` : 'daily';
  return `${c.remaining} left; set to ${r.amount} ${when} (next ${r.next_at})`;
}

export function limitsText(limits) {
  if (!limits?.length) return 'None';
  return limits.map((l) => `${l.name}: ${l.limit} per ${durationText(l.duration)}`).join('; ');
}

/** The detail rows of a key's policy. */
export function policyRows(k) {
  return [
    ['Credits', creditsText(k.credits)],
    ['Rate limits', limitsText(k.limits)],
    ['Metadata', k.meta ? h('code', {}, JSON.stringify(k.meta)) : '—'],
  ];
}

/** `datetime-local` text for an RFC 3339 instant, in local time. */
function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A labelled control with its own error line (aria-describedby). */
let ids = 0;
function editable(label, input, hint) {
  const id = `e${++ids}`;
  input.id = id;
  const error = h('p', { class: 'field-error', id: `${id}-error` });
  const hintEl = hint ? h('div', { class: 'muted', id: `${id}-hint` }, hint) : null;
  input.setAttribute('aria-describedby', [hintEl && hintEl.id, error.id].filter(Boolean).join(' '));
  const el = h('div', {}, h('label', { for: id }, label), input, hintEl, error);
  return { el, input, error };
}

/**
 * The policy's controls (credits and refill, rate limits, metadata) of the
 * create and change dialogs, filled from key `k` (none for a new key):
 * `els` to show, `places` (field pattern, control, error line) for refusals,
 * and `read()` the values as the API's body has them (null: none), throwing
 * a FieldError that names the field for what cannot be sent.
 */
export function policyInputs(k = {}) {
  const credits = editable('Credits', h('input', { type: 'number', min: 0, step: 1, value: k.credits ? k.credits.remaining : '' }),
    'Valid verifications left; empty: unlimited.');
  const r = k.credits?.refill;
  const interval = editable('Refill', h('select', {},
    [['', 'Never'], ['daily', 'Daily'], ['monthly', 'Monthly']]
      .map(([v, label]) => h('option', { value: v, selected: (r?.interval || '') === v }, label))),
  'At 00:00 UTC the credits are set to the amount.');
  const amount = editable('Refill amount', h('input', { type: 'number', min: 1, step: 1, value: r ? r.amount : '' }));
  const day = editable('Refill day of the month', h('input', { type: 'number', min: 1, max: 31, step: 1, value: r?.day || '' }),
    'Monthly only; empty: the 1st.');
  const limits = editable('Rate limits', h('textarea', { rows: 3, spellcheck: 'false' }),
    'One a line: name=limit/duration, e.g. burst=10/1s or hourly=1000/1h.');
  limits.input.value = (k.limits || []).map((l) => `${l.name}=${l.limit}/${durationText(l.duration)}`).join('\n');
  const meta = editable('Metadata', h('textarea', { rows: 3, spellcheck: 'false' }),
    'A JSON object, e.g. {"plan": "pro"}; empty: none. Never a secret.');
  meta.input.value = k.meta ? JSON.stringify(k.meta) : '';

  return {
    els: [h('fieldset', {}, h('legend', {}, 'Credits and refill'), credits.el, interval.el, amount.el, day.el), limits.el, meta.el],
    places: [
      [/^credits\.refill\.amount/, amount.input, amount.error],
      [/^credits\.refill\.day/, day.input, day.error],
      [/^credits\.refill/, interval.input, interval.error],
      [/^credits/, credits.input, credits.error],
      [/^limits/, limits.input, limits.error],
      [/^meta/, meta.input, meta.error],
    ],
    read() {
      let c = null;
      if (credits.input.value !== '') {
        c = { remaining: Number(credits.input.value) };
        if (interval.input.value) {
          if (amount.input.value === '') throw new FieldError('credits.refill.amount', 'Give the amount a refill sets.');
          c.refill = { amount: Number(amount.input.value), interval: interval.input.value };
          if (interval.input.value === 'monthly' && day.input.value !== '') c.refill.day = Number(day.input.value);
        }
      } else if (interval.input.value) {
        throw new FieldError('credits', 'A refill needs credits: give how many the key has now.');
      }
      const parsed = limits.input.value.split('\n').map((l) => l.trim()).filter(Boolean).map((line, i) => {
        const m = /^([^=]+)=(\d+)\/(.+)$/.exec(line);
        const duration = m ? parseDuration(m[3]) : NaN;
        if (!m || Number.isNaN(duration)) throw new FieldError(`limits[${i}]`, `Line ${i + 1}: write name=limit/duration, e.g. burst=10/1s.`);
        return { name: m[1].trim(), limit: Number(m[2]), duration };
      });
      const text = meta.input.value.trim();
      let m = null;
      if (text) {
        try {
          m = JSON.parse(text);
        } catch {
          throw new FieldError('meta', 'Not JSON: write an object such as {"plan": "pro"}.');
        }
        if (!m || typeof m !== 'object' || Array.isArray(m)) throw new FieldError('meta', 'Write a JSON object, such as {"plan": "pro"}.');
      }
      return { credits: c, limits: parsed, meta: m };
    },
  };
}

/** `clear()` every mark, and `mark(field, message)` beside the control whose pattern matches. */
export function marker(places) {
  const clear = () => places.forEach(([, input, error]) => { input.removeAttribute('aria-invalid'); fill(error); });
  const mark = (field, message) => {
    const place = places.find(([re]) => re.test(field));
    if (!place) return false;
    place[1].setAttribute('aria-invalid', 'true');
    fill(place[2], message);
    if (place[1].focus) place[1].focus();
    return true;
  };
  return { clear, mark };
}

const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/** The change dialog; `done(key)` gets the key as changed. */
export function editDialog(ctx, k, done) {
  const name = editable('Name', h('input', { type: 'text', maxlength: 100, value: k.name, autocomplete: 'off' }));
  const description = editable('Description', h('textarea', { maxlength: 500, rows: 2 }));
  description.input.value = k.description || '';
  const expires = editable('Expires', h('input', { type: 'datetime-local', value: localInput(k.expires_at) }),
    'Your local time; empty: never. A later expiry needs the right to create keys that do not expire.');
  const offered = SCOPES.filter((s) => ctx.can(s) || k.scopes.includes(s));
  const boxes = offered.map((s) => h('input', {
    type: 'checkbox', value: s, checked: k.scopes.includes(s), disabled: !ctx.can(s) && !k.scopes.includes(s),
  }));
  const scopesError = h('p', { class: 'field-error', id: `e${++ids}-error` });
  const scopes = h('fieldset', { 'aria-describedby': scopesError.id }, h('legend', {}, 'Scopes'),
    boxes.map((b, i) => h('label', { class: 'inline' }, b, offered[i])), scopesError);
  const policy = policyInputs(k);

  const places = [
    [/^name/, name.input, name.error],
    [/^description/, description.input, description.error],
    [/^expires_at/, expires.input, expires.error],
    [/^scopes/, scopes, scopesError],
    ...policy.places,
  ];
  const { clear, mark } = marker(places);

  // The body: only what changed. A refusal here names its field too.
  const body = () => {
    const b = {};
    if (name.input.value !== k.name) b.name = name.input.value;
    const desc = description.input.value.trim();
    if (desc !== (k.description || '')) b.description = desc || null;
    const exp = expires.input.value;
    if (exp !== localInput(k.expires_at)) b.expires_at = exp ? new Date(exp).toISOString() : null;
    const chosen = boxes.filter((x) => x.checked).map((x) => x.value);
    if (!same([...chosen].sort(), [...k.scopes].sort())) b.scopes = chosen;
    const { credits: c, limits: parsed, meta: m } = policy.read();
    const r = k.credits?.refill;
    const was = k.credits && { remaining: k.credits.remaining, ...(r && {
      refill: { amount: r.amount, interval: r.interval, ...(r.day && { day: r.day }) } }) };
    if (!same(c, was)) b.credits = c;
    if (!same(parsed, (k.limits || []).map(({ name: n, limit, duration }) => ({ name: n, limit, duration })))) b.limits = parsed;
    if (!same(m, k.meta)) b.meta = m;
    return b;
  };

  const alert = alertBox();
  const save = h('button', { type: 'submit', class: 'primary' }, 'Save changes');
  const form = h('form', { method: 'dialog', novalidate: true },
    name.el, description.el, expires.el, scopes, ...policy.els, alert,
    h('div', { class: 'actions' }, save, h('button', { type: 'button', onclick: () => dlg.close() }, 'Cancel')));
  const dlg = modal({ title: `Change ${k.name}`, content: form });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    clear();
    busy(save, alert, async () => {
      let patch;
      try {
        patch = body();
      } catch (e) {
        if (e instanceof FieldError && mark(e.field, e.message)) return;
        throw e;
      }
      if (!Object.keys(patch).length) throw new Error('Nothing changed.');
      try {
        const changed = await api(`/v1/keys/${k.id}`, { method: 'PATCH', body: patch });
        dlg.close();
        done(changed);
      } catch (e) {
        if (e instanceof ApiError && shownAtField(e, mark)) return;
        throw e;
      }
    });
  });
  name.input.focus();
}

export class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

/** Shows a refusal beside its field: `field: why` (422), or the 400 wording "the field `x` …". */
export function shownAtField(e, mark) {
  const detail = String(e.detail || '');
  const named = /^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)*): (.*)$/s.exec(detail)
    || /the field `([^`]+)`/.exec(detail);
  if (named && e.status < 500) return mark(named[1], e.message);
  if (e.code === 'forbidden') {
    if (/scope/i.test(detail)) return mark('scopes', e.message);
    if (/expir/i.test(detail)) return mark('expires_at', e.message);
  }
  return false;
}
