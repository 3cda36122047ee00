// "Licenças": the manual's GERENCIAMENTO DE LICENÇAS screen. Filters, a table sorted over
// every matching row (server side), pages, the "1º Item (Total N)" footer, marks for
// expiring, expired and blocked rows, the action buttons of the selected license (support
// and admin only), and a refresh whenever the live stream brings a record.

import { api, query } from './api.js';
import { h, fill, day, box, nowText, field, select } from './dom.js';
import { t } from './i18n.js';
import { app } from './app.js';
import {
  unlinkAction, blockAction, renewAction, resourcesAction, offlineAction,
} from './actions.js';

/** The table's state, kept while the person visits other pages. */
const state = {
  filters: { cnpj: '', product: '', status: '', expiring_within_days: '', text: '' },
  sort: 'id',
  order: 'asc',
  offset: 0,
  limit: 25,
  selected: null,
};

/** Opens the table filtered to one customer (from "Clientes"). */
export function showCustomerLicenses(cnpj) {
  state.filters = { cnpj, product: '', status: '', expiring_within_days: '', text: '' };
  state.offset = 0;
  location.hash = '#/licencas';
}

/** Opens the table filtered to one status (from the Painel). */
export function showStatus(status) {
  state.filters = { cnpj: '', product: '', status, expiring_within_days: '', text: '' };
  state.offset = 0;
  location.hash = '#/licencas';
}

const COLUMNS = [
  ['id', 'colId'],
  ['hardware_key', 'colHardwareKey'],
  ['ip', 'colIp'],
  ['expires_on', 'colExpires'],
  ['product', 'colProduct'],
  ['blocked', 'colBlocked'],
  ['active', 'colLicense'],
  ['contract', 'colContract'],
];

export const STATUSES = ['active', 'blocked', 'deactivated', 'expired', 'free', 'bound'];

/** The IP column: the bound terminal's latest (as `LicenseRow::ip`); empty when free. */
export function ipOf(row) {
  return row.binding ? row.last_ip || row.binding.ip || '' : '';
}

/**
 * The license table. `opts`: {caption, selectable, selectedId, onSelect(row), sort, order,
 * onSort(key)}. Rows are marked: expiring (≤ 3 days), expired, blocked.
 */
export function licenseTable(rows, opts = {}) {
  const head = COLUMNS.map(([key, label]) => {
    const sorted = opts.sort === key;
    const ariaSort = sorted ? (opts.order === 'desc' ? 'descending' : 'ascending') : 'none';
    const content = opts.onSort
      ? h('button.sort', {
        type: 'button',
        'aria-label': t('sortBy', { col: t(label) }),
        on: { click: () => opts.onSort(key) },
      }, t(label), h('span.arrow', { 'aria-hidden': 'true' }, sorted ? (opts.order === 'desc' ? '▼' : '▲') : '↕'))
      : t(label);
    return h('th', { scope: 'col', 'aria-sort': opts.onSort ? ariaSort : null, dataset: { col: key } }, content);
  });
  if (opts.selectable) head.unshift(h('th.select', { scope: 'col' }, h('span.sr-only', {}, t('colSelect'))));
  const body = rows.map((row) => {
    const classes = ['row'];
    if (row.blocked) classes.push('is-blocked');
    if (row.expired) classes.push('is-expired');
    else if (row.expiring) classes.push('is-expiring');
    if (opts.selectedId === row.license_id) classes.push('selected');
    const marks = [];
    if (row.expired) marks.push(h('span.mark.expired', {}, t('expiredMark')));
    else if (row.expiring) marks.push(h('span.mark.expiring', {}, t('expiringIn', { n: row.days_left })));
    const cells = [
      h('td.id', {}, row.license_id, row.blocked ? h('span.mark.blocked', {}, t('blockedMark')) : null),
      h('td.mono.key', {}, row.binding?.hardware_key || ''),
      h('td.mono.ip', {}, ipOf(row)),
      h('td.date', {}, day(row.expires_on), ' ', marks),
      h('td', {}, row.product_name),
      h('td.flag', {}, box(row.blocked)),
      h('td.flag', {}, box(row.active)),
      h('td.flag', {}, box(row.contract_active === true)),
    ];
    if (opts.selectable) {
      cells.unshift(h('td.select', {}, h('input', {
        type: 'radio',
        name: 'license',
        value: row.license_id,
        checked: opts.selectedId === row.license_id,
        'aria-label': t('selectRow', { id: row.license_id }),
        on: { change: () => opts.onSelect(row) },
      })));
    }
    return h(`tr.${classes.join('.')}`, {
      dataset: { id: row.license_id },
      on: opts.selectable ? {
        click: (ev) => { if (ev.target.tagName !== 'INPUT') opts.onSelect(row); },
      } : {},
    }, cells);
  });
  return h('div.table-wrap', {},
    h('table.grid.licenses', {},
      opts.caption ? h('caption', {}, opts.caption) : null,
      h('thead', {}, h('tr', {}, head)),
      h('tbody', {}, body)));
}

/** "1º Item (Total N)", or "Nenhum Registro". */
export function footerText(page, index = 0) {
  if (!page.total) return t('noRecords');
  return t('footer', { n: page.offset + index + 1, total: page.total });
}

export function legend() {
  return h('p.legend', {},
    h('span.legend-title', {}, `${t('legend')}: `),
    h('span.swatch.is-expiring', {}, t('legendExpiring')),
    h('span.swatch.is-expired', {}, t('legendExpired')),
    h('span.swatch.is-blocked', {}, t('legendBlocked')));
}

