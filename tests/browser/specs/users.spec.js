// Removing a user: the dialog lists exactly the keys the cascade revokes,
// and the result lists what it revoked.
import { call, mint, seeded, unique, verify } from '../api.js';
import { expect, expectAccessible, open, screenshots, signIn, test } from '../support.js';

test('removing a user lists the cascade before and after', async ({ page }) => {
  const { admin } = seeded().acme;
  const user = unique('dave').replace(' ', '-');
  const laptop = await mint('acme', user, 'Dave laptop', ['keys:read']);
  const ci = await mint('acme', user, 'Dave CI', ['keys:read']);
  const gone = await mint('acme', user, 'Dave old key', ['keys:read']);
  await call('POST', `/v1/keys/${gone.id}/revoke`, { token: admin.key });
  const others = await mint('acme', 'alice', `${user} is not the owner`, ['keys:read']);

  await signIn(page, admin.key);
  await open(page, 'Users');
  await expectAccessible(page, 'the users page');
  await screenshots(page, 'users');

  await page.getByRole('textbox', { name: 'User id' }).fill(user);
  await page.getByRole('button', { name: 'Review removal' }).click();
  const dialog = page.getByRole('alertdialog', { name: `Remove user ${user}?` });
  await expect(dialog).toBeVisible();
  const before = dialog.getByRole('list', { name: 'Keys that will be revoked' });
  await expect(before.getByRole('listitem')).toHaveCount(2);
  for (const k of [laptop, ci]) {
    await expect(before).toContainText(k.name);
    await expect(before).toContainText(k.id);
  }
  await expect(before).not.toContainText(gone.id);
  await expect(before).not.toContainText(others.id);
  await expectAccessible(page, 'the remove-user dialog');
  await screenshots(page, 'users-remove-dialog');

  await dialog.getByRole('button', { name: 'Remove user' }).click();
  await expect(page.getByRole('status').filter({ hasText: `Removed ${user}` })).toBeVisible();
  const after = page.getByRole('list', { name: 'Revoked keys' });
  await expect(after.getByRole('listitem')).toHaveCount(2);
  for (const k of [laptop, ci]) await expect(after).toContainText(k.id);
  await screenshots(page, 'users-removed');

  for (const k of [laptop, ci]) {
    expect(await verify(k.key)).toMatchObject({ valid: false, outcome: 'revoked' });
  }
  expect(await verify(others.key)).toMatchObject({ valid: true });
});

test('a user without active keys: the dialog says so', async ({ page }) => {
  const { admin } = seeded().acme;
  const user = unique('nobody').replace(' ', '-');
  await signIn(page, admin.key);
  await open(page, 'Users');
  await page.getByRole('textbox', { name: 'User id' }).fill(user);
  await page.getByRole('button', { name: 'Review removal' }).click();
  const dialog = page.getByRole('alertdialog', { name: `Remove user ${user}?` });
  await expect(dialog).toContainText('No active keys');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(dialog).toBeHidden();
});
