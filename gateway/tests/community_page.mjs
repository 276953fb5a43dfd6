// Opens the community page (http://.../community) or a saved report.html (file://...) in
// headless Debian Chromium (playwright-core), waits for the charts, and prints what a
// person would see as JSON: console errors, members table, the names and figures drawn
// in the charts (ECharts renders SVG text), and a full-page screenshot.
// usage: node gateway/tests/community_page.mjs URL SCREENSHOT.png
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wattshare-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 900 },
});
const errors = [];
const requests = [];
try {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('request', (r) => requests.push(r.url()));
  const response = await page.goto(url, { waitUntil: 'load', timeout: 30000 });
  await page.waitForFunction(() => window.wattshareCharts && (window.wattshareCharts.error
    || (window.wattshareCharts.ready && Object.keys(window.wattshareCharts.charts).every(
      (id) => window.wattshareCharts.finished[id]))), null, { timeout: 20000 });
  const result = await page.evaluate(() => {
    const chartText = (id) => Array.from(document.querySelectorAll(`#${id} svg text`))
      .map((t) => t.textContent.trim()).filter(Boolean);
    const series = (id) => {
      const c = window.wattshareCharts.charts[id];
      if (!c) return null;
      return c.getOption().series.map((s) => ({
        type: s.type, name: s.name || null,
        points: s.type === 'sankey' ? s.links.length : s.data.length,
        links: s.type === 'sankey' ? s.links.map((l) => [l.source, l.target, l.wh]) : null,
      }));
    };
    const cells = (sel) => Array.from(document.querySelectorAll(sel)).map((row) =>
      Array.from(row.querySelectorAll('th,td')).map((c) => c.innerText.trim()));
    return {
      title: document.title,
      ready: window.wattshareCharts.ready,
      error: window.wattshareCharts.error,
      membersHeader: cells('#members tr')[0] || [],
      members: cells('#members tr.member'),
      intervals: cells('#intervals tr.interval'),
      cards: cells('#cards .card').map((c) => c.join(' ')),
      verifyCommand: (document.getElementById('verify-command') || {}).innerText || null,
      sankeyText: chartText('sankey'),
      timelineText: chartText('timeline'),
      membersChartText: chartText('members-chart'),
      series: { sankey: series('sankey'), timeline: series('timeline'),
                members: series('members-chart') },
      svgSizes: ['sankey', 'timeline', 'members-chart'].map((id) => {
        const svg = document.querySelector(`#${id} svg`);
        return svg ? [svg.clientWidth, svg.clientHeight] : null;
      }),
      proofLinks: Array.from(document.querySelectorAll('#proofs a')).map((a) => a.download),
    };
  });
  result.status = response ? response.status() : null;
  result.errors = errors;
  result.externalRequests = requests.filter((u) => !u.startsWith('data:') &&
    !u.startsWith('file:') && !u.startsWith(new URL(url).origin));
  await page.screenshot({ path: screenshot, fullPage: true });
  process.stdout.write(JSON.stringify(result));
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
