// A keys:read key sees the keys but no write action, and is told why each
// section it lacks a scope for is empty.
import { seeded } from '../api.js';
import { expect, expectAccessible, filterKeys, screenshots, signIn, test } from '../support.js';

test('a keys:read key sees no write action, and the reason', async ({ page }) => {
  const { reader, ci } = seeded().acme;
  await signIn(page, reader.key);
  await filterKeys(page, ci.name);
  await expect(page.getByRole('table', { name: 'API keys' }).getByText(ci.name)).toBeVisible();
  await expect(page.getByRole('button', { name: 'Create key' })).toHaveCount(0);
  await expect(page.getByRole('button', { name: /^Revoke / })).toHaveCount(0);
  await expect(page.getByRole('button', { name: /^Rotate / })).toHaveCount(0);
  await expect(
    page.getByRole('status').filter({ hasText: 'needs the keys:write scope' }),
  ).toBeVisible();
  await expectAccessible(page, 'the keys page of a keys:read key');
  await screenshots(page, 'keys-read-only');

  for (const [route, heading, scope] of [
    ['users', 'Users', 'users:remove'],
    ['usage', 'Usage', 'usage:read'],
    ['audit', 'Audit', 'audit:read'],
  ]) {
    await page.goto(`/#/${route}`);
    await expect(page.getByRole('heading', { level: 1, name: heading })).toBeVisible();
    await expect(
      page.getByRole('status').filter({ hasText: `needs the ${scope} scope` }),
    ).toBeVisible();
    await expect(page.getByRole('alert')).toHaveCount(0);
    await expect(page.getByRole('main')).not.toContainText('{');
  }
  await expect(page.getByRole('button', { name: 'Review removal' })).toHaveCount(0);
});
