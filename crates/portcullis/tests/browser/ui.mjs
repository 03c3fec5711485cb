// End-to-end test of the Portcullis operator UI in headless Chromium.
//
// Run by the Rust integration harness after it has started the real server and seeded data:
//   PORTCULLIS_UI_FIXTURE=/path/fixture.json PORTCULLIS_UI_SCREENSHOTS=/path/dir node ui.mjs
// The fixture: {"base_url","operator":{"email","password"},"tenant":{"id","name"},
//   "tenant_admin":{"email","password"},"expensive_session","denying_policy":{"id","name"},
//   "xss_session","xss_payloads":[…],"model_profile_id"}.
// Optional: PORTCULLIS_CHROMIUM (default /usr/bin/chromium). No browser is ever downloaded.
//
// Prints one line per step and exits non-zero on the first failure. Any JS dialog, page error or
// console error fails the step it happens in, except the console messages a step expects (the CSP
// report in the CSP step, the 401 of /ui/session when signed out, the forged requests' 403s).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const fixturePath = process.env.PORTCULLIS_UI_FIXTURE;
if (!fixturePath) {
  console.error('PORTCULLIS_UI_FIXTURE is not set (path to the fixture JSON)');
  process.exit(2);
}
const fx = JSON.parse(fs.readFileSync(fixturePath, 'utf8'));
for (const k of ['base_url', 'operator', 'tenant', 'tenant_admin', 'expensive_session', 'denying_policy', 'xss_session', 'xss_payloads', 'model_profile_id']) {
  if (fx[k] == null) {
    console.error(`fixture ${fixturePath} lacks "${k}"`);
    process.exit(2);
  }
}
const BASE = fx.base_url.replace(/\/+$/, '');
const UI = BASE + '/ui';
const SHOTS = process.env.PORTCULLIS_UI_SCREENSHOTS || '';
if (SHOTS) fs.mkdirSync(SHOTS, { recursive: true });
const CHROMIUM = process.env.PORTCULLIS_CHROMIUM || '/usr/bin/chromium';
const q = (v) => JSON.stringify(String(v)); // a CSS attribute-selector string
// UTC like the server's days, so the Sessions page's "Today" is the fixture's today.
const CONTEXT = { viewport: { width: 1440, height: 900 }, locale: 'en-US', timezoneId: 'UTC' };

// ------------------------------------------------------------------ watchdogs
const problems = [];
// What a step expects to see logged: CSP reports, or failed loads with these statuses.
const expect = { csp: false, statuses: new Set() };

function allowedConsoleError(text, url) {
  if (expect.csp && /Content Security Policy/i.test(text)) return true;
  // Loading /ui signed out asks /ui/session first: its 401 is the contract.
  if (/status of 401/.test(text) && /\/ui\/session(\?|$)/.test(url)) return true;
  const m = /status of (\d{3})/.exec(text);
  if (m && expect.statuses.has(Number(m[1]))) return true;
  return false;
}

/** Runs fn while failed loads with these statuses are expected (and a little after, for late logs). */
async function expecting(statuses, fn) {
  for (const s of statuses) expect.statuses.add(s);
  try {
    return await fn();
  } finally {
    await new Promise((r) => setTimeout(r, 250));
    for (const s of statuses) expect.statuses.delete(s);
  }
}

function watch(page, label) {
  page.on('dialog', (d) => {
    problems.push(`${label}: a JS ${d.type()} dialog fired: ${JSON.stringify(d.message())}`);
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const url = (msg.location() && msg.location().url) || '';
    if (allowedConsoleError(msg.text(), url)) return;
    problems.push(`${label}: console error: ${msg.text()}${url ? ' (' + url + ')' : ''}`);
  });
}

// ------------------------------------------------------------------ steps
let passed = 0;
let current = '';
async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  await fn();
  if (problems.length) throw new Error(problems.join('\n'));
  passed++;
  console.log(`ok ${passed} - ${name} (${Date.now() - t0} ms)`);
}

