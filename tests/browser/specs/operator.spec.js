// The operator token: pick a tenant, act as a named user, switch tenant.
import { call, seeded, unique } from '../api.js';
import {
  expect,
  expectAccessible,
  filterKeys,
  screenshots,
  signInOperator,
  test,
} from '../support.js';

test('the operator picks a tenant and acts as a user', async ({ page, requested }) => {
  const { admin, ci } = seeded().acme;
  const [theirs] = seeded().globex.keys;
  await page.goto('/');
  await page.getByLabel('API key or operator token').fill(process.env.KEYLEDGER_OPERATOR_TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByRole('textbox', { name: 'Tenant' })).toBeVisible();
  await expectAccessible(page, 'the operator sign-in');
  await screenshots(page, 'sign-in-operator');

  await signInOperator(page, 'acme', 'alice');
  await filterKeys(page, ci.name);
  await expect(page.getByRole('table', { name: 'API keys' }).getByText(ci.name)).toBeVisible();
  await expect(page.locator('body')).not.toContainText(theirs.name);
  expect(requested.filter((u) => u.includes(process.env.KEYLEDGER_OPERATOR_TOKEN))).toEqual([]);

  // A key made as alice is attributed to her in the trail.
  const name = unique('Made by the operator as alice');
  await page.getByRole('button', { name: 'Create key' }).click();
  const dialog = page.getByRole('dialog', { name: 'Create API key' });
  await dialog.getByRole('textbox', { name: 'Name' }).fill(name);
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  await page
    .getByRole('dialog', { name: 'Your new API key' })
    .getByRole('button', { name: 'Done' })
    .click();
  const found = await call('GET', `/v1/keys?q=${encodeURIComponent(name)}`, { token: admin.key });
  expect(found.json.keys).toHaveLength(1);
  expect(found.json.keys[0].owner ?? found.json.keys[0].created_by).toBe('alice');
  const trail = await call('GET', `/v1/audit?key_id=${found.json.keys[0].id}&type=KeyCreated`, {
    token: admin.key,
  });
  const [made] = trail.json.events;
  expect(made, 'the KeyCreated event of the key made as alice').toBeTruthy();
  expect(made.actor.display).toMatch(/alice/);

  // Another tenant: its keys, not acme's.
  await page.getByRole('button', { name: 'Switch tenant' }).click();
  await page.getByRole('textbox', { name: 'Tenant' }).fill('globex');
  await page.getByRole('textbox', { name: 'Act as user (optional)' }).fill('');
  await page.getByRole('button', { name: 'Continue' }).click();
  await expect(page.getByText('globex').first()).toBeVisible();
  // The list starts afresh: acme's name filter says nothing about globex.
  await expect(page.getByRole('searchbox', { name: 'Filter by name' })).toHaveValue('');
  await filterKeys(page, 'Globex');
  await expect(page.getByRole('table', { name: 'API keys' }).getByText(theirs.name)).toBeVisible();
  await expect(page.locator('body')).not.toContainText(ci.name);

  await page.getByRole('button', { name: 'Sign out' }).click();
  expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
});
