// The usage page: summary figures, the stacked Chart.js bars read from the
// page, the window, the per-key drill-down and the CSV.
import fs from 'node:fs';
import { seeded } from '../api.js';
import {
  chartData,
  chartSum as sum,
  expect,
  expectAccessible,
  expectChartUses,
  open,
  screenshots,
  signIn,
  test,
} from '../support.js';

test('the usage chart has stacked bars for the seeded uses', async ({ page }) => {
  const { admin } = seeded().acme;
  await signIn(page, admin.key);
  await open(page, 'Usage');
  await page
    .getByRole('radio', { name: '30 days' })
    .or(page.getByRole('button', { name: '30 days' }))
    .click();

  await expect(page.getByTestId('usage-total')).toHaveText(/[1-9]/);
  await expect(page.getByTestId('usage-success-rate')).toHaveText(/\d+(\.\d+)?\s*%/);

  await expect(async () => {
    const data = await chartData(page);
    expect(data, 'a Chart.js chart on the canvas').not.toBeNull();
    expect(data.type).toBe('bar');
    expect(data.stacked).toBe(true);
    expect(data.labels).toBe(30);
    // Valid uses, and every rejection outcome the seed made, have bars.
    expect(sum(data, /valid/i) - sum(data, /invalid/i)).toBeGreaterThan(0);
    for (const outcome of [/revoked/i, /expired/i, /scope/i]) {
      expect(sum(data, outcome), `bars for ${outcome}`).toBeGreaterThan(0);
    }
  }).toPass();
  const fallback = page.getByRole('table', { name: 'Daily usage' });
  await expect(fallback).toHaveCount(1);
  await expect(fallback.locator('tbody tr')).toHaveCount(30);

  await expectAccessible(page, 'the usage page');
  // Fits 390 px with a 100-character key name among the Key select's options.
  await screenshots(page, 'usage');

  await page
    .getByRole('radio', { name: '7 days' })
    .or(page.getByRole('button', { name: '7 days' }))
    .click();
  await expect(async () => expect((await chartData(page)).labels).toBe(7)).toPass();
});

test('drilling down to one key shows its uses only', async ({ page }) => {
  const { admin, ci } = seeded().acme;
  await signIn(page, admin.key);
  await open(page, 'Usage');
  const select = page.getByRole('combobox', { name: 'Key' });
  const option = select.locator('option', { hasText: ci.name });
  await expect(option).toHaveCount(1);
  await select.selectOption(await option.getAttribute('value'));
  // The seed verified the CI key six times as valid and twice with a scope
  // it lacks, and nothing else used it.
  await expectChartUses(page, { valid: 6, revoked: 0, expired: 0, scope: 2 });
  await expect(page.getByTestId('usage-total')).toHaveText(/\b8\b/);
});

test('the CSV download holds the daily rows', async ({ page }) => {
  const { admin } = seeded().acme;
  await signIn(page, admin.key);
  await open(page, 'Usage');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page
      .getByRole('link', { name: 'Download CSV' })
      .or(page.getByRole('button', { name: 'Download CSV' }))
      .click(),
  ]);
  const text = fs.readFileSync(await download.path(), 'utf8');
  const lines = text.trim().split('\n');
  expect(lines[0]).toMatch(/day/);
  expect(lines[0]).toMatch(/valid/);
  expect(lines.length).toBeGreaterThan(1);
  expect(text).not.toContain(admin.key);
});
