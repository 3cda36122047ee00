// End-to-end test of the console in Debian's headless Chromium, driven by playwright-core
// (no browser download: executablePath is the system's Chromium). tests/console_browser.rs
// starts the real server with the demo data set and runs this file with:
//   CONSOLE_URL, SUPPORT_TOKEN, AUDITOR_TOKEN, TERMINAL_TOKEN, SCREENSHOT_DIR [, CHROMIUM]
// Each step prints "ok - <step>" or "not ok - <step>"; the exit status is 0 only when every
// step passed and the page logged no error (a Content-Security-Policy violation is one).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (see tests/console_browser.rs)`);
  return v;
};
const URL_BASE = env('CONSOLE_URL');
const SUPPORT = env('SUPPORT_TOKEN');
const AUDITOR = env('AUDITOR_TOKEN');
const TERMINAL = env('TERMINAL_TOKEN');
const SHOTS = env('SCREENSHOT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WHOLE_RUN_MS = 240_000;

mkdirSync(SHOTS, { recursive: true });
const killer = setTimeout(() => {
  console.log(`not ok - the whole run took more than ${WHOLE_RUN_MS / 1000} s`);
  process.exit(1);
}, WHOLE_RUN_MS);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (or stops throwing an assertion). */
async function until(what, fn, timeout = 10_000) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(100);
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage', '--disable-gpu', '--lang=pt-BR'],
});
const context = await browser.newContext({
  viewport: { width: 1280, height: 900 },
  locale: 'pt-BR',
  // Not the server's time zone: the console shows and reads times on the server's clock.
  timezoneId: 'Asia/Tokyo',
});
const page = await context.newPage();
page.setDefaultTimeout(15_000);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(`page error: ${e.message}`));
page.on('console', (m) => {
  // A refused API call (the terminal's sign-in) is logged by Chromium as a failed resource;
  // anything else at error level (a CSP violation, a script error) fails the run.
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) {
    pageErrors.push(`console error: ${m.text()}`);
  }
});

let passed = 0;
let failed = 0;
async function step(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok - ${name}\n  ${String(e.stack || e).split('\n').join('\n  ')}`);
    await page.screenshot({ path: join(SHOTS, `failed-${passed + failed}.png`), fullPage: true }).catch(() => {});
  }
}
const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

// ---- helpers on the license table ----
const footer = () => page.locator('#license-footer').textContent();
const row = (id) => page.locator(`table.licenses tbody tr[data-id="${id}"]`);
const rowIds = () => page.locator('table.licenses tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
const cells = (id) => row(id).locator('td').allTextContents();
async function openLicenses() {
  await page.goto(`${URL_BASE}/#/licencas`);
  await until('the license table', async () => (await page.locator('table.licenses tbody tr').count()) > 0);
}
async function filter(changes) {
  const form = page.locator('form.filters');
  await form.getByRole('button', { name: 'Limpar' }).click();
  for (const [label, value] of Object.entries(changes)) {
    const control = form.getByLabel(label, { exact: true });
    if ((await control.evaluate((el) => el.tagName)) === 'SELECT') await control.selectOption({ label: value });
    else await control.fill(value);
  }
  await form.getByRole('button', { name: 'Filtrar' }).click();
}
async function signIn(token) {
  await page.goto(`${URL_BASE}/`);
  await page.getByLabel('Token de acesso').fill(token);
  await page.getByRole('button', { name: 'Entrar' }).click();
}
/** `d` on the server's clock (Brasília, its default time zone; the browser is in Tokyo) as
 * a datetime-local value, truncated to the second: the console reads such inputs on the
 * server's clock. */
