// The other pages: a license's Histórico, one raw event, Contingências, Clientes,
// Monitorar → Eventos (the manual's "Monitoramento de Logs") and the Painel (dashboard).

import { api, query } from './api.js';
import { h, fill, day, dateTime, box, shortHash, field, select } from './dom.js';
import { t, eventTypeLabel } from './i18n.js';
import { app } from './app.js';
import { showCustomerLicenses, showStatus, ipOf } from './licenses.js';

const HISTORY_PAGE = 50;

function backLink(href = '#/licencas') {
  return h('p.back', {}, h('a', { href }, `← ${t('back')}`));
}

function actorText(actor) {
  return `${actor.name} (${t(`actor_${actor.kind}`)})`;
}

// ---- Histórico ----

export async function historyPage(view, ctx) {
  const id = ctx.args[0] || '';
  const license = await api(`/v1/license-table${query({ text: id, limit: 500 })}`);
  const row = license.items.find((r) => r.license_id === id);
  const summary = row
    ? h('dl.summary', {},
      h('dt', {}, t('colProduct')), h('dd', {}, row.product_name),
      h('dt', {}, t('colCustomer')), h('dd', {}, `${row.trade_name || ''} (${row.cnpj})`),
      h('dt', {}, t('colExpires')), h('dd', {}, day(row.expires_on)),
      h('dt', {}, t('colHardwareKey')), h('dd.mono', {}, row.binding?.hardware_key || t('none')),
      h('dt', {}, t('colIp')), h('dd.mono', {}, ipOf(row) || t('none')),
      h('dt', {}, t('lastSeen')),
      h('dd#last-seen', {}, row.last_seen_at ? dateTime(row.last_seen_at) : t('none')),
      h('dt', {}, t('colBlocked')), h('dd', {}, box(row.blocked)),
      h('dt', {}, t('colLicense')), h('dd', {}, box(row.active)))
    : null;
  const list = h('ol.timeline#timeline', { 'aria-label': t('timeline') });
  const count = h('p.count', { role: 'status' });
  const more = h('button#history-more', { type: 'button', hidden: true }, t('olderEntries'));
  let shown = 0;

  function entry(e) {
    return h('li.entry', { dataset: { position: e.position } },
      h('div.entry-head', {},
        h('time', { datetime: e.recorded_at }, dateTime(e.recorded_at)),
        h('span.actor', {}, actorText(e.actor)),
        h('span.etype', {}, eventTypeLabel(e.event_type))),
      h('p.entry-text', {}, e.description),
      h('p.entry-meta', {},
        h('span', {}, `${t('position')} #${e.position}`), ' · ',
        h('span.mono', { title: e.hash }, `${t('hash')} ${shortHash(e.hash)}`), ' · ',
        h('a', { href: `#/evento/${e.position}` }, t('rawEvent', { p: e.position }))));
  }

  async function load(reset) {
    const offset = reset ? 0 : shown;
    const page = await api(`/v1/licenses/${encodeURIComponent(id)}/history${query({ offset, limit: HISTORY_PAGE })}`);
    if (reset) { fill(list); shown = 0; }
    list.append(...page.items.map(entry));
    shown += page.items.length;
    fill(count, t('entryCount', { n: shown, total: page.total }));
    more.hidden = shown >= page.total;
  }
  more.addEventListener('click', () => load(false));

  fill(view,
    backLink(),
    h('h1', {}, t('historyTitle', { id })),
    summary,
    h('h2', {}, t('timeline')),
    count,
    list,
    more);
  ctx.onRecord(() => load(true));
  await load(true);
}

// ---- one raw event ----

