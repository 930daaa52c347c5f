// The audit page: the trail with actors, cascades grouped under their
// UserRemoved, filters that narrow, state as of a time, chain status and
// the evidence bundle's command.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { seeded } from '../api.js';
import { expect, expectAccessible, open, screenshots, signIn, test } from '../support.js';

const trail = (page) => page.getByRole('list', { name: 'Audit trail' });
const entries = (page) => trail(page).locator(':scope > li');

async function apply(page) {
  await page.getByRole('button', { name: 'Apply filters' }).click();
}

/** The texts of the trail's top-level entries once they settle. */
async function settled(page) {
  await page.waitForLoadState('networkidle');
  return entries(page).allInnerTexts();
}

test('the trail reads who did what, with the cascade grouped', async ({ page }) => {
  const { admin, staging, erin } = seeded().acme;
  await signIn(page, admin.key);
  await open(page, 'Audit');
  await expect(entries(page).first()).toBeVisible();

  const revoked = entries(page)
    .filter({ hasText: staging.name })
    .filter({ hasText: /revoked/i });
  await expect(revoked.first()).toBeVisible();
  await expect(revoked.first()).toContainText(`API Key: ${admin.name}`);

  const removal = entries(page)
    .filter({ hasText: erin.user })
    .filter({
      has: page.getByRole('list', { name: 'Revoked by this removal' }),
    });
  await expect(removal).toHaveCount(1);
  const group = removal.getByRole('list', { name: 'Revoked by this removal' });
  await expect(group.getByRole('listitem')).toHaveCount(2);
  for (const k of erin.keys) await expect(group).toContainText(k.name);
  // Grouped, not listed again at the top level.
  for (const k of erin.keys) {
    await expect(
      entries(page).filter({ hasText: k.name }).filter({ hasNotText: erin.user }),
    ).toHaveCount(0);
  }

  await expect(page.getByRole('region', { name: 'Chain status' })).toContainText('Chain intact');
  await expect(page.getByRole('region', { name: 'Latest checkpoint' })).toBeVisible();
  await expect(
    page.locator('code').filter({ hasText: 'keyledger audit verify-bundle' }),
  ).toHaveCount(1);

  await expectAccessible(page, 'the audit page');
  await screenshots(page, 'audit');
});

test('the filters narrow the trail', async ({ page }) => {
  const { admin, ci } = seeded().acme;
  await signIn(page, admin.key);
  await open(page, 'Audit');
  await expect(entries(page).first()).toBeVisible();
  const all = await settled(page);

  // Applies a filter: fewer entries, each one `matches`; then clears it.
  const narrows = async (set, matches) => {
    await set();
    await apply(page);
    await expect(async () => {
      const shown = await entries(page).allInnerTexts();
      expect(shown.length).toBeGreaterThan(0);
      expect(shown.length).toBeLessThan(all.length);
      for (const e of shown) expect(e).toMatch(matches);
    }).toPass();
    await page.getByRole('button', { name: 'Clear filters' }).click();
    await expect(async () => {
      expect((await entries(page).allInnerTexts()).length).toBeGreaterThanOrEqual(all.length);
    }).toPass();
  };

  await test.step('by type', () =>
    narrows(
      () => page.getByRole('combobox', { name: 'Type' }).selectOption('KeyRevoked'),
      /revoked/i,
    ));
  await test.step('by key', () =>
    narrows(() => page.getByRole('textbox', { name: 'Key id' }).fill(ci.id), ci.name));
  await test.step('by actor', () =>
    narrows(() => page.getByRole('textbox', { name: 'Actor' }).fill('operator'), /operator/i));
  await test.step('by date: nothing happened tomorrow', async () => {
    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    await page.getByLabel('From', { exact: true }).fill(tomorrow);
    await apply(page);
    await expect(entries(page)).toHaveCount(0);
    await page.getByRole('button', { name: 'Clear filters' }).click();
    await expect(entries(page).first()).toBeVisible();
  });
});

test('the state as of a time lists the keys as they were', async ({ page }) => {
  const { admin, ci } = seeded().acme;
  await signIn(page, admin.key);
  await open(page, 'Audit');
  // An hour from now: every seeded key as it is (datetime-local, local time).
  const at = await page.evaluate(() => {
    const d = new Date(Date.now() + 3_600_000);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  });
  await page.getByLabel('State as of').fill(at);
  await page.getByRole('button', { name: 'Show state' }).click();
  const state = page.getByRole('table', { name: 'State' });
  await expect(state).toContainText(ci.name);
  await expectAccessible(page, 'the audit page with a past state');
});

test('the evidence bundle downloads and verifies offline with the command shown', async ({
  page,
}) => {
  const { admin } = seeded().acme;
  await signIn(page, admin.key);
  await open(page, 'Audit');
  const command = page.locator('code').filter({ hasText: 'keyledger audit verify-bundle' });
  await expect(command).toContainText('--public-key');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download bundle' }).click(),
  ]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyledger-bundle-'));
  try {
    await download.saveAs(path.join(dir, download.suggestedFilename()));
    // The command as shown, run with the binary under test in the folder
    // the bundle was saved to: no server, no data directory.
    const [program, ...args] = (await command.innerText()).trim().split(/\s+/);
    expect(program).toBe('keyledger');
    expect(args).toContain(download.suggestedFilename());
    const bin = process.env.KEYLEDGER_BIN;
    expect(bin, 'KEYLEDGER_BIN (set by scripts/browser)').toBeTruthy();
    const run = () => execFileSync(bin, args, { cwd: dir, encoding: 'utf8', stdio: 'pipe' });
    expect(run().length).toBeGreaterThan(0); // exit 0, or it throws
    // The same command refuses the bundle once an event in it is changed.
    const file = path.join(dir, download.suggestedFilename());
    const original = fs.readFileSync(file, 'utf8');
    const changed = original.replace('Console admin', 'Console admiN');
    expect(changed).not.toBe(original);
    fs.writeFileSync(file, changed);
    expect(run).toThrow();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