export async function licensesPage(view, ctx) {
  const mayAct = ctx.session.may_act;
  let page = { items: [], total: 0, offset: 0, limit: state.limit };
  const tableSlot = h('div.table-slot');
  const footer = h('span.footer#license-footer', { role: 'status' });
  const statusLine = h('p.statusline#statusline');
  const toolbar = h('div.toolbar', { role: 'toolbar', 'aria-label': t('actions') });
  const pager = h('div.pager');

  const selectedRow = () => page.items.find((r) => r.license_id === state.selected) || null;

  function choose(row) {
    state.selected = row.license_id;
    draw();
    const radio = tableSlot.querySelector(`input[value="${row.license_id}"]`);
    if (radio && document.activeElement?.name !== 'license') radio.focus({ preventScroll: true });
  }

  function draw() {
    fill(tableSlot, licenseTable(page.items, {
      selectable: true,
      selectedId: state.selected,
      onSelect: choose,
      sort: state.sort,
      order: state.order,
      onSort: (key) => {
        state.order = state.sort === key && state.order === 'asc' ? 'desc' : 'asc';
        state.sort = key;
        state.offset = 0;
        load();
      },
    }));
    const index = Math.max(0, page.items.findIndex((r) => r.license_id === state.selected));
    fill(footer, footerText(page, index));
    drawToolbar();
    fill(pager,
      h('button', { type: 'button', disabled: page.offset === 0, on: { click: () => { state.offset = Math.max(0, page.offset - state.limit); load(); } } }, t('prev')),
      h('button', { type: 'button', disabled: page.offset + page.items.length >= page.total, on: { click: () => { state.offset = page.offset + state.limit; load(); } } }, t('next')),
      field(t('pageSize'), select([[10, '10'], [25, '25'], [50, '50'], [100, '100']], state.limit, {
        on: { change: (ev) => { state.limit = Number(ev.target.value); state.offset = 0; load(); } },
      })));
  }

  function drawToolbar() {
    const row = selectedRow();
    const done = (position) => load(position);
    const buttons = [
      h('button#btn-refresh', { type: 'button', on: { click: () => load() } }, t('refresh')),
    ];
    if (mayAct) {
      buttons.push(h('button#btn-unlink', { type: 'button', disabled: !row?.binding, on: { click: () => unlinkAction(row, done) } }, t('unlink')));
    }
    buttons.push(h('button#btn-history', { type: 'button', disabled: !row, on: { click: () => { location.hash = `#/historico/${row.license_id}`; } } }, t('history')));
    if (mayAct) {
      buttons.push(
        h('button#btn-block', { type: 'button', disabled: !row, on: { click: () => blockAction(row, done) } }, row?.blocked ? t('unblock') : t('block')),
        h('button#btn-renew', { type: 'button', disabled: !row, on: { click: () => renewAction(row, done) } }, t('renew')),
        h('button#btn-resources', { type: 'button', disabled: !row, on: { click: () => resourcesAction(row, done) } }, t('resources')),
        h('button#btn-offline', { type: 'button', on: { click: () => offlineAction(row, ctx.session, done) } }, t('offline')),
      );
    }
    fill(toolbar, buttons);
  }

  let loading = 0;
  async function load(minPosition) {
    const mine = ++loading;
    const q = {
      ...state.filters,
      sort: state.sort,
      order: state.order,
      offset: state.offset,
      limit: state.limit,
      min_position: minPosition,
    };
    const next = await api(`/v1/license-table${query(q)}`);
    if (mine !== loading) return;
    page = next;
    draw();
    fill(statusLine, t('updatedAt', { at: nowText() }));
  }

  // ---- filters ----
  const f = state.filters;
  const customer = select([['', t('all')], ...app.customers.map((c) => [c.cnpj, `${c.trade_name} (${c.cnpj})`])], f.cnpj, { name: 'cnpj' });
  const product = select([['', t('all')], ...ctx.session.products.map((p) => [p.product, p.name])], f.product, { name: 'product' });
  const status = select([['', t('all')], ...STATUSES.map((s) => [s, t(`st_${s}`)])], f.status, { name: 'status' });
  const expiring = h('input', { type: 'number', min: 0, max: 3650, name: 'expiring_within_days', value: f.expiring_within_days, inputmode: 'numeric' });
  const text = h('input', { type: 'search', name: 'text', value: f.text, placeholder: '88A7B56C…, 192.168.0.191, 002438' });
  const form = h('form.filters', {
    'aria-label': t('filters'),
    on: {
      submit: (ev) => {
        ev.preventDefault();
        state.filters = {
          cnpj: customer.value,
          product: product.value,
          status: status.value,
          expiring_within_days: expiring.value,
          text: text.value.trim(),
        };
        state.offset = 0;
        load();
      },
    },
  },
  field(t('fCustomer'), customer),
  field(t('fProduct'), product),
  field(t('fStatus'), status),
  field(t('fExpiring'), expiring),
  field(t('fText'), text, t('fTextHint')),
  h('div.filter-buttons', {},
    h('button.primary', { type: 'submit' }, t('filter')),
    h('button', {
      type: 'button',
      on: {
        click: () => {
          customer.value = ''; product.value = ''; status.value = ''; expiring.value = ''; text.value = '';
          form.requestSubmit();
        },
      },
    }, t('clear'))));

  fill(view,
    h('h1', {}, t('title')),
    h('div.tabs', { role: 'navigation', 'aria-label': t('title') },
      h('a.tab.active', { href: '#/licencas', 'aria-current': 'page' }, t('navLicenses')),
      h('a.tab', { href: '#/contingencias' }, t('navContingencies'))),
    form,
    tableSlot,
    h('div.table-foot', {}, toolbar, footer, pager),
    statusLine,
    legend());
  fill(statusLine, t('waiting', { at: nowText() }));
  ctx.onRecord(() => load());
  await load();
}
