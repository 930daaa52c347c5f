// Audit: the trail with its actors (cascades grouped under the removal
// that caused them), filters, the keys as of a past instant, the chain
// check, the latest signed checkpoint, and evidence bundles.

import { api, download, withQuery } from '../api.js';
import { alertBox, badge, busy, field, fill, h, needs, time } from '../ui.js';

const TYPES = ['KeyCreated', 'KeyUpdated', 'KeyUsed', 'KeyRevoked', 'KeyRotated', 'UserRemoved', 'AuditRead', 'LogRecovered', 'KeyLeaked', 'CreditsRefilled'];

const FIELDS = {
  name: 'name', description: 'description', meta: 'metadata', expires_at: 'expiry',
  scopes: 'scopes', credits: 'credits', limits: 'rate limits',
};

/** A changed field's value, before or after, in words. */
function shown(v) {
  if (v == null) return 'none';
  if (Array.isArray(v)) {
    if (!v.length) return 'none';
    if (v.every((x) => typeof x === 'string')) return v.join(', ');
    return v.map((l) => (l && l.name ? `${l.name} ${l.limit}/${l.duration} ms` : JSON.stringify(l))).join(', ');
  }
  if (typeof v === 'object') {
    if ('remaining' in v) {
      const r = v.refill;
      return `${v.remaining}${r ? ` (refill ${r.amount} ${r.interval}${r.day ? ` on day ${r.day}` : ''})` : ''}`;
    }
    return JSON.stringify(v);
  }
  return `“${v}”`;
}

/** How the trail reads an entry: "API key: CI/CD Pipeline revoked". */
export function describe(e, nameOf) {
  const d = e.details || {};
  const k = () => `API key: ${nameOf(e.key_id) || e.key_id}`;
  switch (e.type) {
    case 'KeyCreated': return `${k()} created${d.rotated_from ? ' (replacing an older key)' : ''}`;
    case 'KeyRevoked':
      return `${k()} revoked${d.reason && d.reason !== 'manual' ? ` (${d.reason.replace('_', ' ')})` : ''}`;
    case 'KeyRotated': return `${k()} rotated; the old key works until ${d.expires_at}`;
    case 'KeyUsed': {
      const rejected = (d.revoked || 0) + (d.expired || 0) + (d.insufficient_scope || 0);
      return `${k()} used ${d.valid} time(s)${rejected ? `, ${rejected} rejected` : ''}`;
    }
    case 'KeyUpdated': {
      const changes = Object.entries(d.changes || {}).map(([field, c]) => `${FIELDS[field] || field} ${shown(c.before)} → ${shown(c.after)}`);
      return `${k()} changed: ${changes.join('; ')}`;
    }
    case 'CreditsRefilled': return `${k()} credits refilled to ${d.remaining}`;
    case 'CreditsReserved': return `${k()}: ${d.amount} credit(s) set aside by a node`;
    case 'CreditsReleased': return `${k()}: ${d.amount} credit(s) handed back by a node`;
    case 'UserRemoved': return `User ${d.user_id} removed`;
    case 'AuditRead': return `Trail read (${d.what}, ${d.count} read(s), positions ${d.from_seq}–${d.to_seq})`;
    case 'LogRecovered': return `Log recovered (epoch ${d.epoch}): ${d.reason}`;
    case 'KeyLeaked':
      return `${k()} reported leaked by ${d.reported_by}${d.source ? ` in ${d.source}` : ''}${d.url ? ` at ${d.url}` : ''}`;
    default: return e.type;
  }
}

export async function render(main, ctx) {
  main.append(h('h1', {}, 'Audit'));
  if (!ctx.can('audit:read')) {
    main.append(needs('audit:read', 'The audit trail'));
    return;
  }
  const names = new Map();
  if (ctx.can('keys:read')) {
    try {
      (await api('/v1/keys?limit=1000')).keys.forEach((k) => names.set(k.id, k.name));
    } catch { /* names fall back to ids */ }
  }
  const nameOf = (id) => names.get(id);
  main.append(trailSection(nameOf, names), stateSection(), ...await chainSection(ctx));
}