async function shot(page, name) {
  if (!SHOTS) return;
  // Sticky bars are drawn where the viewport is: capture from the top.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(150); // let transitions settle
  await page.screenshot({ path: path.join(SHOTS, name + '.png'), fullPage: true });
}

/** Nothing the data could have injected exists: no inline handlers, foreign scripts, images,
 *  frames, javascript: links; every link is a #/ route. */
async function assertNoInjection(page, where) {
  const bad = await page.evaluate(() => {
    const out = [];
    for (const el of document.querySelectorAll('*')) {
      for (const a of el.getAttributeNames()) if (/^on/i.test(a)) out.push(`<${el.tagName.toLowerCase()} ${a}>`);
    }
    for (const s of document.scripts) {
      const own = s.src && new URL(s.src).pathname === '/ui/app.js';
      if (!own) out.push('script ' + (s.src || JSON.stringify(s.textContent.slice(0, 60))));
    }
    for (const sel of ['img', 'iframe', 'frame', 'object', 'embed', 'base', 'meta[http-equiv]', 'link[rel=import]', 'form[action]', '[srcdoc]',
      '[src^="javascript:" i]', 'a[href^="javascript:" i]', 'svg [href]', 'svg [*|href]', 'svg[onload]']) {
      for (const el of document.querySelectorAll(sel)) out.push(sel + ' → <' + el.tagName.toLowerCase() + '>');
    }
    for (const a of document.querySelectorAll('a[href]')) {
      const href = a.getAttribute('href');
      if (!href.startsWith('#/')) out.push('link to ' + JSON.stringify(href));
    }
    if (window.__xss || window.__pwned) out.push('a marker global was set by injected code');
    return out;
  });
  assert.deepEqual(bad, [], `${where}: elements that only injected markup could have made: ${bad.join(', ')}`);
}

async function bodyText(page) {
  return page.evaluate(() => document.body.textContent);
}

async function gotoRoute(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
}

async function nav(page, id) {
  await page.click(`[data-testid=nav-${id}]`);
}

async function apiFromPage(page, method, p, opts) {
  return page.evaluate(async ([method, p, opts]) => {
    const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
    const r = await fetch(p, { method, headers, credentials: 'same-origin', body: opts.body });
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch (e) { json = null; }
    return { status: r.status, json, text };
  }, [method, p, opts || {}]);
}

// ------------------------------------------------------------------ the attacker's site (CSRF)
function startAttacker() {
  const forgedKey = 'csrf-forged-' + Date.now();
  const page = (title, action, name, value) => `<!doctype html><title>${title}</title>
<form method="POST" action="${action}" enctype="text/plain"><input type="hidden" name='${name}' value='${value}'></form>
<script>document.forms[0].submit()</script>`;
  const pages = {
    '/keys': page('win a prize', `${BASE}/v1/keys`, `{"name":"${forgedKey}","role":"admin","x":"`, '"}'),
    '/logout': page('nothing here', `${BASE}/ui/logout`, 'a', 'b'),
    '/policy': page('nothing here', `${BASE}/v1/policies`, `{"name":"${forgedKey}","cedar":"forbid(principal,action,resource);","x":"`, '"}'),
  };
  const server = http.createServer((req, res) => {
    const body = pages[req.url];
    if (!body) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(body);
  });
  // Same host as the UI, another port: same-site, so the browser sends the SameSite=Strict cookie
  // and only the CSRF token (and Origin check) can stop the forged requests.
  const host = new URL(BASE).hostname;
  const listenOn = host === '[::1]' || host === '::1' ? '::1' : '127.0.0.1';
  return new Promise((resolve) => server.listen(0, listenOn, () => resolve({ server, origin: `http://${host}:${server.address().port}`, forgedKey })));
}

