// Playwright configuration for the console's browser tests. Run them with
// scripts/browser, which starts the server and sets KEYLEDGER_URL and
// KEYLEDGER_OPERATOR_TOKEN; see docs/architecture.md ("Browser tests").
import { defineConfig } from '@playwright/test';

const baseURL = process.env.KEYLEDGER_URL;
if (!baseURL) {
  throw new Error('KEYLEDGER_URL is not set: run the browser tests with scripts/browser');
}

export default defineConfig({
  testDir: './specs',
  globalSetup: './seed.js',
  // The specs share one server and one machine of 2 cores: one at a time.
  workers: 1,
  fullyParallel: false,
  forbidOnly: !!process.env.CI,
  retries: 0,
  timeout: 30_000,
  expect: { timeout: 5_000 },
  reporter: [['list']],
  // What a failing test leaves (its screenshot): scripts/browser names it.
  outputDir: process.env.KEYLEDGER_TEST_RESULTS || '../../target/browser-test-results',
  use: {
    baseURL,
    browserName: 'chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    launchOptions: { executablePath: process.env.CHROMIUM || '/usr/bin/chromium' },
    // Nothing but the server is ever reached (support.js blocks the rest);
    // no service workers to bypass that.
    serviceWorkers: 'block',
    // No traces: they would hold the (throwaway) secrets the tests create.
    trace: 'off',
    screenshot: 'only-on-failure',
  },
});
