// The API keys page: the table, create + copy once, revoke, rotate with
// grace, filters, sort and pagination.
import fs from 'node:fs';
import path from 'node:path';
import { ALL_SCOPES, call, mint, seeded, unique, verify } from '../api.js';
import {
  expect,
  expectAccessible,
  expectSecretNowhere,
  filterKeys,
  keysListed,
  screenshots,
  signIn,
  tabTo,
  test,
} from '../support.js';

const table = (page) => page.getByRole('table', { name: 'API keys' });
const row = (page, name) => table(page).getByRole('row').filter({ hasText: name });
const badge = (r, status) => r.getByText(status, { exact: true });

async function filterByName(page, name) {
  await filterKeys(page, name);
  await expect(row(page, name).first()).toBeVisible();
}

test('the keys page shows the count, masked keys and every status', async ({ page }) => {
  const { admin, ci, staging, expired, rotated } = seeded().acme;
  await signIn(page, admin.key);
  await expect(page.getByRole('heading', { level: 1, name: 'API keys' })).toBeVisible();
  await expect(table(page)).toBeVisible();
  for (const h of ['Name', 'Key', 'Scopes', 'Created', 'Created by', 'Last used', 'Status']) {
    await expect(table(page).getByRole('columnheader', { name: h, exact: true })).toBeVisible();
  }

  // The active count is the server's.
  const listed = await call('GET', '/v1/keys?status=active&limit=1', { token: admin.key });
  await expect(page.getByTestId('active-count')).toHaveText(String(listed.json.active_count));

  // Masked, never the secret.
  await expect(badge(row(page, ci.name), 'Active')).toBeVisible();
  await expect(row(page, ci.name)).toContainText(ci.key.slice(0, 8));
  await expect(row(page, ci.name)).not.toContainText(ci.key);
  await expect(badge(row(page, staging.name), 'Revoked')).toBeVisible();
  await expect(badge(row(page, expired.name), 'Expired')).toBeVisible();
  // Rotated with a grace period: the old key Expiring, the new one Active.
  await expect(badge(row(page, rotated.name), 'Expiring')).toHaveCount(1);
  await expect(badge(row(page, rotated.name), 'Active')).toHaveCount(1);
  expect(await page.content()).not.toContain(ci.key);

  await expectAccessible(page, 'the keys page');
  await screenshots(page, 'keys');
  // Dark mode follows the system (expectAccessible checked it too).
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshots(page, 'keys-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  if (process.env.KEYLEDGER_DOCS_SCREENSHOT) {
    // The README's picture (docs/console-keys.png): only when asked, so
    // that a test run never changes a committed file.
    await page.screenshot({ path: path.resolve('../../docs/console-keys.png') });
  }
});

test('create a key: the secret once, copied, valid; then revoke it', async ({
  page,
  context,
  baseURL,
  requested,
}) => {
  const { admin } = seeded().acme;
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: baseURL });
  await signIn(page, admin.key);
  const name = unique('Browser test key');

  await test.step('create', async () => {
    await page.getByRole('button', { name: 'Create key' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create API key' });
    await expect(dialog).toBeVisible();
    await expectAccessible(page, 'the create dialog');
    await screenshots(page, 'keys-create-dialog');
    await dialog.getByRole('textbox', { name: 'Name' }).fill(name);
    await dialog.getByRole('textbox', { name: 'Description' }).fill('made by the browser tests');
    for (const scope of ALL_SCOPES) {
      const box = dialog.getByRole('checkbox', { name: scope, exact: true });
      if (await box.count()) await box.setChecked(scope === 'keys:read');
    }
    await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  });

  let secret;
  await test.step('the secret, shown once, copied to the clipboard', async () => {
    const dialog = page.getByRole('dialog', { name: 'Your new API key' });
    await expect(dialog).toBeVisible();
    await expect(dialog).toContainText('will not be shown again');
    secret = (await dialog.getByTestId('secret').textContent()).trim();
    expect(secret).toMatch(/^klk_/);
    await dialog.getByRole('button', { name: 'Copy' }).click();
    await expect(dialog.getByRole('status')).toContainText('Copied');
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    expect(copied).toBe(secret);
    await expectAccessible(page, 'the secret dialog');
    await screenshots(page, 'keys-secret-dialog');

    const v = await verify(copied, 'keys:read');
    expect(v).toMatchObject({ valid: true, outcome: 'valid', tenant_id: 'acme', owner: 'alice' });

    await dialog.getByRole('button', { name: 'Done' }).click();
    await expect(dialog).toBeHidden();
    await expect(page.getByTestId('secret')).toHaveCount(0);
    expect(await page.content()).not.toContain(secret);
    await expectSecretNowhere(page, requested, secret);
    const session = await page.evaluate(() => JSON.stringify({ ...sessionStorage }));
    expect(session).not.toContain(secret);
  });

  await test.step('listed as Active, then revoked', async () => {
    await filterByName(page, name);
    await expect(badge(row(page, name), 'Active')).toBeVisible();
    await row(page, name)
      .getByRole('button', { name: `Revoke ${name}` })
      .click();
    const confirm = page.getByRole('alertdialog', { name: `Revoke ${name}?` });
    await expect(confirm).toBeVisible();
    await expectAccessible(page, 'the revoke dialog');
    await screenshots(page, 'keys-revoke-dialog');
    await confirm.getByRole('combobox', { name: 'Reason' }).selectOption('compromised');
    await confirm.getByRole('button', { name: 'Revoke key' }).click();
    await expect(confirm).toBeHidden();
    await expect(badge(row(page, name), 'Revoked')).toBeVisible();
    await expect(row(page, name).getByRole('button', { name: `Revoke ${name}` })).toHaveCount(0);
    const v = await verify(secret, 'keys:read');
    expect(v).toMatchObject({ valid: false, outcome: 'revoked' });
    const listed = await call('GET', `/v1/keys?q=${encodeURIComponent(name)}`, {
      token: admin.key,
    });
    expect(listed.json.keys).toMatchObject([
      { name, status: 'revoked', revoke_reason: 'compromised' },
    ]);
  });
});