const BRASILIA = new Intl.DateTimeFormat('en-US', {
  timeZone: 'America/Sao_Paulo', hourCycle: 'h23', year: 'numeric', month: '2-digit',
  day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const localValue = (d) => {
  const p = Object.fromEntries(BRASILIA.formatToParts(d).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}:${p.second}`;
};

// ---- the steps ----

await step('a terminal token cannot sign in', async () => {
  await signIn(TERMINAL);
  await until('the refusal', async () => (await page.locator('#signin-error').textContent()).includes('não pode entrar'));
  assert.equal(await page.locator('table.licenses').count(), 0);
});

await step('support signs in and sees the manual\'s license table', async () => {
  await signIn(SUPPORT);
  await until('12 licenses', async () => (await footer()) === '1º Item (Total 12)');
  assert.equal(await page.getByRole('heading', { level: 1 }).textContent(), 'GERENCIAMENTO DE LICENÇAS');
  const heads = await page.locator('table.licenses thead th').allTextContents();
  assert.deepEqual(heads.slice(1).map((h) => h.replace(/[▲▼↕]/g, '').trim()),
    ['ID', 'Hardware Key', 'IP', 'Expira', 'Produto', 'Bloqueado', 'Licença', 'Contrato']);
  assert.equal((await rowIds()).length, 12);
  assert.match(await row('000001').getAttribute('class'), /is-expiring/);
  assert.match(await row('000004').getAttribute('class'), /is-expired/);
  assert.match(await row('000007').getAttribute('class'), /is-blocked/);
  assert.match((await cells('000001')).join('|'), /88A7B56C2B3F326F91362A182483F63E\|192\.168\.0\.191\|.*expira em 2 dias/);
  await until('the live stream', async () => (await page.locator('#live-state').textContent()) === 'Ao vivo');
  await shot('licencas');
});

await step('filters and sorting narrow and order the table', async () => {
  await filter({ Produto: 'Notify' });
  await until('2 Notify licenses', async () => (await footer()) === '1º Item (Total 2)');
  for (const id of await rowIds()) assert.equal((await cells(id))[5], 'Notify');

  await filter({ 'Situação': 'Bloqueada' });
  await until('the blocked license', async () => (await footer()) === '1º Item (Total 1)');
  assert.deepEqual(await rowIds(), ['000007']);

  await filter({ Busca: '192.168.0.191' });
  await until('licenses of that IP', async () => (await footer()) === '1º Item (Total 2)');
  assert.deepEqual(await rowIds(), ['000001', '000005']);

  await filter({ 'Expira em até (dias)': '3' });
  await until('the license expiring within 3 days', async () => (await footer()) === '1º Item (Total 1)');
  assert.deepEqual(await rowIds(), ['000001']);

  await filter({ Cliente: 'Padaria Pão Dourado (12ABC34501DE35)' });
  await until('the bakery\'s licenses', async () => (await footer()) === '1º Item (Total 4)');
  assert.deepEqual(await rowIds(), ['000009', '000010', '000011', '000012']);

  await filter({});
  await until('all licenses', async () => (await footer()) === '1º Item (Total 12)');
  await page.getByRole('button', { name: 'Ordenar por Expira' }).click();
  await until('the expired license first', async () => (await rowIds())[0] === '000004');
  assert.equal(await page.locator('th[data-col="expires_on"]').getAttribute('aria-sort'), 'ascending');
  await page.getByRole('button', { name: 'Ordenar por Expira' }).click();
  await until('the latest expiry first', async () => ['000009', '000010', '000011', '000012'].includes((await rowIds())[0]));
  await page.getByRole('button', { name: 'Ordenar por ID' }).click();
  await until('id order', async () => (await rowIds())[0] === '000001');
});

await step('the keyboard moves the selection and the footer follows it', async () => {
  await page.getByLabel('Selecionar licença 000001').check();
  await page.getByLabel('Selecionar licença 000001').press('ArrowDown');
  await until('the second license selected', async () => (await footer()) === '2º Item (Total 12)');
  assert.match(await row('000002').getAttribute('class'), /selected/);
});

await step('Histórico shows the timeline newest first, with positions, short hashes and raw events', async () => {
  await page.getByLabel('Selecionar licença 000001').check();
  await page.getByRole('button', { name: 'Histórico' }).click();
  await until('the history page', async () => (await page.getByRole('heading', { level: 1 }).textContent()) === 'Histórico da licença 000001');
  await until('the timeline', async () => (await page.locator('#timeline li').count()) >= 3);
  const positions = await page.locator('#timeline li').evaluateAll((lis) => lis.map((li) => Number(li.dataset.position)));
  assert.deepEqual(positions, [...positions].sort((a, b) => b - a), 'newest first');
  const texts = await page.locator('#timeline li').allTextContents();
  assert.ok(texts.some((x) => x.includes('Associada ao terminal 50026B77825EECA5')), texts.join('\n'));
  assert.ok(texts.every((x) => /Posição #\d+/.test(x) && /Hash [0-9a-f]{12}…/.test(x) && /\d\d\/\d\d\/\d{4} \d\d:\d\d:\d\d/.test(x)));
  await shot('historico');
  const bound = page.locator('#timeline li', { hasText: 'Associada ao terminal' });
  await bound.getByRole('link', { name: /Evento bruto/ }).click();
  await until('the raw event', async () => (await page.locator('#raw-event').textContent()).includes('"event_type": "LicenseBound"'));
  await shot('evento');
});

const beforeUnlink = new Date(Math.floor(Date.now() / 1000) * 1000);

await step('Desassociar asks for a reason, changes the row and adds a timeline entry', async () => {
  await sleep(1100); // the as-of moment must fall strictly before the unlink
  await openLicenses();
  await page.getByLabel('Selecionar licença 000001').check();
  await page.getByRole('button', { name: 'Desassociar' }).click();
  const dialog = page.locator('#dialog');
  await until('the dialog', () => dialog.isVisible());
  assert.equal(await dialog.getByRole('heading').textContent(), 'Desassociar licença 000001');
  await dialog.locator('#dialog-confirm').click();
  await sleep(300);
  assert.ok(await dialog.isVisible(), 'without a reason the dialog stays open');
  await dialog.getByLabel('Motivo').fill('Cliente trocou o computador do caixa 01');
  await dialog.locator('#dialog-confirm').click();
  await until('the dialog to close', async () => !(await dialog.isVisible()));
  await until('the freed row', async () => (await cells('000001'))[2] === '');
  assert.equal(await page.locator('#toast').textContent(), 'Licença 000001 desassociada.');
  await page.getByRole('button', { name: 'Histórico' }).click();
  await until('the new entry on top', async () => {
    const first = await page.locator('#timeline li').first().textContent();
    return first.includes('Desassociada do terminal 50026B77825EECA5: Cliente trocou o computador do caixa 01')
      // The actor is the token's name and id (issue 15: `<name> #<id>`).
      && /console-suporte #[0-9a-f]{12} \(operador\)/.test(first);
  });
});

