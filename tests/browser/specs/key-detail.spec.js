// A key's own page: its fields, its history, its daily usage; another
// tenant's key id is not found.
import { call, seeded } from '../api.js';
import {
  expect,
  expectAccessible,
  expectChartUses,
  filterKeys,
  screenshots,
  signIn,
  test,
} from '../support.js';

test('a key page shows its history and its usage', async ({ page }) => {
  const { admin, staging } = seeded().acme;
  await signIn(page, admin.key);
  await filterKeys(page, staging.name);
  await page
    .getByRole('table', { name: 'API keys' })
    .getByRole('link', { name: staging.name })
    .click();
  await expect(page).toHaveURL(new RegExp(`#/keys/${staging.id}$`));
  await expect(page.getByRole('heading', { level: 1, name: staging.name })).toBeVisible();
  await expect(page.locator('dl').getByText('Revoked', { exact: true })).toBeVisible();

  // History: every event of the key, as the API has it (created by the
  // operator, revoked as compromised, its uses).
  await expect(page.getByRole('heading', { name: 'History' })).toBeVisible();
  const history = page.getByRole('table', { name: 'History' });
  const events = (await call('GET', `/v1/keys/${staging.id}/history`, { token: admin.key })).json
    .events;
  await expect(history.locator('tbody tr')).toHaveCount(events.length);
  await expect(history).toContainText(/created/i);
  await expect(history).toContainText(/revoked/i);
  await expect(history).toContainText(/compromised/i);
  await expect(history).toContainText(`API Key: ${admin.name}`);

  // Usage: the seed verified it three times, then twice once revoked.
  await expect(page.getByRole('heading', { name: 'Usage' })).toBeVisible();
  await expectChartUses(page, { valid: 3, revoked: 2, expired: 0, scope: 0 });
  await expectAccessible(page, 'the key detail page');
  await screenshots(page, 'key-detail');
});

test("another tenant's key id is not found, and shows nothing of it", async ({ page }) => {
  const { admin } = seeded().acme;
  const [theirs] = seeded().globex.keys;
  await signIn(page, admin.key);
  await page.goto(`/#/keys/${theirs.id}`);
  await expect(page.getByText(/not found/i).first()).toBeVisible();
  await expect(page.getByRole('main')).not.toContainText(theirs.name);
  await expect(page.getByRole('main')).not.toContainText('{');
  await expectAccessible(page, 'the key detail page of an unknown key');
});
