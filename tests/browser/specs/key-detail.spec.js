// A key's own page: its fields, its history, its daily usage; another
// tenant's key id is not found.
import { seeded } from '../api.js';
import { expect, expectAccessible, filterKeys, screenshots, signIn, test } from '../support.js';

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

  // History: created by the operator, used, revoked with its reason.
  await expect(page.getByRole('heading', { name: 'History' })).toBeVisible();
  const main = page.getByRole('main');
  await expect(main).toContainText(/created/i);
  await expect(main).toContainText(/revoked/i);
  await expect(main).toContainText(/compromised/i);

  // Usage: the chart (with a label) and the table fallback with its uses.
  await expect(page.getByRole('heading', { name: 'Usage' })).toBeVisible();
  await expect(main.locator('canvas[aria-label]')).toHaveCount(1);
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