test('the create dialog by keyboard: Escape closes it and the focus returns', async ({ page }) => {
  const { admin } = seeded().acme;
  await signIn(page, admin.key);
  const create = page.getByRole('button', { name: 'Create key' });
  await tabTo(page, create);
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: 'Create API key' });
  await expect(dialog).toBeVisible();
  expect(await dialog.evaluate((d) => d.contains(document.activeElement))).toBe(true);
  await page.keyboard.press('Escape');
  await expect(dialog).toBeHidden();
  await expect(create).toBeFocused();
});

test('a refused create is explained in words in the dialog, and makes no key', async ({ page }) => {
  const { admin } = seeded().acme;
  await signIn(page, admin.key);
  const before = await call('GET', '/v1/keys?limit=1', { token: admin.key });
  await page.getByRole('button', { name: 'Create key' }).click();
  const dialog = page.getByRole('dialog', { name: 'Create API key' });
  // A blank name passes the form's own check; the server refuses it (422).
  await dialog.getByRole('textbox', { name: 'Name' }).fill('   ');
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  const alert = dialog.getByRole('alert');
  await expect(alert).toContainText(/name/i);
  await expect(alert).not.toContainText('{');
  await expect(alert).not.toContainText('invalid_field');
  await expect(page.getByRole('dialog', { name: 'Your new API key' })).toHaveCount(0);
  await expectAccessible(page, 'the create dialog with an error');
  const after = await call('GET', '/v1/keys?limit=1', { token: admin.key });
  expect(after.json.keys[0].id).toBe(before.json.keys[0].id);
});

test('rotate with a grace period: the old key is Expiring and still valid', async ({ page }) => {
  const { admin } = seeded().acme;
  const name = unique('Rotate me');
  const old = await mint('acme', 'alice', name, ['keys:read']);
  await signIn(page, admin.key);
  await filterByName(page, name);
  await row(page, name)
    .getByRole('button', { name: `Rotate ${name}` })
    .click();
  const confirm = page.getByRole('alertdialog', { name: `Rotate ${name}?` });
  await expect(confirm).toBeVisible();
  await expectAccessible(page, 'the rotate dialog');
  await confirm.getByRole('spinbutton', { name: 'Grace period (seconds)' }).fill('3600');
  await confirm.getByRole('button', { name: 'Rotate key' }).click();

  const dialog = page.getByRole('dialog', { name: 'Your new API key' });
  await expect(dialog).toBeVisible();
  const fresh = (await dialog.getByTestId('secret').textContent()).trim();
  expect(fresh).not.toBe(old.key);
  await dialog.getByRole('button', { name: 'Done' }).click();

  // The name now has two keys: the old one in grace, the new one active.
  await expect(row(page, name)).toHaveCount(2);
  await expect(badge(row(page, name), 'Expiring')).toHaveCount(1);
  await expect(badge(row(page, name), 'Active')).toHaveCount(1);
  expect(await verify(old.key, 'keys:read')).toMatchObject({ valid: true });
  expect(await verify(fresh, 'keys:read')).toMatchObject({ valid: true, owner: 'alice' });
});

test('filter by status and name, sort by name', async ({ page }) => {
  const { admin, ci, staging } = seeded().acme;
  await signIn(page, admin.key);

  await page.getByRole('combobox', { name: 'Status' }).selectOption({ label: 'Revoked' });
  await expect(row(page, staging.name)).toBeVisible();
  await expect(row(page, ci.name)).toHaveCount(0);
  for (const r of await table(page).locator('tbody tr').all()) {
    await expect(badge(r, 'Revoked')).toBeVisible();
  }

  await page.getByRole('combobox', { name: 'Status' }).selectOption({ label: 'All' });
  await filterKeys(page, 'CI/CD');
  await expect(row(page, ci.name)).toBeVisible();
  await expect(row(page, staging.name)).toHaveCount(0);
  await filterKeys(page, '');
  await expect(row(page, staging.name)).toBeVisible();

  // The Name column of every row shown (the first cell of each body row).
  const names = () =>
    table(page)
      .locator('tbody tr')
      .evaluateAll((rows) => rows.map((r) => r.cells[0].innerText.trim()));
  const collate = (a, b) => a.localeCompare(b, undefined, { sensitivity: 'base' });
  await page.getByRole('button', { name: 'Sort by name' }).click();
  await expect(async () => {
    const first = await names();
    const asc = [...first].sort(collate);
    const desc = [...asc].reverse();
    expect([asc, desc]).toContainEqual(first);
  }).toPass();
  const once = await names();
  await page.getByRole('button', { name: 'Sort by name' }).click();
  await expect(async () => {
    expect(await names()).not.toEqual(once);
  }).toPass();
  const twice = await names();
  expect([...twice].sort(collate)).toEqual([...once].sort(collate));
});