export async function rawEventPage(view, ctx) {
  const p = Number(ctx.args[0]);
  const page = await api(`/v1/events${query({ from: p, limit: 1 })}`);
  const record = page.items.find((r) => r.position === p);
  const license = record?.stream_id?.startsWith('license-') ? record.stream_id.slice(8) : null;
  fill(view,
    backLink(license ? `#/historico/${license}` : '#/eventos'),
    h('h1', {}, t('rawTitle', { p })),
    record
      ? [
        h('dl.summary', {},
          h('dt', {}, t('evType')), h('dd', {}, `${eventTypeLabel(record.event_type)} (${record.event_type})`),
          h('dt', {}, t('evDateTime')), h('dd', {}, dateTime(record.recorded_at)),
          h('dt', {}, t('evActor')), h('dd', {}, actorText(record.actor)),
          h('dt', {}, 'Stream'), h('dd.mono', {}, record.stream_id),
          h('dt', {}, 'prev_hash'), h('dd.mono.wrap', {}, record.prev_hash),
          h('dt', {}, t('hash')), h('dd.mono.wrap', {}, record.hash)),
        h('pre.raw#raw-event', { tabindex: 0 }, JSON.stringify(record, null, 2)),
      ]
      : h('p', {}, t('rawMissing', { p })));
}

// ---- Contingências ----