await step('Ativar Offline shows the counter-key in groups of four with its validity', async () => {
  await openLicenses();
  await page.getByRole('button', { name: 'Ativar Offline' }).click();
  const dialog = page.locator('#dialog');
  await dialog.getByLabel('Produto').selectOption({ label: 'EasyCash' });
  await dialog.getByLabel('Serial (Descrição)').fill('50026B7760AB12CD');
  // The selected license (000001) was just unlinked: issue for the serial alone.
  const link = dialog.locator('#offline-link');
  if (await link.count()) await link.uncheck();
  await dialog.locator('#dialog-confirm').click();
  const key = await until('the counter-key', async () => (await page.locator('#counter-key').textContent().catch(() => '')).trim());
  assert.match(key, /^[0-9A-F]{4} [0-9A-F]{4} [0-9A-F]{4} [0-9A-F]{4}$/);
  assert.match(await page.locator('#counter-key-valid').textContent(), /^Válida até \d\d\/\d\d\/\d{4} 23:59:59 \(America\/Sao_Paulo\)$/);
  const size = await page.locator('#counter-key').evaluate((el) => parseFloat(getComputedStyle(el).fontSize));
  assert.ok(size >= 30, `the counter-key is large (${size}px)`);
  await shot('ativar-offline');
  await page.locator('#dialog-close').click();
  // A serial is used once.
  await page.getByRole('button', { name: 'Ativar Offline' }).click();
  await dialog.getByLabel('Serial (Descrição)').fill('50026B7760AB12CD');
  await dialog.locator('#dialog-confirm').click();
  await until('the refusal', async () => (await dialog.locator('p.error').textContent()).startsWith('Falhou:'));
  await dialog.getByRole('button', { name: 'Cancelar' }).click();
});

await step('the table follows the live event stream without a click', async () => {
  await openLicenses();
  assert.doesNotMatch(await row('000008').getAttribute('class'), /is-blocked/);
  const res = await fetch(`${URL_BASE}/v1/licenses/000008/block`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${SUPPORT}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ note: 'bloqueio feito por outra pessoa' }),
  });
  assert.equal(res.status, 200);
  await until('the row to turn blocked', async () => /is-blocked/.test(await row('000008').getAttribute('class')));
});

await step('Auditoria: the table as of a past moment, a diff, and verify now', async () => {
  await page.goto(`${URL_BASE}/#/auditoria`);
  await until('the signed head', async () => (await page.locator('#head-signature').textContent()) === 'assinatura do servidor válida');
  await page.locator('#asof-input').fill(localValue(beforeUnlink));
  await page.getByRole('button', { name: 'Mostrar' }).click();
  const old = page.locator('#asof-result tr[data-id="000001"] td');
  await until('the old state', async () => (await old.nth(1).textContent()) === '88A7B56C2B3F326F91362A182483F63E');
  assert.doesNotMatch(await page.locator('#asof-result tr[data-id="000008"]').getAttribute('class'), /is-blocked/);
  assert.equal(await page.locator('#asof-footer').textContent(), '1º Item (Total 12)');

  await page.locator('#diff-license').fill('000001');
  await page.locator('#diff-from').fill(localValue(beforeUnlink));
  await page.getByRole('button', { name: 'Comparar' }).click();
  const keyRow = page.locator('#diff-result tr', { has: page.getByRole('rowheader', { name: 'Hardware Key', exact: true }) });
  await until('the diff', async () => (await keyRow.getAttribute('data-changed')) === 'yes');
  assert.deepEqual((await keyRow.locator('td').allTextContents()), ['88A7B56C2B3F326F91362A182483F63E', '—']);
  const blockedRow = page.locator('#diff-result tr', { has: page.getByRole('rowheader', { name: 'Bloqueado', exact: true }) });
  assert.equal(await blockedRow.getAttribute('data-changed'), 'no');

  await page.getByRole('button', { name: 'Verificar agora' }).click();
  await until('the verdict', async () => (await page.locator('#verify-result').textContent()).startsWith('Cadeia íntegra'));
  const [value, max] = await page.locator('#verify-progress').evaluate((p) => [p.value, p.max]);
  assert.ok(max > 20 && value === max, `progress ${value}/${max}`);
  await shot('auditoria');
});