test('pagination walks the pages of a long list', async ({ page }) => {
  // A tenant of its own, so that acme's first page stays what the other
  // tests see.
  const admin = await mint('pagination', 'paula', 'Pagination admin');
  const prefix = unique('Paged');
  for (let i = 0; i < 45; i++) {
    await mint('pagination', 'paula', `${prefix} ${String(i).padStart(2, '0')}`, ['keys:read']);
  }
  await signIn(page, admin.key);
  await filterKeys(page, prefix);
  const rows = table(page).getByRole('row').filter({ hasText: prefix });
  await expect(rows.first()).toBeVisible();
  // The Name cell of each row (its text content: innerText depends on
  // whether the row is laid out yet).
  const shownNames = () => rows.evaluateAll((rs) => rs.map((r) => r.cells[0].textContent.trim()));
  const pages = [await shownNames()];
  expect(pages[0].length).toBeLessThan(45);
  // Forward to the last page: every key once, on one page only.
  while (await page.getByRole('button', { name: 'Next page' }).isEnabled()) {
    const answered = keysListed(page, (q) => q.has('cursor'));
    await page.getByRole('button', { name: 'Next page' }).click();
    await answered;
    await expect(async () => {
      const shown = await shownNames();
      expect(shown.length).toBeGreaterThan(0);
      expect(shown.filter((r) => pages.flat().includes(r))).toEqual([]);
      pages.push(shown);
    }).toPass();
  }
  expect(pages.length).toBeGreaterThan(1);
  expect(new Set(pages.flat()).size).toBe(45);
  // And back to the first.
  for (let i = pages.length - 1; i > 0; i--) {
    await page.getByRole('button', { name: 'Previous page' }).click();
    await expect(async () => expect(await shownNames()).toEqual(pages[i - 1])).toPass();
  }
  await expect(page.getByRole('button', { name: 'Previous page' })).toBeDisabled();
});

test('a key is created with credits, a rate limit and metadata; a bad limit is shown beside its field', async ({ page }) => {
  const { admin } = seeded().acme;
  await signIn(page, admin.key);
  const name = unique('Metered key');
  await page.getByRole('button', { name: 'Create key' }).click();
  const dialog = page.getByRole('dialog', { name: 'Create API key' });
  await dialog.getByRole('textbox', { name: 'Name' }).fill(name);
  await dialog.getByText('Credits, rate limits and metadata').click();
  await dialog.getByLabel('Credits', { exact: true }).fill('500');
  await dialog.getByLabel('Refill', { exact: true }).selectOption('monthly');
  await dialog.getByLabel('Refill amount').fill('1000');
  await dialog.getByLabel('Rate limits').fill('burst=10/1s\nburst=20/1m');
  await dialog.getByLabel('Metadata').fill('{"plan": "pro"}');
  await expectAccessible(page, 'the create dialog with a policy');
  // Two limits of one name: the server refuses it (422), beside the field.
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  await expect(dialog.getByLabel('Rate limits')).toHaveAttribute('aria-invalid', 'true');
  await expect(dialog.getByText(/`burst` is named twice/)).toBeVisible();
  await expect(page.getByRole('dialog', { name: 'Your new API key' })).toHaveCount(0);
  const listed = await call('GET', `/v1/keys?q=${encodeURIComponent(name)}`, { token: admin.key });
  expect(listed.json.keys).toHaveLength(0);

  await dialog.getByLabel('Rate limits').fill('burst=10/1s');
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  const secret = page.getByRole('dialog', { name: 'Your new API key' });
  await expect(secret).toBeVisible();
  const key = (await secret.getByTestId('secret').textContent()).trim();
  await secret.getByRole('button', { name: 'Done' }).click();
  const v = await verify(key, 'keys:read');
  expect(v.credits_remaining).toBe(499);
  expect(v.ratelimits).toMatchObject([{ name: 'burst', limit: 10, remaining: 9 }]);
  const made = (await call('GET', `/v1/keys?q=${encodeURIComponent(name)}`, { token: admin.key })).json.keys[0];
  expect(made.credits.refill).toMatchObject({ amount: 1000, interval: 'monthly' });
  expect(made.meta).toEqual({ plan: 'pro' });
});
