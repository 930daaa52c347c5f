// A small client of keyledger's HTTP API for seeding and for checking what
// the console did (POST /v1/verify and friends). Node's own fetch; no other
// dependency.

export const baseURL = () => process.env.KEYLEDGER_URL;
export const operatorToken = () => process.env.KEYLEDGER_OPERATOR_TOKEN;

/** `method path` with `token` as Bearer; the status and the parsed JSON. */
export async function call(method, path, { token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const res = await fetch(baseURL() + path, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = { text };
  }
  return { status: res.status, json, headers: res.headers };
}

/** As `call`, but throws unless the status is `want`. */
export async function must(want, method, path, opts) {
  const r = await call(method, path, opts);
  if (r.status !== want) {
    throw new Error(`${method} ${path}: ${r.status}, wanted ${want}: ${JSON.stringify(r.json)}`);
  }
  return r.json;
}

export const ALL_SCOPES = ['keys:read', 'keys:write', 'audit:read', 'usage:read', 'users:remove'];

/** The operator mints a key for `user` of `tenant`: `{id, key, ...}`. */
export function mint(tenant, user, name, scopes = ALL_SCOPES, extra = {}) {
  return must(201, 'POST', `/v1/admin/tenants/${tenant}/keys`, {
    token: operatorToken(),
    body: { user, name, scopes, ...extra },
  });
}

/** POST /v1/verify: `{valid, outcome, ...}`. */
export function verify(key, scope) {
  return must(200, 'POST', '/v1/verify', { body: scope ? { key, scope } : { key } });
}

/** The seeded data (seed.js), as the tests see it. */
export function seeded() {
  const s = process.env.KEYLEDGER_SEED;
  if (!s) throw new Error('no seeded data: the tests run with seed.js as global setup');
  return JSON.parse(s);
}

/** A name no earlier run or test used. */
export function unique(prefix) {
  return `${prefix} ${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
}
