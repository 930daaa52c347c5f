// Another tenant's data never appears: not in the keys, usage or audit
// pages, not by searching, not by typing its key id.
import { seeded } from '../api.js';
import { expect, filterKeys, open, signIn, test } from '../support.js';

test("signed in as acme, nothing of globex's keys is ever shown", async ({ page }) => {
  const { admin } = seeded().acme;
  const theirs = seeded().globex.keys;
  await signIn(page, admin.key);
  const body = page.locator('body');
  const noneOfTheirs = async () => {
    for (const k of theirs) {
      await expect(body).not.toContainText(k.name);
      await expect(body).not.toContainText(k.id);
    }
  };

  await expect(
    page.getByRole('table', { name: 'API keys' }).locator('tbody tr').first(),
  ).toBeVisible();
  await noneOfTheirs();
  await filterKeys(page, 'Globex');
  await expect(page.getByRole('table', { name: 'API keys' }).getByText(/Globex/)).toHaveCount(0);
  await noneOfTheirs();

  await open(page, 'Usage');
  await expect(
    page.getByRole('combobox', { name: 'Key' }).locator('option', { hasText: /Globex/ }),
  ).toHaveCount(0);
  await noneOfTheirs();

  await open(page, 'Audit');
  await expect(
    page.getByRole('list', { name: 'Audit trail' }).locator(':scope > li').first(),
  ).toBeVisible();
  await noneOfTheirs();
  await page.getByRole('textbox', { name: 'Key id' }).fill(theirs[0].id);
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await expect(page.getByRole('list', { name: 'Audit trail' }).locator(':scope > li')).toHaveCount(
    0,
  );
  await noneOfTheirs();

  for (const k of theirs) {
    await page.goto(`/#/keys/${k.id}`);
    await expect(page.getByText(/not found/i).first()).toBeVisible();
    await noneOfTheirs();
  }
});
