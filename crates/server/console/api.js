// The session and the API client. The credential lives in sessionStorage
// only (gone when the tab closes), is sent as `Authorization: Bearer`, and
// never goes in a URL or a cookie. API errors become sentences.

const STORE = 'keyledger.session';
let trying = null; // a sign-in being checked: in memory only until it works
// The tenant's position after this tab's last write (`Keyledger-Position`),
// sent back on every request so that a node behind a load balancer that has
// not applied that write yet waits for it: lists never go backwards.
let position = 0;

export const session = {
  /** {credential, tenant?, actAs?} or null. */
  get() {
    if (trying) return trying;
    try {
      return JSON.parse(sessionStorage.getItem(STORE) || 'null');
    } catch {
      return null;
    }
  },
  /** Uses `s` for the next requests without keeping it (a sign-in being checked). */
  try(s) {
    trying = s;
    position = 0;
  },
  /** Keeps the session tried (or `s`) in sessionStorage. */
  keep(s = trying) {
    trying = null;
    sessionStorage.setItem(STORE, JSON.stringify(s));
  },
  clear() {
    trying = null;
    position = 0;
    sessionStorage.removeItem(STORE);
  },
};

/** An API error, its message in words. */
export class ApiError extends Error {
  constructor(status, code, message, detail = message) {
    super(message);
    this.status = status;
    this.code = code;
    // The server's own message, unchanged (a refused field is named first:
    // `credits.refill.day: must be 1 to 31`).
    this.detail = detail;
  }
}

function sentence(text) {
  const t = String(text || '').trim();
  if (!t) return '';
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

/** The words for an error answer. */
export function words(status, code, message) {
  const m = sentence(message);
  switch (code) {
    case 'missing_credentials': case 'invalid_credentials': case 'malformed_key':
    case 'unknown_key': case 'key_revoked': case 'key_expired':
      return `That key is not valid: ${m}`;
    case 'invalid_operator_token':
      return `That is not the operator token: ${m}`;
    case 'insufficient_scope': case 'forbidden':
      return `Not allowed: ${m}`;
    case 'tenant_required':
      return 'Choose a tenant to act in.';
    case 'key_not_found':
      return `Key not found: ${m}`;
    case 'timeout': case 'unavailable': case 'shutting_down': case 'position_not_reached':
      return `The server cannot answer now; try again shortly. ${m}`;
    default:
      if (status >= 500) return `The server failed (${status}): ${m || 'no detail'}`;
      return m || `The request was refused (${status}).`;
  }
}

async function toError(r) {
  let code = '';
  let message = '';
  try {
    const body = await r.json();
    code = body?.error?.code || '';
    message = body?.error?.message || '';
  } catch {
    // Not JSON: the status says enough.
  }
  return new ApiError(r.status, code, words(r.status, code, message), message);
}

function headers(extra) {
  const s = session.get();
  const h = { Accept: 'application/json', ...extra };
  if (s?.credential) h.Authorization = `Bearer ${s.credential}`;
  if (s?.tenant) h['Keyledger-Tenant'] = s.tenant;
  if (s?.actAs) h['Keyledger-Act-As'] = s.actAs;
  if (position > 0) h['Keyledger-Position'] = String(position);
  return h;
}

/** The raw response of a request; throws an ApiError for any error status. */
export async function request(path, { method = 'GET', body } = {}) {
  let r;
  try {
    r = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError(0, 'network', `The server could not be reached (${e.message}).`);
  }
  if (!r.ok) throw await toError(r);
  const p = Number(r.headers.get('Keyledger-Position'));
  if (Number.isSafeInteger(p) && p > position) position = p;
  return r;
}

/** The JSON answer of a request. */
export async function api(path, options) {
  return (await request(path, options)).json();
}

/** A path with a query built from the defined, non-empty values of `params`. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, v);
  const text = q.toString();
  return text ? `${path}?${text}` : path;
}

/** Every item of a paged list (`field` of each page), following `next_cursor`. */
export async function all(path, params, field) {
  const items = [];
  let cursor = null;
  do {
    const page = await api(withQuery(path, { ...params, cursor, limit: 1000 }));
    items.push(...page[field]);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

/** Downloads an answer as a file (the credential is a header, so no plain link). */
export async function download(path, filename) {
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