async function forge(context, attacker, pathName, target) {
  const page = await context.newPage();
  watch(page, 'attacker page');
  try {
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url() === target && r.request().method() === 'POST', { timeout: 15000 }),
      page.goto(attacker.origin + pathName),
    ]);
    return resp.status();
  } finally {
    await page.close();
  }
}

// ------------------------------------------------------------------ login helper
async function login(page, who, label) {
  await page.goto(UI);
  await page.waitForSelector('[data-testid=login-form]');
  await page.fill('[data-testid=login-email]', who.email);
  await page.fill('[data-testid=login-password]', who.password);
  // Hold the answer briefly so the pending state can be seen.
  let release;
  const held = new Promise((r) => { release = r; });
  await page.route('**/ui/login', async (route) => { await held; await route.continue(); });
  await page.click('[data-testid=login-submit]');
  const pending = await page.$eval('[data-testid=login-submit]', (b) => ({ disabled: b.disabled, text: b.textContent }));
  release();
  assert.equal(pending.disabled, true, `${label}: the sign-in button is not disabled while the login is pending`);
  await page.waitForSelector('[data-testid=principal]');
  await page.unroute('**/ui/login');
  return pending;
}

// ------------------------------------------------------------------ main
const attacker = await startAttacker();
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let page;
let exitCode = 0;
try {
  const ctx = await browser.newContext(CONTEXT);
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  page = await ctx.newPage();
  page.setDefaultTimeout(15000);
  watch(page, 'operator page');

  await step('login page renders with the strict CSP', async () => {
    const resp = await page.goto(UI);
    assert.equal(resp.status(), 200, 'GET /ui');
    const csp = resp.headers()['content-security-policy'] || '';
    assert.match(csp, /script-src 'self'/, 'GET /ui has no script-src \'self\' CSP');
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, 'the CSP allows inline code');
    await page.waitForSelector('[data-testid=login-form]');
    for (const t of ['login-email', 'login-password', 'login-submit']) assert.ok(await page.isVisible(`[data-testid=${t}]`), `${t} not visible`);
    await shot(page, '01-login');
  });

  await step('operator signs in (button disabled while pending)', async () => {
    const pending = await login(page, fx.operator, 'operator');
    assert.match(pending.text, /Signing in/, 'pending button text');
    const role = await page.textContent('[data-testid=principal-role]');
    assert.match(role, /operator/i, 'principal role shown');
    await page.waitForSelector('[data-testid=tenant-switcher]'); // operators get a tenant switcher
  });

  await step('tenant switcher selects the fixture tenant; tenants page shows its budget card', async () => {
    await nav(page, 'tenants');
    await page.selectOption('[data-testid=tenant-switcher]', fx.tenant.id);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('portcullis.tenant')), fx.tenant.id, 'tenant persisted in sessionStorage');
    const cardSel = `[data-testid=tenant-card][data-tenant-id=${q(fx.tenant.id)}]`;
    await page.waitForSelector(`${cardSel} [data-testid=budget-card]:not([data-state=error]) [data-testid=budget-daily]`);
    const name = await page.textContent(`${cardSel} [data-testid=tenant-name]`);
    assert.equal(name.trim(), fx.tenant.name.trim(), 'tenant name shown as literal text');
    const opt = await page.$eval(`[data-testid=tenant-switcher] option[value=${q(fx.tenant.id)}]`, (o) => o.textContent);
    assert.ok(opt.includes(fx.tenant.name), 'tenant name in the switcher');
    const states = await page.$$eval(`${cardSel} [data-testid=budget-card] [data-state]`, (els) => els.map((e) => e.getAttribute('data-state')));
    assert.ok(states.every((s) => ['ok', 'warning', 'exceeded', 'none'].includes(s)), 'budget windows have a state: ' + states);
    assert.ok((await page.$$('[data-testid=tenant-card]')).length >= 1);
    await assertNoInjection(page, 'tenants page');
    await shot(page, '02-tenants');
  });

  const keyName = 'ui-test-' + Date.now();
  let fullKey = '';
  await step('API keys: list, create → key shown once with a copy button', async () => {
    await nav(page, 'keys');
    await page.waitForSelector('[data-testid=key-list][aria-busy=false]');
    await assertNoInjection(page, 'keys page');
    await shot(page, '03-keys');
    await page.fill('[data-testid=key-name]', keyName);
    await page.selectOption('[data-testid=key-role]', 'viewer');
    await page.selectOption('[data-testid=key-expiry]', '30d');
    await page.click('[data-testid=key-create-submit]');
    await page.waitForSelector('[data-testid=key-once-dialog][open]');
    fullKey = (await page.textContent('[data-testid=key-once-value]')).trim();
    assert.match(fullKey, /^pc_\S{16,}$/, 'the full key is shown');
    assert.ok(await page.isVisible('[data-testid=key-copy]'), 'copy button');
    assert.match(await page.textContent('[data-testid=key-once-warning]'), /only time/i, 'shown-once warning');
    await shot(page, '04-key-once');
    await page.click('[data-testid=key-copy]');
    const clip = await page.evaluate(() => navigator.clipboard.readText().catch((e) => 'clipboard unavailable: ' + e.message));
    assert.equal(clip, fullKey, 'Copy put the key on the clipboard');
    await page.click('[data-testid=key-once-close]');
    await page.waitForSelector('[data-testid=key-once-dialog]', { state: 'detached' });
    const row = page.locator('[data-testid=key-row]', { hasText: keyName });
    await row.waitFor();
    assert.equal((await row.locator('[data-testid=key-status]').textContent()).trim(), 'active');
    assert.ok(!(await bodyText(page)).includes(fullKey), 'the full key is still on the page after the dialog closed');
  });

  await step('API keys: revoke (confirmed in a dialog) → row shows revoked', async () => {
    const row = page.locator('[data-testid=key-row]', { hasText: keyName });
    await row.locator('[data-testid=key-revoke]').click();
    await page.waitForSelector('[data-testid=confirm-dialog][open]');
    await page.click('[data-testid=confirm-ok]');
    await row.locator('[data-testid=key-status]', { hasText: 'revoked' }).waitFor();
    const st = await row.getAttribute('data-status');
    assert.equal(st, 'revoked');
  });

  let findMs = 0;
  await step('sessions: today + most expensive → the expensive session first → denied by the policy', async () => {
    const t0 = Date.now();
    await nav(page, 'sessions');
    await page.waitForSelector('[data-testid=session-list][aria-busy=false]');
    await page.click('[data-testid=range-today]');
    await page.click('[data-testid=sort-cost]');
    await page.waitForSelector('[data-testid=session-list][aria-busy=false] [data-testid=session-row]');
    assert.equal(await page.getAttribute('[data-testid=sort-cost]', 'aria-pressed'), 'true');
    assert.equal(await page.getAttribute('[data-testid=range-today]', 'aria-pressed'), 'true');
    const first = await page.getAttribute('[data-testid=session-row] >> nth=0', 'data-session-id');
    assert.equal(first, fx.expensive_session, 'the most expensive session of today is first');
    await assertNoInjection(page, 'sessions page');
    await shot(page, '05-sessions');
    await page.click('[data-testid=session-row] >> nth=0');
    await page.waitForSelector('[data-testid=timeline] [data-testid=timeline-item]');
    assert.equal(await page.textContent('[data-testid=session-id]'), fx.expensive_session);
    const denied = page.locator('[data-testid=timeline-item][data-type=tool][data-decision=deny]');
    assert.ok(await denied.count() >= 1, 'a denied tool event in the timeline');
    const badge = denied.first().locator(`[data-testid=denied-badge][data-policy-id=${q(fx.denying_policy.id)}]`);
    await badge.waitFor();
    assert.ok((await badge.textContent()).includes(fx.denying_policy.id), 'the badge names the policy');
    assert.equal(await badge.getAttribute('href'), '#/policies/' + encodeURIComponent(fx.denying_policy.id));
    findMs = Date.now() - t0;
    for (const t of ['stat-total', 'stat-tools', 'stat-denied', 'stat-cost', 'stat-first', 'stat-last']) assert.ok(await page.isVisible(`[data-testid=${t}]`), t);
    await denied.first().scrollIntoViewIfNeeded();
    await shot(page, '06-session-timeline');
    await badge.click();
    await page.waitForSelector(`[data-testid=policy-id]:has-text(${q(fx.denying_policy.id)})`);
    await page.waitForSelector('[data-testid=policy-cedar]');
  });
  console.log(`   (the find-the-denying-policy flow took ${findMs} ms of browser time)`);

  await step('XSS session: every payload is literal text, nothing is injected, no dialog', async () => {
    await gotoRoute(page, '#/sessions/' + encodeURIComponent(fx.xss_session));
    await page.waitForSelector('[data-testid=timeline] [data-testid=timeline-item]');
    await page.evaluate(() => { for (const d of document.querySelectorAll('details')) d.open = true; });
    await page.waitForTimeout(300); // anything injected would have run by now
    const text = await bodyText(page);
    for (const p of fx.xss_payloads) {
      const asJson = JSON.stringify(p).slice(1, -1);
      assert.ok(text.includes(p) || text.includes(asJson), `payload not shown as text: ${JSON.stringify(p)}`);
    }
    await assertNoInjection(page, 'XSS session');
    await shot(page, '07-session-xss');
  });

  await step('models: a card per profile with SVG charts', async () => {
    await nav(page, 'models');
    const card = `[data-testid=model-card][data-profile-id=${q(fx.model_profile_id)}]`;
    await page.waitForSelector(`${card} svg[data-testid=chart-requests]`);
    await page.waitForSelector(`${card} svg[data-testid=chart-latency]`);
    for (const t of ['model-requests', 'model-success', 'model-p95', 'model-cost-1k']) assert.ok(await page.isVisible(`${card} [data-testid=${t}]`), t);
    const ticks = await page.$$eval(`${card} svg[data-testid=chart-requests] text.tick`, (els) => els.length);
    assert.ok(ticks >= 3, 'chart has axis labels');
    const titles = await page.$$eval(`${card} svg[data-testid=chart-requests] title`, (els) => els.length);
    assert.ok(titles >= 2, 'chart has hover titles');
    await page.click('[data-testid=window-24h]');
    await page.waitForSelector(`[data-testid=model-list][aria-busy=false] ${card} svg[data-testid=chart-requests]`);
    await assertNoInjection(page, 'models page');
    await shot(page, '08-models');
  });

  await step('audit: rows, detail JSON, chain verification', async () => {
    await nav(page, 'audit');
    await page.waitForSelector('[data-testid=audit-list][aria-busy=false] [data-testid=audit-row]');
    await page.click('[data-testid=audit-row] >> nth=0');
    const json = JSON.parse(await page.textContent('[data-testid=audit-detail-json]'));
    assert.ok(json.action && json.timestamp && json.hash, 'the detail shows the full record');
    await page.click('[data-testid=audit-detail-close]');
    await page.waitForSelector('[data-testid=audit-detail]', { state: 'hidden' });
    await page.click('[data-testid=verify-button]');
    await page.waitForSelector('[data-testid=verify-status]');
    assert.equal(await page.getAttribute('[data-testid=verify-status]', 'data-ok'), 'true', 'a fresh audit chain verifies');
    assert.ok((await page.$$('[data-testid=verify-writer]')).length >= 1, 'writers listed');
    await page.selectOption('[data-testid=audit-result]', 'denied');
    await page.click('[data-testid=audit-apply]');
    await page.waitForSelector('[data-testid=audit-list][aria-busy=false]');
    await assertNoInjection(page, 'audit page');
    if (await page.$('[data-testid=audit-row]')) await page.click('[data-testid=audit-row] >> nth=0');
    await shot(page, '09-audit-verify');
  });

  await step('policies: list, editor, validation errors with line:column, simulation', async () => {
    await nav(page, 'policies');
    await page.waitForSelector(`[data-testid=policy-row][data-policy-id=${q(fx.denying_policy.id)}]`);
    await assertNoInjection(page, 'policies page');
    await shot(page, '10-policies');
    await page.click(`[data-testid=policy-row][data-policy-id=${q(fx.denying_policy.id)}] [data-testid=policy-link]`);
    await page.waitForSelector('[data-testid=policy-version]');
    const cedar = await page.inputValue('[data-testid=policy-cedar]');
    assert.ok(cedar.trim().length > 0, 'the Cedar text is loaded');
    await page.click('[data-testid=policy-validate]');
    await page.waitForSelector('[data-testid=policy-valid]');
    await page.fill('[data-testid=policy-cedar]', cedar + '\nforbid (principal, action, resource) when { oops };\n');
    // The server answers 400 with positions; the browser logs that failed load.
    await expecting([400], async () => {
      await page.click('[data-testid=policy-validate]');
      await page.waitForSelector('[data-testid=policy-problem]');
    });
    const pos = await page.textContent('[data-testid=policy-problem] [data-testid=problem-pos]');
    assert.match(pos, /^L\d+:\d+$/, 'problem position shown as line:column');
    await page.fill('[data-testid=policy-cedar]', cedar);
    await page.click('[data-testid=policy-simulate]');
    await page.waitForSelector('[data-testid=sim-card] [data-testid=sim-evaluated]');
    await assertNoInjection(page, 'policy editor');
    await shot(page, '11-policy-editor');
  });

  await step('usage & limits: report, effective limits, capture settings', async () => {
    await nav(page, 'usage');
    await page.waitForSelector('[data-testid=usage-report][aria-busy=false]');
    await page.waitForSelector('[data-testid=limits-table]');
    await page.waitForSelector('[data-testid=capture-mode] input[type=radio]:checked');
    const patterns = await page.inputValue('[data-testid=capture-patterns]');
    await page.click('[data-testid=capture-save]');
    await page.waitForSelector('[data-testid=toast]:has-text("Capture settings saved")');
    assert.equal(await page.inputValue('[data-testid=capture-patterns]'), patterns);
    await assertNoInjection(page, 'usage page');
    await shot(page, '12-usage');
  });

  await step('CSP blocks an injected inline script and reports the violation', async () => {
    expect.csp = true;
    const r = await page.evaluate(async () => {
      let violations = 0;
      document.addEventListener('securitypolicyviolation', () => { violations++; });
      const s = document.createElement('script');
      s.textContent = 'window.__pwned = 1';
      document.body.appendChild(s);
      await new Promise((res) => setTimeout(res, 300));
      s.remove();
      return { pwned: window.__pwned, violations };
    });
    await page.waitForTimeout(100);
    expect.csp = false;
    assert.equal(r.pwned, undefined, 'the inline script ran');
    assert.ok(r.violations >= 1, 'no securitypolicyviolation event');
  });

  await step('CSRF: forged cross-origin form posts get 403 and change nothing', async () => {
    const keyStatus = await expecting([403], () => forge(ctx, attacker, '/keys', `${BASE}/v1/keys`));
    const logoutStatus = await expecting([403], () => forge(ctx, attacker, '/logout', `${BASE}/ui/logout`));
    assert.equal(keyStatus, 403, 'forged POST /v1/keys');
    assert.equal(logoutStatus, 403, 'forged POST /ui/logout');
    const sess = await apiFromPage(page, 'GET', '/ui/session');
    assert.equal(sess.status, 200, 'the session still works after the forged logout');
    const keys = await apiFromPage(page, 'GET', '/v1/keys?limit=500', { headers: { 'X-Tenant-ID': fx.tenant.id } });
    assert.equal(keys.status, 200);
    assert.ok(!keys.json.items.some((k) => k.name === attacker.forgedKey), 'a forged key was created');
    // Without the CSRF header, even a same-origin script is refused.
    const noToken = await expecting([403], () => apiFromPage(page, 'POST', '/v1/keys', { headers: { 'Content-Type': 'application/json', 'X-Tenant-ID': fx.tenant.id }, body: JSON.stringify({ name: attacker.forgedKey, role: 'viewer' }) }));
    assert.equal(noToken.status, 403, 'a cookie-authenticated POST without X-CSRF-Token');
  });

  await step('tenant admin: no switcher, only the own tenant; forged POST refused', async () => {
    const tctx = await browser.newContext(CONTEXT);
    const tp = await tctx.newPage();
    tp.setDefaultTimeout(15000);
    watch(tp, 'tenant admin page');
    try {
      await login(tp, fx.tenant_admin, 'tenant admin');
      assert.equal(await tp.$('[data-testid=tenant-switcher]'), null, 'tenant users get no switcher');
      assert.equal((await tp.textContent('[data-testid=tenant-fixed]')).includes(fx.tenant.name), true, 'own tenant named');
      await nav(tp, 'tenants');
      await tp.waitForSelector('[data-testid=tenant-card] [data-testid=budget-card]:not([data-state=error]) [data-testid=budget-daily]');
      const ids = await tp.$$eval('[data-testid=tenant-card]', (els) => els.map((e) => e.getAttribute('data-tenant-id')));
      assert.deepEqual(ids, [fx.tenant.id], 'only the own tenant is visible');
      const list = await expecting([403], () => apiFromPage(tp, 'GET', '/v1/tenants'));
      assert.ok(list.status === 403 || (list.status === 200 && list.json.items.every((t) => t.id === fx.tenant.id)),
        `a tenant user listed other tenants (${list.status})`);
      await nav(tp, 'sessions');
      await tp.waitForSelector('[data-testid=session-list][aria-busy=false]');
      await shot(tp, '13-tenant-admin');
      const st = await expecting([403], () => forge(tctx, attacker, '/keys', `${BASE}/v1/keys`));
      const st2 = await expecting([403], () => forge(tctx, attacker, '/policy', `${BASE}/v1/policies`));
      assert.equal(st, 403, 'forged POST /v1/keys as a tenant admin');
      assert.equal(st2, 403, 'forged POST /v1/policies as a tenant admin');
      const keys = await apiFromPage(tp, 'GET', '/v1/keys?limit=500');
      assert.ok(!keys.json.items.some((k) => k.name === attacker.forgedKey), 'a forged key was created in the tenant');
      const pols = await apiFromPage(tp, 'GET', '/v1/policies');
      assert.ok(!pols.json.items.some((p) => p.name === attacker.forgedKey), 'a forged policy was created in the tenant');
      await assertNoInjection(tp, 'tenant admin');
    } finally {
      await tctx.close();
    }
  });

  await step('sign out → login form; /ui/session is 401', async () => {
    await page.click('[data-testid=logout]');
    await page.waitForSelector('[data-testid=login-form]');
    const r = await apiFromPage(page, 'GET', '/ui/session');
    assert.equal(r.status, 401, '/ui/session after sign-out');
    await page.goto(UI + '#/keys');
    await page.waitForSelector('[data-testid=login-form]');
    await shot(page, '14-signed-out');
  });
} catch (e) {
  exitCode = 1;
  console.log(`not ok ${passed + 1} - ${current}`);
  console.error(`FAILED: ${current}\n${e && e.stack ? e.stack : e}`);
  if (problems.length) console.error('Browser problems:\n  ' + problems.join('\n  '));
  if (SHOTS && page) await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close().catch(() => {});
  attacker.server.close();
}
console.log(`${passed} passed, ${exitCode ? 1 : 0} failed`);
process.exit(exitCode);
