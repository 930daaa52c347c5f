// Sign in, sign out, the session's storage, the headers of the page.
import { seeded } from '../api.js';
import {
  expect,
  expectAccessible,
  expectSecretNowhere,
  guardNetwork,
  screenshots,
  signIn,
  tabTo,
  test,
  watchConsole,
} from '../support.js';

test('the console is served with a strict Content-Security-Policy', async ({ request }) => {
  const res = await request.get('/');
  expect(res.status()).toBe(200);
  expect(res.headers()['content-type']).toMatch(/^text\/html/);
  const csp = res.headers()['content-security-policy'];
  expect(csp, 'a Content-Security-Policy header').toBeTruthy();
  expect(csp).toContain("default-src 'none'");
  expect(csp).toContain("script-src 'self'");
  expect(csp).not.toContain('unsafe-inline');
  expect(csp).not.toContain('unsafe-eval');
  expect(csp).toContain("frame-ancestors 'none'");
  expect(res.headers()['x-frame-options']).toBe('DENY');
});

test('the sign-in page is accessible', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByRole('heading', { name: 'Sign in to keyledger' })).toBeVisible();
  await expectAccessible(page, 'the sign-in page');
  await screenshots(page, 'sign-in');
});

test('signing in works with the keyboard alone', async ({ page }) => {
  const { admin } = seeded().acme;
  await page.goto('/');
  await tabTo(page, page.getByLabel('API key or operator token'));
  await page.keyboard.type(admin.key);
  await page.keyboard.press('Enter');
  // Once the list has loaded, the focus is on the page's heading (as after
  // every page change); the menu is a few Shift+Tabs back from it, however
  // many keys (each a link and two buttons) the list holds.
  await expect(page.getByRole('table', { name: 'API keys' })).toBeVisible();
  await expect(page.getByRole('heading', { level: 1, name: 'API keys' })).toBeFocused();
  await tabTo(
    page,
    page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Usage' }),
    { back: true, max: 10 },
  );
  await page.keyboard.press('Enter');
  await expect(page.getByRole('heading', { level: 1, name: 'Usage' })).toBeVisible();
});

test('a wrong key is refused in words, not raw JSON', async ({ page }) => {
  await page.goto('/');
  await page.getByLabel('API key or operator token').fill('not-a-key-at-all');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const alert = page.getByRole('alert');
  await expect(alert).toBeVisible();
  await expect(alert).not.toContainText('{');
  await expect(alert).not.toContainText('"code"');
  await expect(page.getByRole('navigation', { name: 'Main' })).toHaveCount(0);
  expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
  await expectAccessible(page, 'the sign-in page with an error');
});

test('signing in keeps the key in sessionStorage only; signing out clears it', async ({
  page,
  requested,
}) => {
  const { admin } = seeded().acme;
  await signIn(page, admin.key);
  await expect(page).toHaveURL(/#\/keys$/);
  await expect(page.getByText('acme').first()).toBeVisible();
  const session = await page.evaluate(() => JSON.stringify({ ...sessionStorage }));
  expect(session).toContain(admin.key);
  await expectSecretNowhere(page, requested, admin.key);

  // A reload keeps the session (sessionStorage lives as long as the tab).
  await page.reload();
  await expect(page.getByRole('navigation', { name: 'Main' })).toBeVisible();

  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page.getByRole('heading', { name: 'Sign in to keyledger' })).toBeVisible();
  expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
  await expectSecretNowhere(page, requested, admin.key);
});

// The two guards every test runs under can fail: a request elsewhere is
// refused and seen, and the browser reports a CSP violation in words the
// console watch recognises (an injected inline script is refused).
test('the network guard and the CSP watch see what they must', async ({ browser, baseURL }) => {
  const context = await browser.newContext({ baseURL });
  const offsite = await guardNetwork(context, new URL(baseURL).origin);
  const page = await context.newPage();
  const seen = watchConsole(page);
  await page.goto('/');
  await expect(page.getByRole('heading', { name: 'Sign in to keyledger' })).toBeVisible();

  const fetched = await page.evaluate(() =>
    fetch('https://cdn.example.com/lib.js').then(
      () => 'fetched',
      () => 'refused',
    ),
  );
  expect(fetched).toBe('refused');
  await page.evaluate(() => {
    const s = document.createElement('script');
    s.textContent = 'window.injected = true';
    document.body.append(s);
  });
  expect(await page.evaluate(() => window.injected)).toBeUndefined();
  await expect.poll(() => seen.csp.length).toBeGreaterThan(0);
  // The CSP refuses such requests inside the page before the guard sees
  // them; the guard's own refusal is shown with a navigation elsewhere
  // (the same server, named by another origin).
  const elsewhere = baseURL.replace('127.0.0.1', 'localhost');
  await expect(page.goto(elsewhere)).rejects.toThrow();
  await expect.poll(() => offsite.length).toBeGreaterThan(0);
  await context.close();
});
