// Drives headless Chromium through drowsy's loading page.
//
//   node check.js MODE URL ROUTE OUTDIR [TAG]
//
// MODE `js`:   the page must show "Waking ROUTE…", list progress steps from
//              /.drowsy/events, then reload by itself into the guest's answer.
// MODE `nojs`: JavaScript off; the page must still show the loading page and
//              reach the guest's answer through its <noscript> meta refresh.
// MODE `fail`: the guest cannot start; the page must say "could not wake",
//              stop its spinner, offer "Try again", and not reload by itself.
//
// MODE `dashboard`:      URL is drowsy's admin `/`; the dashboard must list
//              every route, go live over /dashboard/events, wake ROUTE from
//              its Wake button (the row then shows `running`), and its Logs
//              link must show the guest's journal. No console errors.
// MODE `dashboard-nojs`: JavaScript off: the same page as a static table,
//              without the (useless) buttons.
//
// BROWSER_CHECK_COLOR_SCHEME=dark renders with prefers-color-scheme: dark.
//
// Screenshots go to OUTDIR, named after TAG (default MODE); every failure names what did not happen.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [mode, url, route, outDir, tag = mode] = process.argv.slice(2);
const MODES = ['js', 'nojs', 'fail', 'dashboard', 'dashboard-nojs'];
if (!MODES.includes(mode) || !url || !route || !outDir) {
  console.error(`usage: node check.js ${MODES.join('|')} URL ROUTE OUTDIR [TAG]`);
  process.exit(2);
}
const deadline = (s) => Number(process.env[`BROWSER_CHECK_${s}`] || 0);
// How long each stage may take (ms): the loading page, the first progress
// step, and the guest's answer after the first load.
const LOAD_MS = deadline('LOAD_MS') || 10_000;
const STEP_MS = deadline('STEP_MS') || 10_000;
const READY_MS = deadline('READY_MS') || (mode === 'js' ? 20_000 : 30_000);

function log(msg) {
  console.log(`[browser ${mode}] ${msg}`);
}

class CheckFailed extends Error {}
function fail(msg) {
  throw new CheckFailed(msg);
}