await step('Contingências, Clientes, Monitorar → Eventos and the Painel', async () => {
  await page.goto(`${URL_BASE}/#/contingencias`);
  await until('open contingencies', async () => /Abertas \([1-9]\)/.test(await page.locator('#open-contingencies').textContent()));
  assert.ok((await page.locator('main').textContent()).includes('Padaria Pão Dourado (12ABC34501DE35)'));
  await shot('contingencias');

  await page.goto(`${URL_BASE}/#/clientes`);
  await until('two customers', async () => (await page.locator('#customers tbody tr').count()) === 2);
  await page.getByRole('button', { name: 'Detalhes de Mercado Bom Preço' }).click();
  await until('the contract', async () => (await page.locator('.customer-details').textContent()).includes('000001'));
  await until('the customer\'s licenses', async () => (await page.locator('.customer-details table').count()) === 2);
  await shot('clientes');

  await page.goto(`${URL_BASE}/#/eventos`);
  await until('the feed', async () => (await page.locator('#events tbody tr').count()) > 20);
  const form = page.locator('form.filters');
  await form.getByLabel('Tipo', { exact: true }).selectOption({ label: 'Licença desassociada' });
  await form.getByRole('button', { name: 'Filtrar' }).click();
  await until('only the unlink', async () => (await page.locator('#events tbody tr').count()) === 1
    && (await page.locator('#events tbody tr').first().getAttribute('data-type')) === 'LicenseUnlinked');
  await form.getByRole('button', { name: 'Limpar' }).click();
  await form.getByLabel('Cliente', { exact: true }).selectOption({ label: 'Padaria Pão Dourado (12ABC34501DE35)' });
  await form.getByLabel('Categoria', { exact: true }).selectOption({ label: 'Licença' });
  await form.getByRole('button', { name: 'Filtrar' }).click();
  await until('the bakery\'s license events', async () => {
    const rows = await page.locator('#events tbody tr td:nth-child(6)').allTextContents();
    return rows.length >= 5 && rows.every((c) => c.includes('12ABC34501DE35'));
  });
  await shot('eventos');

  await page.goto(`${URL_BASE}/#/painel`);
  await until('the charts', async () => (await page.locator('#chart-expiring rect.bar').count()) === 31);
  assert.equal(await page.locator('#chart-checkins rect.bar').count(), 24);
  assert.equal(await page.locator('.card.total .card-count').textContent(), '12');
  await shot('painel');
});

await step('the English switch translates the console', async () => {
  await openLicenses();
  await page.getByRole('button', { name: 'English' }).click();
  await until('English', async () => (await footer()) === 'Item 1 (Total 12)');
  assert.ok(await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Licenses' }).isVisible());
  assert.equal(await page.locator('html').getAttribute('lang'), 'en');
  await page.getByRole('button', { name: 'Português' }).click();
  await until('Portuguese', async () => (await footer()) === '1º Item (Total 12)');
});

await step('at a tablet width the page does not scroll sideways', async () => {
  await page.setViewportSize({ width: 820, height: 1180 });
  await openLicenses();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the window`);
  await shot('licencas-tablet');
  await page.setViewportSize({ width: 1280, height: 900 });
});

await step('an auditor sees no action buttons', async () => {
  await page.getByRole('button', { name: 'Sair' }).click();
  await signIn(AUDITOR);
  await until('the table', async () => (await footer()) === '1º Item (Total 12)');
  assert.ok((await page.locator('#who').textContent()).includes('(auditor)'));
  const toolbar = page.getByRole('toolbar');
  assert.deepEqual(await toolbar.getByRole('button').allTextContents(), ['Atualizar', 'Histórico']);
  for (const name of ['Desassociar', 'Bloquear', 'Desbloquear', 'Renovar', 'Recursos', 'Ativar Offline']) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, name);
  }
  await page.getByLabel('Selecionar licença 000001').check();
  await page.getByRole('button', { name: 'Histórico' }).click();
  await until('the history', async () => (await page.locator('#timeline li').count()) >= 4);
});

await step('the page logged no error and broke no content-security rule', async () => {
  assert.deepEqual(pageErrors, []);
});

await browser.close();
clearTimeout(killer);
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