function trailSection(nameOf, names) {
  const type = h('select', {}, h('option', { value: '' }, 'All'), TYPES.map((t) => h('option', { value: t }, t)));
  const actor = h('input', { type: 'text', autocomplete: 'off' });
  const keyId = h('input', { type: 'text', autocomplete: 'off' });
  const from = h('input', { type: 'date' });
  const to = h('input', { type: 'date' });
  const alert = alertBox();
  const list = h('ol', { class: 'trail', role: 'list', 'aria-label': 'Audit trail' });
  const more = h('div');
  const empty = h('p', { role: 'status', class: 'muted' });
  const apply = h('button', { type: 'submit', class: 'primary' }, 'Apply filters');
  const events = [];
  let cursor = null;

  const filters = () => ({
    type: type.value, actor: actor.value.trim(), key_id: keyId.value.trim(),
    from: from.value && `${from.value}T00:00:00Z`, to: to.value && `${to.value}T23:59:59.999Z`,
  });
  let latest = 0;
  let applied = {};
  const load = async (fresh) => {
    const mine = ++latest;
    if (fresh) applied = filters();
    const page = await api(withQuery('/v1/audit', { ...applied, cursor: fresh ? null : cursor, limit: 50 }));
    if (mine !== latest) return;
    if (fresh) events.length = 0;
    for (const e of page.events) {
      events.push(e);
      if (e.type === 'KeyCreated' && e.key_id) names.set(e.key_id, e.details.name);
    }
    cursor = page.next_cursor;
    fill(list, entries(events, nameOf));
    fill(empty, events.length ? '' : 'No events match.');
    fill(more, cursor ? h('button', { type: 'button', onclick: (ev) => busy(ev.currentTarget, alert, () => load(false)) }, 'Load more') : null);
  };
  const form = h('form', { novalidate: true, 'aria-label': 'Trail filters' },
    h('div', { class: 'row' }, field('Type', type), field('Actor', actor, 'A user id, key id, operator or system.'),
      field('Key id', keyId), field('From', from), field('To', to)),
    h('div', { class: 'actions' }, apply, h('button', {
      type: 'button',
      onclick: (ev) => {
        for (const el of [type, actor, keyId, from, to]) el.value = '';
        busy(ev.currentTarget, alert, () => load(true));
      },
    }, 'Clear filters')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    busy(apply, alert, () => load(true));
  });
  busy(apply, alert, () => load(true));
  return h('section', { 'aria-labelledby': 'trail-h' }, h('h2', { id: 'trail-h' }, 'Trail'), form, alert, list, empty, more);
}

/** The trail's entries; revocations caused by a removal nest under it. */
function entries(events, nameOf) {
  const caused = new Map();
  const present = new Set(events.filter((e) => e.type === 'UserRemoved').map((e) => e.position));
  for (const e of events) {
    const seq = e.type === 'KeyRevoked' && e.details?.cause?.seq;
    if (seq && present.has(seq)) caused.set(seq, [...(caused.get(seq) || []), e]);
  }
  const item = (e) => h('li', {},
    h('div', { class: 'what' }, describe(e, nameOf)),
    h('div', { class: 'meta' }, `#${e.position} · by ${e.actor.display} · `, time(e.at)));
  const out = [];
  for (const e of events) {
    if (e.type === 'KeyRevoked' && present.has(e.details?.cause?.seq)) continue;
    const li = item(e);
    const group = caused.get(e.position);
    if (group) li.append(h('ol', { role: 'list', 'aria-label': 'Revoked by this removal' }, group.map(item)));
    out.push(li);
  }
  return out;
}