async function until(what, ms, probe) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      // The page may be navigating between probes; try again.
      last = undefined;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  fail(`${what} did not happen within ${ms} ms`);
}

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(outDir, `profile-${mode}-`));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    javaScriptEnabled: !mode.endsWith('nojs'),
    colorScheme: process.env.BROWSER_CHECK_COLOR_SCHEME || 'light',
    viewport: mode.startsWith('dashboard') ? { width: 1400, height: 640 } : { width: 800, height: 500 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = context.pages()[0] || (await context.newPage());

  // Every document the tab loads, with its status: the loading page is a
  // 503, the guest's answer a 200.
  const documents = [];
  page.on('response', (r) => {
    if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) {
      documents.push({ status: r.status(), url: r.url(), at: Date.now() });
      log(`document ${r.status()} ${r.url()}`);
    } else {
      log(`subresource ${r.status()} ${r.url()}`);
    }
  });
  const events = [];
  page.on('request', (r) => {
    if (r.url().includes('/.drowsy/events')) events.push(Date.now());
  });
  // Every progress step the page lists, as it appears (JavaScript on only).
  const stepsSeen = [];
  await context.addInitScript(() => {
    document.addEventListener('DOMContentLoaded', () => {
      const ol = document.getElementById('steps');
      if (!ol) return;
      new MutationObserver((records) => {
        for (const r of records) for (const n of r.addedNodes) console.log(`STEP ${n.textContent}`);
      }).observe(ol, { childList: true });
    });
  });
  page.on('console', (m) => {
    const t = m.text();
    if (t.startsWith('STEP ')) {
      stepsSeen.push({ text: t.slice(5), at: Date.now(), doc: documents.length });
      log(`step: ${t.slice(5)}`);
    } else {
      log(`console.${m.type()}: ${t}`);
    }
  });
  page.on('pageerror', (e) => log(`page error: ${e.message}`));
  // Errors the page itself reports (a CSP violation, a failed script).
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(e.message));

  if (mode.startsWith('dashboard')) {
    try {
      await dashboard(page, problems);
    } catch (e) {
      const shot = path.join(outDir, `${tag}-failed.png`);
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      console.error(`[browser ${mode}] FAILED: ${e.message}`);
      console.error(`[browser ${mode}] screenshot at failure: ${shot}`);
      process.exitCode = 1;
    } finally {
      await context.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    }
    return;
  }

  try {
    const t0 = Date.now();
    const first = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: LOAD_MS });
    if (!first) fail(`no response for ${url}`);
    if (first.status() !== 503) {
      fail(`expected the loading page (503) first, got ${first.status()}: ` +
        `${(await first.text()).slice(0, 200)} (was the guest already running?)`);
    }
    const title = await page.title();
    const want = `Waking ${route}…`;
    if (title !== want) fail(`loading page title is ${JSON.stringify(title)}, want ${JSON.stringify(want)}`);
    const shown = (await page.textContent('#route')) || '';
    if (shown.trim() !== route) fail(`loading page names route ${JSON.stringify(shown)}, want ${JSON.stringify(route)}`);
    log(`loading page after ${Date.now() - t0} ms: title ${JSON.stringify(title)}`);

    let loadingShot;
    if (mode === 'fail') {
      const shown = await until('the failure on the page', STEP_MS, async () => {
        if (documents.length > 1) fail('the page reloaded by itself although the wake failed');
        const st = await page.evaluate(() => ({
          status: document.getElementById('status').textContent,
          retry: !document.getElementById('retry').hidden &&
            getComputedStyle(document.getElementById('retry')).display !== 'none',
          spin: !document.getElementById('spin').hidden &&
            getComputedStyle(document.getElementById('spin')).display !== 'none',
        }));
        return /could not wake|failed/i.test(st.status) ? st : null;
      });
      log(`failure shown: ${JSON.stringify(shown)}`);
      if (!shown.retry) fail('the "Try again" button is not visible after a failed wake');
      if (shown.spin) fail('the spinner still turns after a failed wake');
      const failedTitle = await page.title();
      if (!failedTitle.startsWith('Could not wake')) {
        fail(`the title still reads ${JSON.stringify(failedTitle)} after a failed wake`);
      }
      // It must stay put: no reload loop against a guest that cannot start.
      await new Promise((r) => setTimeout(r, 3000));
      if (documents.length > 1) fail(`the page reloaded ${documents.length - 1} time(s) after a failed wake`);
      const shot = path.join(outDir, `${tag}-1-error.png`);
      await page.screenshot({ path: shot });
      log(`screenshot (error): ${shot}`);
      // "Try again" reloads into the page again, still showing the error.
      await page.click('#retry');
      await until('a reload after "Try again"', STEP_MS, async () => documents.length > 1);
      log('"Try again" reloaded the page');
      console.log('FAIL_PATH_OK');
      return;
    }
    if (mode === 'js') {
      // Progress steps arrive over server-sent events and become <li>s.
      const steps = await until('a progress step from /.drowsy/events', STEP_MS, async () => {
        if (documents.length > 1) fail('the page reloaded before showing any progress step');
        const items = await page.$$eval('#steps li', (lis) => lis.map((li) => li.textContent));
        return items.length > 0 ? items : null;
      });
      if (!events.length) fail('the page never opened /.drowsy/events');
      // Give the wake a moment to show a second step for the screenshot.
      const more = Date.now() + 1500;
      while (Date.now() < more && documents.length === 1) {
        const n = await page.$$eval('#steps li', (lis) => lis.length).catch(() => 0);
        if (n > steps.length) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const status = await page.textContent('#status');
      const listed = await page.$$eval('#steps li', (lis) => lis.map((li) => li.textContent));
      log(`steps listed: ${JSON.stringify(listed)}; status ${JSON.stringify(status)}`);
    } else {
      const refresh = await page.$$eval('meta[http-equiv="refresh" i]', (ms) => ms.map((m) => m.content));
      if (!refresh.length) fail('the loading page has no meta refresh for browsers without JavaScript');
      log(`meta refresh content=${JSON.stringify(refresh)}`);
      const note = await page.textContent('main');
      if (!/reloads/.test(note || '')) fail('the <noscript> note is not shown with JavaScript off');
      if (events.length) fail('/.drowsy/events was opened with JavaScript off');
    }
    loadingShot = path.join(outDir, `${tag}-1-loading.png`);
    await page.screenshot({ path: loadingShot });
    log(`screenshot (loading): ${loadingShot}`);

    // Then the page must replace itself with the guest's answer.
    const answer = await until(`the reload into the guest's answer`, READY_MS, async () => {
      const last = documents[documents.length - 1];
      if (!last || last.status !== 200) return null;
      const text = await page.evaluate(() => document.body && document.body.innerText);
      return text && text.includes('"') ? text : null;
    });
    log(`guest answered ${Date.now() - t0} ms after the first request, ` +
      `after ${documents.length - 1} reload(s)`);
    let body;
    try {
      body = JSON.parse(answer);
    } catch (e) {
      fail(`the guest's answer is not JSON: ${answer.slice(0, 200)}`);
    }
    log(`guest answer: ${JSON.stringify(body).slice(0, 300)}`);
    const answerShot = path.join(outDir, `${tag}-2-guest.png`);
    await page.screenshot({ path: answerShot });
    log(`screenshot (guest): ${answerShot}`);
    if (mode === 'js') {
      const before = stepsSeen.filter((s) => s.doc === 1).map((s) => s.text);
      log(`steps shown before the reload: ${JSON.stringify(before)}`);
      if (documents.length !== 2) {
        fail(`expected exactly one reload with JavaScript on, saw ${documents.length - 1}`);
      }
      if (!before.some((t) => /^ready/.test(t))) {
        fail(`the page reloaded without showing a ready step (steps: ${JSON.stringify(before)})`);
      }
    }
    // Print the guest's identity for the shell script to check.
    console.log(`GUEST_ANSWER ${JSON.stringify(body)}`);
  } catch (e) {
    const shot = path.join(outDir, `${tag}-failed.png`);
    await page.screenshot({ path: shot }).catch(() => {});
    console.error(`[browser ${mode}] FAILED: ${e.message}`);
    console.error(`[browser ${mode}] screenshot at failure: ${shot}`);
    const html = await page.content().catch(() => '');
    if (html) console.error(`[browser ${mode}] page at failure:\n${html.slice(0, 2000)}`);
    process.exitCode = 1;
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

// The dashboard: a table of every route, live, with working buttons.
async function dashboard(page, problems) {
  const first = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: LOAD_MS });
  if (!first || first.status() !== 200) fail(`the dashboard answered ${first && first.status()}`);
  const title = await page.title();
  if (title !== 'drowsy') fail(`the dashboard's title is ${JSON.stringify(title)}`);
  const rowSel = `#rows tr:has(b:text-is("${route}"))`;
  const names = await page.$$eval('#rows tr td:first-child b', (bs) => bs.map((b) => b.textContent));
  log(`routes listed: ${JSON.stringify(names)}`);
  if (!names.includes(route)) fail(`route ${route} is not on the dashboard`);
  if (mode === 'dashboard-nojs') {
    const visible = await page.$$eval('#rows button', (bs) => bs.filter((b) => !b.hidden).length);
    if (visible) fail(`${visible} button(s) shown without JavaScript, where they cannot work`);
    const note = await page.textContent('footer');
    if (!/reload the page/.test(note || '')) fail('the <noscript> note is not shown with JavaScript off');
    const shot = path.join(outDir, `${tag}-1-static.png`);
    await page.screenshot({ path: shot, fullPage: true });
    log(`screenshot (static table): ${shot}`);
    console.log('DASHBOARD_OK');
    return;
  }
  await until('the live view (server-sent events)', STEP_MS, async () =>
    (await page.textContent('#live')) === 'live');
  const state = async () => (await page.textContent(`${rowSel} .state`)) || '';
  log(`${route} is ${await state()}`);
  if ((await state()) !== 'stopped') fail(`${route} should be asleep before the wake, it is ${await state()}`);
  const shot1 = path.join(outDir, `${tag}-1-dashboard.png`);
  await page.screenshot({ path: shot1, fullPage: true });
  log(`screenshot (dashboard): ${shot1}`);

  // Wake it with its button: the row follows the wake live.
  const t0 = Date.now();
  await page.click(`${rowSel} button[data-action="wake"]`);
  const seen = new Set();
  await until(`${route} running after its Wake button`, READY_MS, async () => {
    const s = await state();
    if (!seen.has(s)) { seen.add(s); log(`${route}: ${s} after ${Date.now() - t0} ms`); }
    const msg = (await page.textContent(`${rowSel} .msg`)) || '';
    return s === 'running' && /awake/.test(msg);
  });
  const msg = await page.textContent(`${rowSel} .msg`);
  log(`the row says: ${JSON.stringify(msg)}; states seen: ${JSON.stringify([...seen])}`);
  await until('the last wake and p50/p95 on the row', STEP_MS, async () => {
    const cells = await page.$$eval(`${rowSel} td.num`, (tds) => tds.map((t) => t.textContent));
    return cells.some((c) => / s \/ /.test(c)) ? cells : null;
  });
  await until('CPU and memory of the running guest', READY_MS, async () =>
    /iB/.test((await page.textContent(rowSel)) || ''));
  const shot2 = path.join(outDir, `${tag}-2-woken.png`);
  await page.screenshot({ path: shot2, fullPage: true });
  log(`screenshot (after the wake): ${shot2}`);

  // Its journal, from the Logs link.
  await page.click(`${rowSel} a:text-is("Logs")`);
  await until('journal lines on the logs page', READY_MS, async () => {
    const text = (await page.textContent('#log')) || '';
    return text.split('\n').filter((l) => l).length >= 3;
  });
  const status = await page.textContent('#state');
  const lines = ((await page.textContent('#log')) || '').trim().split('\n');
  log(`logs page: ${status}; ${lines.length} lines, the last: ${JSON.stringify(lines[lines.length - 1])}`);
  if (/drowsy-begin|printf|login:|\x1b/.test(lines.join('\n'))) fail('the shell around the journal shows on the logs page');
  const shot3 = path.join(outDir, `${tag}-3-logs.png`);
  await page.screenshot({ path: shot3 });
  log(`screenshot (logs): ${shot3}`);

  if (problems.length) fail(`console errors: ${JSON.stringify(problems)}`);
  log('no console errors');
  console.log('DASHBOARD_OK');
}

main().catch((e) => {
  console.error(`[browser ${mode}] FAILED: ${e.stack || e}`);
  process.exit(1);
});
