// Changing a key from its page: the dialog sends only what changed
// (PATCH /v1/keys/{id}), the page shows the key as changed, its history
// shows the change with its before and after, and a refusal is shown
// beside the field it names, changing nothing.
import { call, mint, seeded, unique } from '../api.js';
import { expect, expectAccessible, signIn, test } from '../support.js';

test('a key is changed from its page, and its history shows the change', async ({ page }) => {
  const { admin } = seeded().acme;
  const name = unique('Billing worker');
  const k = await mint('acme', 'alice', name, ['keys:read', 'audit:read'], {
    credits: { remaining: 50 },
    limits: [{ name: 'burst', limit: 10, duration: 1000 }],
  });
  await signIn(page, admin.key);
  await page.goto(`/#/keys/${k.id}`);
  await expect(page.getByRole('heading', { level: 1, name })).toBeVisible();
  const fields = page.locator('dl');
  await expect(fields).toContainText('50 left');
  await expect(fields).toContainText('burst: 10 per 1s');

  await page.getByRole('button', { name: 'Change key' }).click();
  const dialog = page.getByRole('dialog', { name: `Change ${name}` });
  await expect(dialog).toBeVisible();
  await expectAccessible(page, 'the change dialog');
  const renamed = `${name} v2`;
  await dialog.getByLabel('Name').fill(renamed);
  await dialog.getByLabel('Rate limits').fill('burst=20/1s\nhourly=1000/1h');
  await dialog.getByLabel('Metadata').fill('{"team": "billing"}');
  await dialog.getByRole('checkbox', { name: 'audit:read' }).uncheck();
  await dialog.getByRole('button', { name: 'Save changes' }).click();
  await expect(dialog).toBeHidden();

  // The page again, from the API.
  await expect(page.getByRole('heading', { level: 1, name: renamed })).toBeVisible();
  await expect(fields).toContainText('burst: 20 per 1s; hourly: 1000 per 1h');
  await expect(fields).toContainText('{"team":"billing"}');
  const key = (await call('GET', `/v1/keys/${k.id}`, { token: admin.key })).json;
  expect(key.name).toBe(renamed);
  expect(key.scopes).toEqual(['keys:read']);
  expect(key.credits.remaining).toBe(50);
  expect(key.meta).toEqual({ team: 'billing' });

  // The history: one change, with what it was and what it became.
  const history = page.getByRole('table', { name: 'History' });
  const change = history.locator('tbody tr', { hasText: 'changed' });
  await expect(change).toHaveCount(1);
  await expect(change).toContainText(`name “${name}” → “${renamed}”`);
  await expect(change).toContainText('scopes keys:read, audit:read → keys:read');
  await expect(change).toContainText('rate limits burst 10/1000 ms → burst 20/1000 ms, hourly 1000/3600000 ms');
  await expect(change).toContainText(`API Key: ${admin.name}`);
  await expectAccessible(page, 'a changed key');
});

test('a refused change is shown beside its field and changes nothing', async ({ page }) => {
  const { admin } = seeded().acme;
  const name = unique('Refused change');
  const k = await mint('acme', 'alice', name, ['keys:read']);
  await signIn(page, admin.key);
  await page.goto(`/#/keys/${k.id}`);
  await page.getByRole('button', { name: 'Change key' }).click();
  const dialog = page.getByRole('dialog', { name: `Change ${name}` });

  // The server refuses two limits of one name, naming `limits[1].name`.
  const limits = dialog.getByLabel('Rate limits');
  await limits.fill('burst=1/1s\nburst=2/1m');
  await dialog.getByRole('button', { name: 'Save changes' }).click();
  await expect(limits).toHaveAttribute('aria-invalid', 'true');
  await expect(dialog.locator(`#${await limits.getAttribute('id')}-error`)).toContainText('named twice');

  // More credits than a key may hold, refused beside the credits.
  await limits.fill('');
  const credits = dialog.getByLabel('Credits', { exact: true });
  await credits.fill('2000000000000');
  await dialog.getByRole('button', { name: 'Save changes' }).click();
  await expect(credits).toHaveAttribute('aria-invalid', 'true');
  await expect(limits).not.toHaveAttribute('aria-invalid', 'true');
  await expect(dialog.locator(`#${await credits.getAttribute('id')}-error`)).toContainText('at most');
  let key = (await call('GET', `/v1/keys/${k.id}`, { token: admin.key })).json;
  expect(key.credits).toBeNull();

  // Fixed, it saves.
  await credits.fill('10');
  await dialog.getByLabel('Refill', { exact: true }).selectOption('daily');
  await dialog.getByLabel('Refill amount').fill('10');
  await dialog.getByRole('button', { name: 'Save changes' }).click();
  await expect(dialog).toBeHidden();
  key = (await call('GET', `/v1/keys/${k.id}`, { token: admin.key })).json;
  expect(key.limits).toEqual([]);
  expect(key.credits).toEqual({ remaining: 10, refill: expect.objectContaining({ amount: 10, interval: 'daily' }) });

  // Metadata that is not an object: refused before anything is sent.
  await page.getByRole('button', { name: 'Change key' }).click();
  const again = page.getByRole('dialog', { name: `Change ${name}` });
  const meta = again.getByLabel('Metadata');
  await meta.fill('[1, 2]');
  await again.getByRole('button', { name: 'Save changes' }).click();
  await expect(meta).toHaveAttribute('aria-invalid', 'true');
  await expect(again).toBeVisible();
  await expectAccessible(page, 'a refused change');
  const history = (await call('GET', `/v1/keys/${k.id}/history`, { token: admin.key })).json.events;
  expect(history.filter((e) => e.type === 'KeyUpdated')).toHaveLength(1);
});
