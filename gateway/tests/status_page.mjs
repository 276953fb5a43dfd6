// Loads the gateway status page in headless Debian Chromium (playwright-core), prints
// what a person would read there as JSON, and saves a screenshot.
// usage: node gateway/tests/status_page.mjs BASE_URL SCREENSHOT.png
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [base, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wattshare-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 800 },
});
try {
  const page = await context.newPage();
  const response = await page.goto(base + '/', { waitUntil: 'load', timeout: 15000 });
  const cells = (selector) => page.$$eval(selector, (rows) =>
    rows.map((row) => Array.from(row.querySelectorAll('th,td')).map((c) => c.innerText.trim())));
  const result = {
    status: response.status(),
    title: await page.title(),
    summary: await cells('#summary tr'),
    devices: await page.$$eval('#devices tr.device', (rows) => rows.map((row) => ({
      id: row.dataset.device,
      revoked: row.classList.contains('revoked'),
      cells: Array.from(row.querySelectorAll('td')).map((c) => c.innerText.trim()),
    }))),
    deviceHeader: (await cells('#devices tr'))[0],
    rejects: await cells('#rejects tr.reject'),
  };
  await page.screenshot({ path: screenshot, fullPage: true });
  const metrics = await page.goto(base + '/metrics');
  result.metrics = await metrics.text();
  process.stdout.write(JSON.stringify(result));
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