function contingencyTable(rows, past) {
  const name = (cnpj) => app.customers.find((c) => c.cnpj === cnpj)?.trade_name || '';
  return h('div.table-wrap', {}, h('table.grid', {},
    h('thead', {}, h('tr', {},
      [t('colCustomer'), t('contKind'), t('contTerminal'), t('colId'), t('contGrace'), t('contEntered'), t('contNote'),
        ...(past ? [t('contCleared'), t('contClearedNote')] : [])].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.length ? rows.map((r) => h('tr', {},
      h('td', {}, `${name(r.cnpj)} (${r.cnpj})`),
      h('td', {}, t(`contKind_${r.kind}`)),
      h('td.mono', {}, r.hardware_id || ''),
      h('td', {}, r.license_id ? h('a', { href: `#/historico/${r.license_id}` }, r.license_id) : ''),
      h('td', {}, day(r.grace_until)),
      h('td', {}, dateTime(r.entered_at)),
      h('td', {}, r.note || ''),
      ...(past ? [h('td', {}, dateTime(r.cleared_at)), h('td', {}, r.cleared_note || '')] : []))) : h('tr', {}, h('td', { colspan: past ? 9 : 7 }, t('noRecords'))))));
}

export async function contingenciesPage(view, ctx) {
  const slot = h('div');
  async function load() {
    const all = await api('/v1/contingencies?limit=500');
    const open = all.items.filter((r) => !r.cleared_at);
    const past = all.items.filter((r) => r.cleared_at);
    fill(slot,
      h('h2#open-contingencies', {}, `${t('contOpen')} (${open.length})`),
      contingencyTable(open, false),
      h('h2#past-contingencies', {}, `${t('contPast')} (${past.length})`),
      contingencyTable(past, true));
  }
  fill(view,
    h('h1', {}, t('title')),
    h('div.tabs', { role: 'navigation', 'aria-label': t('title') },
      h('a.tab', { href: '#/licencas' }, t('navLicenses')),
      h('a.tab.active', { href: '#/contingencias', 'aria-current': 'page' }, t('navContingencies'))),
    slot);
  ctx.onRecord(load);
  await load();
}

// ---- Clientes ----

export async function customersPage(view, ctx) {
  const search = h('input', { type: 'search', name: 'text' });
  const slot = h('div');
  const open = new Set();

  function details(c) {
    const contracts = c.contracts.length
      ? h('table.grid.compact', {},
        h('thead', {}, h('tr', {}, [t('ctId'), t('ctStarts'), t('ctEnds'), t('ctInterval'), t('ctRenew'), t('ctActive')].map((x) => h('th', { scope: 'col' }, x)))),
        h('tbody', {}, c.contracts.map((k) => h('tr', {},
          h('td', {}, k.contract_id), h('td', {}, day(k.starts_on)), h('td', {}, day(k.ends_on) || t('none')),
          h('td', {}, k.interval_days), h('td', {}, k.renew_before_days), h('td.flag', {}, box(k.active))))))
      : h('p', {}, t('noContracts'));
    const licenses = h('div', {}, t('loading'));
    api(`/v1/customers/${encodeURIComponent(c.cnpj)}/licenses?limit=500`).then((page) => {
      fill(licenses, h('table.grid.compact', {},
        h('thead', {}, h('tr', {}, [t('colId'), t('colProduct'), t('colHardwareKey'), t('colExpires'), t('colBlocked'), t('colLicense')].map((x) => h('th', { scope: 'col' }, x)))),
        h('tbody', {}, page.items.map((l) => h('tr', {},
          h('td', {}, h('a', { href: `#/historico/${l.license_id}` }, l.license_id)),
          h('td', {}, app.session.products.find((p) => p.product === l.product)?.name || l.product),
          h('td.mono', {}, l.binding?.hardware_key || ''),
          h('td', {}, day(l.expires_on)),
          h('td.flag', {}, box(l.blocked)),
          h('td.flag', {}, box(l.active)))))));
    }, (e) => fill(licenses, t('failed', { message: e.message })));
    const profile = h('dl.summary', {},
      h('dt', {}, t('custPartner')), h('dd', {}, c.partner || t('none')),
      h('dt', {}, t('custTimeZone')), h('dd', {}, c.time_zone || t('custServerZone')),
      h('dt', {}, t('custCreated')), h('dd', {}, dateTime(c.created_at)),
      h('dt', {}, t('custUpdated')), h('dd', {}, dateTime(c.updated_at)));
    return h('div.customer-details', {},
      profile,
      h('h3', {}, t('custContracts')), contracts,
      h('h3', {}, t('custLicenses')), licenses,
      h('button', { type: 'button', on: { click: () => showCustomerLicenses(c.cnpj) } }, t('custShowLicenses')));
  }

  async function load() {
    const page = await api(`/v1/customers${query({ text: search.value.trim(), limit: 500 })}`);
    const rows = [];
    for (const c of page.items) {
      const expanded = open.has(c.cnpj);
      const detailsId = `cust-${c.cnpj}`;
      rows.push(h(`tr${c.blocked || c.blacklisted ? '.is-blocked' : ''}`, { dataset: { cnpj: c.cnpj } },
        h('td.mono', {}, c.cnpj),
        h('td', {}, c.trade_name),
        h('td.flag', {}, box(c.active)),
        h('td.flag', {}, box(c.blocked)),
        h('td.flag', {}, box(c.blacklisted)),
        h('td', {}, day(c.since)),
        h('td', {}, c.contracts.length),
        h('td', {}, `${c.licenses.total}`),
        h('td', {}, h('button.small', {
          type: 'button',
          'aria-expanded': expanded ? 'true' : 'false',
          'aria-controls': detailsId,
          'aria-label': t('custDetails', { name: c.trade_name }),
          on: { click: () => { if (expanded) open.delete(c.cnpj); else open.add(c.cnpj); load(); } },
        }, expanded ? '−' : '+'))));
      if (expanded) rows.push(h('tr.details', { id: detailsId }, h('td', { colspan: 9 }, details(c))));
    }
    fill(slot, h('div.table-wrap', {}, h('table.grid#customers', {},
      h('thead', {}, h('tr', {}, [t('custCnpj'), t('custName'), t('custActive'), t('custBlocked'), t('custBlacklist'), t('custSince'), t('custContracts'), t('custLicenses'), ''].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows))),
    h('p.footer', {}, page.total ? t('footer', { n: 1, total: page.total }) : t('noRecords')));
  }

  fill(view,
    h('h1', {}, t('navCustomers')),
    h('form.filters', { on: { submit: (ev) => { ev.preventDefault(); load(); } } },
      field(t('custSearch'), search),
      h('div.filter-buttons', {}, h('button.primary', { type: 'submit' }, t('filter')))),
    slot);
  ctx.onRecord(load);
  await load();
}

// ---- Monitorar → Eventos ----

const eventsState = { filters: {}, items: [], next: null, scanned: 0, head: 0 };

export async function eventsPage(view, ctx) {
  const f = eventsState.filters;
  const fromId = h('input', { type: 'number', min: 1, name: 'from_position', value: f.from_position });
  const toId = h('input', { type: 'number', min: 1, name: 'to_position', value: f.to_position });
  const category = select([['', t('all')], ...ctx.session.categories.map((c) => [c, t(`cat_${c}`)])], f.category, { name: 'category' });
  const type = select([['', t('all')], ...ctx.session.event_types.map((e) => [e, eventTypeLabel(e)])], f.type, { name: 'type' });
  const customer = select([['', t('all')], ...app.customers.map((c) => [c.cnpj, `${c.trade_name} (${c.cnpj})`])], f.cnpj, { name: 'cnpj' });
  const since = h('input', { type: 'date', name: 'since', value: f.sinceDay });
  const until = h('input', { type: 'date', name: 'until', value: f.untilDay });
  const tbody = h('tbody');
  const status = h('p.count#events-status', { role: 'status' });
  const more = h('button#events-more', { type: 'button', hidden: true }, t('evMore'));

  function row(e) {
    const name = app.customers.find((c) => c.cnpj === e.cnpj)?.trade_name;
    return h('tr', { dataset: { position: e.position, type: e.event_type } },
      h('td', {}, e.position),
      h('td', {}, eventTypeLabel(e.event_type)),
      h('td', {}, t(`cat_${e.category}`)),
      h('td', {}, dateTime(e.recorded_at)),
      h('td', {}, actorText(e.actor)),
      h('td', {}, e.cnpj ? `${name || ''} (${e.cnpj})` : ''),
      h('td', {}, e.description),
      h('td', {}, h('a', { href: `#/evento/${e.position}`, 'aria-label': t('rawEvent', { p: e.position }) }, '{ }')));
  }

  function params(before) {
    return {
      from_position: f.from_position,
      to_position: f.to_position,
      category: f.category,
      type: f.type,
      cnpj: f.cnpj,
      since: f.sinceDay ? `${f.sinceDay}T00:00:00Z` : '',
      until: f.untilDay ? `${f.untilDay}T23:59:59.999999Z` : '',
      before,
      limit: 50,
    };
  }

  function draw() {
    fill(tbody, eventsState.items.length ? eventsState.items.map(row) : h('tr', {}, h('td', { colspan: 8 }, t('noRecords'))));
    fill(status, t('evScanned', { n: eventsState.scanned, head: eventsState.head }));
    more.hidden = !eventsState.next;
  }

  async function load(append) {
    const page = await api(`/v1/events/search${query(params(append ? eventsState.next : undefined))}`);
    eventsState.items = append ? [...eventsState.items, ...page.items] : page.items;
    eventsState.next = page.next_before;
    eventsState.scanned = append ? eventsState.scanned + page.scanned : page.scanned;
    eventsState.head = page.head_position;
    draw();
  }
  more.addEventListener('click', () => load(true));

  const form = h('form.filters', {
    'aria-label': t('filters'),
    on: {
      submit: (ev) => {
        ev.preventDefault();
        eventsState.filters = {
          from_position: fromId.value,
          to_position: toId.value,
          category: category.value,
          type: type.value,
          cnpj: customer.value,
          sinceDay: since.value,
          untilDay: until.value,
        };
        Object.assign(f, eventsState.filters);
        load(false);
      },
    },
  },
  field(t('evIdFrom'), fromId),
  field(t('evIdTo'), toId),
  field(t('evCategory'), category),
  field(t('evType'), type),
  field(t('fCustomer'), customer),
  field(t('evFrom'), since),
  field(t('evTo'), until),
  h('div.filter-buttons', {},
    h('button.primary', { type: 'submit' }, t('filter')),
    h('button', {
      type: 'button',
      on: {
        click: () => {
          for (const c of [fromId, toId, category, type, customer, since, until]) c.value = '';
          form.requestSubmit();
        },
      },
    }, t('clear'))));

  fill(view,
    h('h1', {}, `${t('navMonitor')} › ${t('navEvents')}`),
    h('p', {}, t('eventsIntro')),
    form,
    h('div.table-wrap', {}, h('table.grid#events', {},
      h('thead', {}, h('tr', {}, ['ID', t('evType'), t('evCategory'), t('evDateTime'), t('evActor'), t('fCustomer'), t('evDescription'), t('evDetails')].map((x) => h('th', { scope: 'col' }, x)))),
      tbody)),
    status,
    more);
  // New records arrive at the top while the newest page is shown.
  ctx.onRecord(() => { if (!eventsState.filters.to_position && !eventsState.filters.untilDay) load(false); });
  await load(false);
}

// ---- Painel ----

const CHART_W = 720;
const CHART_H = 180;

/** A bar chart as SVG (no script or style inside), with its numbers in a table beside it. */
function barChart(id, points, label, summary) {
  const max = Math.max(1, ...points.map((p) => p.count));
  const band = CHART_W / Math.max(1, points.length);
  const bars = points.map((p, i) => {
    const hgt = Math.round((p.count / max) * (CHART_H - 42));
    return h('g', {},
      h('rect', {
        x: (i * band + 2).toFixed(1), y: CHART_H - 20 - hgt, width: Math.max(1, band - 4).toFixed(1), height: hgt, class: 'bar',
      }, h('title', {}, `${p.label}: ${p.count}`)),
      p.count ? h('text', { x: (i * band + band / 2).toFixed(1), y: CHART_H - 24 - hgt, 'text-anchor': 'middle', class: 'bar-value' }, String(p.count)) : null,
      i % Math.ceil(points.length / 12) === 0
        ? h('text', { x: (i * band + band / 2).toFixed(1), y: CHART_H - 6, 'text-anchor': 'middle', class: 'axis' }, p.tick)
        : null);
  });
  return h('figure.chart', {},
    h('svg', { id, viewBox: `0 0 ${CHART_W} ${CHART_H}`, role: 'img', 'aria-label': summary },
      h('line', { x1: 0, y1: CHART_H - 20, x2: CHART_W, y2: CHART_H - 20, class: 'axis-line' }),
      bars),
    h('figcaption', {}, summary),
    h('details', {},
      h('summary', {}, t('dashData')),
      h('table.grid.compact', {},
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, label), h('th', { scope: 'col' }, t('dashCount')))),
        h('tbody', {}, points.map((p) => h('tr', {}, h('td', {}, p.label), h('td', {}, p.count)))))));
}