function stateSection() {
  const at = h('input', { type: 'datetime-local', step: 1 });
  const alert = alertBox();
  const out = h('div');
  const show = h('button', { type: 'submit' }, 'Show state');
  const form = h('form', { novalidate: true }, h('div', { class: 'row' }, field('State as of', at, 'Your local time.'), h('div', {}, show)));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    busy(show, alert, async () => {
      if (!at.value) throw new Error('Choose a date and time first.');
      const s = await api(withQuery('/v1/state', { at: new Date(at.value).toISOString() }));
      fill(out, h('p', {}, `As of `, time(s.at), `: ${s.keys.length} key(s), after event #${s.position}.`),
        h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'State, scrollable' },
          h('table', { 'aria-label': 'State' },
            h('thead', {}, h('tr', {}, ['Name', 'Key', 'Created by', 'Status then'].map((c) => h('th', { scope: 'col' }, c)))),
            h('tbody', {}, s.keys.length ? s.keys.map((k) => h('tr', {}, h('td', {}, k.name), h('td', {}, h('code', {}, k.masked)),
              h('td', {}, k.created_by), h('td', {}, badge(k)))) : h('tr', {}, h('td', { colspan: 4 }, 'No keys yet then.'))))));
    });
  });
  return h('section', { 'aria-labelledby': 'state-h' }, h('h2', { id: 'state-h' }, 'Past state'), form, alert, out);
}

async function chainSection(ctx) {
  const [chain, checkpoint, pub] = await Promise.all([
    api('/v1/audit/verify'), api('/v1/audit/checkpoint'), api('/v1/audit/public-key'),
  ]);
  const tenant = chain.tenant;
  const from = h('input', { type: 'number', min: 1, max: checkpoint.size, value: Math.min(1, checkpoint.size) });
  const to = h('input', { type: 'number', min: 1, max: checkpoint.size, value: checkpoint.size });
  const alert = alertBox();
  const command = h('code');
  const file = () => `bundle-${tenant}-${from.value}-${to.value}.jsonl`;
  const update = () => fill(command, `keyledger audit verify-bundle ${file()} --public-key ${pub.public_key}`);
  from.addEventListener('input', update);
  to.addEventListener('input', update);
  update();
  const get = h('button', {
    type: 'button',
    onclick: () => busy(get, alert, () => download(withQuery('/v1/audit/bundle', { from: from.value, to: to.value }), file())),
  }, 'Download bundle');
  return [
    h('section', { 'aria-labelledby': 'chain-h' }, h('h2', { id: 'chain-h' }, 'Chain status'),
      h('p', { class: chain.ok ? '' : 'alert' }, chain.ok
        ? 'Chain intact'
        : `Chain broken at event #${chain.first_bad_position}: ${chain.problem}`),
      h('dl', { class: 'fields' }, h('dt', {}, 'Events checked'), h('dd', {}, chain.events),
        h('dt', {}, 'Head hash'), h('dd', {}, h('code', {}, chain.head_hash)))),
    h('section', { 'aria-labelledby': 'cp-h' }, h('h2', { id: 'cp-h' }, 'Latest checkpoint'),
      h('p', {}, `Signed checkpoint of ${checkpoint.size} event(s), origin ${checkpoint.origin}:`),
      h('pre', { class: 'note' }, checkpoint.note)),
    h('section', { 'aria-labelledby': 'ev-h' }, h('h2', { id: 'ev-h' }, 'Evidence bundle'),
      h('p', {}, 'A range of the trail with its signed checkpoint and proofs, checkable offline with no trust in this server.'),
      h('div', { class: 'row' }, field('Bundle from', from), field('Bundle to', to), h('div', {}, get)), alert,
      h('p', {}, 'Verify it offline with:'), h('pre', { class: 'note' }, command),
      ctx.me.operator ? null : h('p', { class: 'muted' }, 'Compare the public key with one obtained out of band (keyledger audit public-key).')),
  ];
}
