// The console's shell: sign-in, navigation, the hash router, the language switch and the
// live event stream that refreshes the page on view. Every page is a function that fills a
// fresh container (so a slow, stale render never overwrites a newer page).

import { api, follow, setToken, token, whenUnauthenticated, ApiFailure } from './api.js';
import { h, fill, toast, field } from './dom.js';
import { t, lang, setLang, setZone } from './i18n.js';
import { licensesPage } from './licenses.js';
import {
  historyPage, rawEventPage, contingenciesPage, customersPage, eventsPage, dashboardPage,
} from './pages.js';
import { auditPage } from './audit.js';

/** What every page may read: the session and the customers (for filters). */
export const app = {
  session: null,
  customers: [],
  live: 'down',
};

const pages = {
  licencas: licensesPage,
  historico: historyPage,
  evento: rawEventPage,
  contingencias: contingenciesPage,
  clientes: customersPage,
  eventos: eventsPage,
  auditoria: auditPage,
  painel: dashboardPage,
};

const main = document.getElementById('main');
let stream = null;
let onRecord = null;
let refreshTimer = 0;

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const name = pages[parts[0]] ? parts[0] : 'licencas';
  return { name, args: parts.slice(1) };
}

function renderChrome() {
  document.documentElement.lang = lang() === 'en' ? 'en' : 'pt-BR';
  document.getElementById('skip').textContent = t('skip');
  document.getElementById('lang').textContent = t('switchLang');
  document.getElementById('lang').setAttribute('lang', lang() === 'en' ? 'pt-BR' : 'en');
  const out = document.getElementById('signout');
  out.textContent = t('signOut');
  out.hidden = !app.session;
  const who = document.getElementById('who');
  const nav = document.getElementById('nav');
  if (!app.session) {
    fill(who);
    fill(nav);
    nav.removeAttribute('aria-label');
    return;
  }
  fill(who,
    h('span#live-state', { role: 'status' }),
    ' ',
    h('span.who-name', {}, `${app.session.name} (${t(`role_${app.session.role}`)})`));
  drawLive();
  const current = route().name;
  const link = (name, label, active = current === name) =>
    h('a', { href: `#/${name}`, 'aria-current': active ? 'page' : null }, label);
  nav.setAttribute('aria-label', t('navMain'));
  const monitorOpen = current === 'eventos';
  fill(nav, h('ul', {},
    h('li', {}, link('licencas', t('navLicenses'), current === 'licencas' || current === 'historico')),
    h('li', {}, link('contingencias', t('navContingencies'))),
    h('li', {}, link('clientes', t('navCustomers'))),
    h('li.menu', {},
      h('details', { open: false },
        h(`summary${monitorOpen ? '.current' : ''}`, {}, t('navMonitor')),
        h('ul', {}, h('li', {}, link('eventos', t('navEvents'), current === 'eventos' || current === 'evento'))))),
    h('li', {}, link('auditoria', t('navAudit'))),
    h('li', {}, link('painel', t('navDashboard')))));
}

/** Renders the page the address names. */
export async function render() {
  renderChrome();
  clearTimeout(refreshTimer);
  onRecord = null;
  const view = h('div.view');
  main.replaceChildren(view);
  if (!app.session) {
    signInPage(view);
    return;
  }
  const { name, args } = route();
  const ctx = {
    args,
    session: app.session,
    /** The page's refresh when a record arrives on the live stream. */
    onRecord(fn) { onRecord = fn; },
  };
  try {
    await pages[name](view, ctx);
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 401) return;
    view.append(h('p.error', { role: 'alert' }, t('failed', { message: e.message })));
  }
}

function signInPage(view) {
  const input = h('input#token', { type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const message = h('p.error#signin-error', { role: 'alert' });
  const form = h('form.signin', {
    'aria-labelledby': 'signin-title',
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        fill(message);
        const value = input.value.trim();
        if (!value) return;
        setToken(value);
        try {
          await signIn(true);
        } catch (e) {
          setToken('');
          fill(message, e instanceof ApiFailure && e.status === 403 ? t('signInTerminal')
            : e instanceof ApiFailure && e.status === 401 ? t('signInBad')
              : t('failed', { message: e.message }));
          input.focus();
        }
      },
    },
  },
  h('h1#signin-title', {}, t('signInTitle')),
  h('p', {}, t('signInText')),
  field(t('tokenLabel'), input),
  h('button.primary', { type: 'submit' }, t('signIn')),
  message);
  fill(view, h('section.center', {}, h('p.product-title', {}, t('title')), form));
  input.focus();
}

/** Loads the session for the stored token; throws ApiFailure when it is refused. */
async function signIn(interactive) {
  const session = await api('/v1/session', { quiet401: interactive });
  app.session = session;
  setZone(session.time_zone);
  const customers = await api('/v1/customers?limit=500');
  app.customers = customers.items;
  startLive();
  if (interactive && !location.hash) location.hash = '#/licencas';
  await render();
}

function signOut(message) {
  setToken('');
  app.session = null;
  app.customers = [];
  stopLive();
  if (message) toast(message, 'error');
  render();
}

function drawLive() {
  const el = document.getElementById('live-state');
  if (!el) return;
  el.className = `live ${app.live}`;
  el.textContent = app.live === 'live' ? t('live') : t('liveDown');
}

function setLive(state) {
  if (app.live === state) return;
  app.live = state;
  drawLive();
}

async function startLive() {
  stopLive();
  stream = new AbortController();
  const { signal } = stream;
  try {
    const head = await api('/v1/audit/head');
    follow(head.head_position + 1, (record) => {
      window.dispatchEvent(new CustomEvent('ledger:record', { detail: record }));
      if (!onRecord) return;
      const fn = onRecord;
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => { if (fn === onRecord) fn(record); }, 250);
    }, setLive, signal);
  } catch {
    setLive('down');
  }
}

function stopLive() {
  if (stream) stream.abort();
  stream = null;
  app.live = 'down';
}

/** Customers again (after a change), for the filters. */
export async function reloadCustomers() {
  app.customers = (await api('/v1/customers?limit=500')).items;
}

whenUnauthenticated(() => signOut(t('sessionLost')));

document.getElementById('lang').addEventListener('click', () => {
  setLang(lang() === 'en' ? 'pt' : 'en');
  render();
});
document.getElementById('signout').addEventListener('click', () => signOut());
document.getElementById('skip').addEventListener('click', (ev) => {
  ev.preventDefault();
  main.focus();
});
window.addEventListener('hashchange', () => {
  const details = document.querySelector('#nav details');
  if (details) details.open = false;
  render();
});

(async () => {
  if (token()) {
    try {
      await signIn(false);
      return;
    } catch {
      setToken('');
    }
  }
  render();
})();
