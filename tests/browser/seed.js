// Global setup: seeds the fresh server scripts/browser started, through the
// HTTP API only, and hands the ids and secrets to the specs in
// KEYLEDGER_SEED (an environment variable of this run: never a file).
//
// Tenant acme: alice's admin key (every scope), a keys:read-only key, a
// "CI/CD Pipeline" key verified as valid and with a scope it lacks, a
// revoked key verified afterwards, an expired key verified after its
// expiry, a key rotated with a day's grace (Expiring), a key with the
// longest name allowed, and erin, removed by the operator with her two keys
// (a cascade).
// Tenant globex: two keys whose names must never appear signed in as acme.
import { call, mint, must, operatorToken, verify } from './api.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export default async function seed() {
  const health = await call('GET', '/healthz');
  if (health.status !== 200) throw new Error(`the server is not up: ${health.status}`);

  // The longest name a key may have (100 characters): pages must stay
  // readable on a phone with it in a table or a select. The oldest key, so
  // it stands last in the newest-first list, below the README's picture.
  const longName =
    'Quarterly reconciliation export for the finance data warehouse (EU region), nightly batch, read only';
  if (longName.length !== 100) throw new Error(`the long name has ${longName.length} characters`);
  await mint('acme', 'alice', longName, ['keys:read']);
  const expiresSoon = new Date(Date.now() + 3_000).toISOString();
  const expiring = await mint('acme', 'carol', 'Nightly export', ['keys:read'], {
    expires_at: expiresSoon,
  });

  const admin = await mint('acme', 'alice', 'Console admin');
  const reader = await mint('acme', 'alice', 'Read-only viewer', ['keys:read']);
  const ci = await mint('acme', 'alice', 'CI/CD Pipeline', ['keys:read'], {
    description: 'Deploys from the main branch',
  });
  const staging = await mint('acme', 'bob', 'Staging deploy', ['keys:read']);
  const mobile = await mint('acme', 'alice', 'Mobile app backend', ['keys:read']);
  await must(201, 'POST', `/v1/keys/${mobile.id}/rotate`, {
    token: admin.key,
    body: { grace_seconds: 86_400 },
  });
  const erin1 = await mint('acme', 'erin', 'Erin laptop', ['keys:read']);
  const erin2 = await mint('acme', 'erin', 'Erin scripts', ['keys:read']);
  const globex1 = await mint('globex', 'gina', 'Globex payments secret', ['keys:read']);
  const globex2 = await mint('globex', 'gina', 'Globex warehouse sync', ['keys:read']);

  for (let i = 0; i < 6; i++) await verify(ci.key, 'keys:read');
  for (let i = 0; i < 2; i++) await verify(ci.key, 'keys:write'); // insufficient_scope
  for (let i = 0; i < 3; i++) await verify(staging.key);
  for (let i = 0; i < 3; i++) await verify(globex1.key);

  await must(200, 'POST', `/v1/keys/${staging.id}/revoke`, {
    token: admin.key,
    body: { reason: 'compromised' },
  });
  for (let i = 0; i < 2; i++) await verify(staging.key); // revoked

  const removed = await must(200, 'DELETE', '/v1/admin/tenants/acme/users/erin', {
    token: operatorToken(),
  });
  if (removed.revoked.length !== 2) throw new Error(`erin's removal revoked ${removed.revoked}`);

  while (Date.now() < Date.parse(expiresSoon) + 200) await sleep(100);
  const expired = await verify(expiring.key);
  if (expired.outcome !== 'expired')
    throw new Error(`an expired key verified as ${expired.outcome}`);

  // Uses are written every second: wait until the seeded ones are readable.
  for (let i = 0; ; i++) {
    const u = await must(200, 'GET', '/v1/usage/summary?days=7', { token: admin.key });
    const t = u.totals || {};
    if (t.valid > 0 && t.revoked > 0 && t.expired > 0 && t.insufficient_scope > 0) break;
    if (i >= 50) throw new Error(`the seeded uses never showed: ${JSON.stringify(u.totals)}`);
    await sleep(200);
  }

  const pick = ({ id, key, name }) => ({ id, key, name });
  process.env.KEYLEDGER_SEED = JSON.stringify({
    acme: {
      admin: pick(admin),
      reader: pick(reader),
      ci: pick(ci),
      staging: pick(staging),
      expired: pick(expiring),
      rotated: pick(mobile),
      erin: { user: 'erin', keys: [pick(erin1), pick(erin2)] },
    },
    globex: { keys: [pick(globex1), pick(globex2)] },
  });
}