export async function dashboardPage(view, ctx) {
  async function load() {
    const d = await api('/v1/dashboard?days=30');
    const statusCards = ['active', 'blocked', 'deactivated', 'expired', 'free', 'bound'].map((s) => h(`a.card.${s}`, {
      href: '#/licencas',
      dataset: { status: s },
    }, h('span.card-count', {}, d.licenses[s]), h('span.card-label', {}, t(`st_${s}`))));
    const expiring = d.expiring.map((p) => ({ label: day(p.day), tick: p.day.slice(8, 10), count: p.count }));
    const hours = d.check_ins.hours.map((p) => {
      const hh = p.hour.slice(11, 13);
      return { label: `${dateTime(p.hour).slice(0, 10)} ${hh}h`, tick: `${hh}h`, count: p.count };
    });
    const totalExpiring = expiring.reduce((a, p) => a + p.count, 0);
    const totalCheckins = hours.reduce((a, p) => a + p.count, 0);
    fill(view,
      h('h1', {}, t('navDashboard')),
      h('section', { 'aria-labelledby': 'dash-status' },
        h('h2#dash-status', {}, t('dashStatus')),
        h('div.cards', {}, h('div.card.total', {}, h('span.card-count', {}, d.licenses.total), h('span.card-label', {}, t('dashTotal'))), statusCards)),
      h('section', { 'aria-labelledby': 'dash-expiring' },
        h('h2#dash-expiring', {}, t('dashExpiring', { n: 30 })),
        barChart('chart-expiring', expiring, t('dashDay'), t('dashChartExpiring', { total: totalExpiring, n: 30 }))),
      h('section', { 'aria-labelledby': 'dash-checkins' },
        h('h2#dash-checkins', {}, t('dashCheckins')),
        barChart('chart-checkins', hours, t('dashHour'), t('dashChartCheckins', { total: totalCheckins }))));
    for (const card of view.querySelectorAll('a.card[data-status]')) {
      card.addEventListener('click', () => {
        showStatus(card.dataset.status);
      });
    }
  }
  ctx.onRecord(load);
  await load();
}
