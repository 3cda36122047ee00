// "Auditoria": the chain head (its Ed25519 signature checked in the browser when it can),
// "verify now" with progress, the license table as of a date and time, and one license
// compared between two moments. Read-only: auditors see all of it.

import { api, query, jsonLines } from './api.js';
import { h, fill, day, dateTime, shortHash, field, utcFromInput } from './dom.js';
import { t } from './i18n.js';
import { licenseTable, footerText, legend, ipOf } from './licenses.js';

const HEAD_TAG = 'license-ledger/head/v1';

function bytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** 'valid' | 'invalid' | 'unknown' (no Ed25519 in WebCrypto, or not a secure context). */
async function headSignature(head, keys) {
  try {
    const key = await crypto.subtle.importKey('raw', bytes(keys.public_key), { name: 'Ed25519' }, false, ['verify']);
    const tag = new TextEncoder().encode(HEAD_TAG);
    const msg = new Uint8Array(tag.length + 8 + 32);
    msg.set(tag);
    new DataView(msg.buffer).setBigUint64(tag.length, BigInt(head.head_position));
    msg.set(bytes(head.head_hash), tag.length + 8);
    const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, bytes(head.signature), msg);
    return ok ? 'valid' : 'invalid';
  } catch {
    return 'unknown';
  }
}

function headSection() {
  const body = h('div', {}, t('loading'));
  const load = async () => {
    const [head, keys] = await Promise.all([api('/v1/audit/head'), api('/v1/keys')]);
    const sig = await headSignature(head, keys);
    fill(body, h('dl.summary#chain-head', {},
      h('dt', {}, t('headPosition')), h('dd', {}, `#${head.head_position}`),
      h('dt', {}, t('headHash')), h('dd.mono.wrap', {}, head.head_hash),
      h('dt', {}, t('headKey')), h('dd.mono', {}, keys.key_id),
      h('dt', {}, t('headSignature')),
      h('dd', {}, h('span.mono', { title: head.signature }, shortHash(head.signature)), ' ',
        h(`span.sig.${sig}#head-signature`, {}, t(sig === 'valid' ? 'sigValid' : sig === 'invalid' ? 'sigInvalid' : 'sigUnknown')))));
  };
  return { node: h('section.panel', { 'aria-labelledby': 'head-title' }, h('h2#head-title', {}, t('headTitle')), body), load };
}

function verifySection() {
  const progress = h('progress#verify-progress', { max: 1, value: 0, 'aria-label': t('verifyTitle') });
  const text = h('p#verify-result', { role: 'status' });
  const button = h('button.primary#verify-now', { type: 'button' }, t('verifyNow'));
  button.addEventListener('click', async () => {
    button.disabled = true;
    progress.value = 0;
    fill(text, '…');
    text.className = '';
    try {
      await jsonLines('/v1/audit/verify', (line) => {
        if (!line.done) {
          progress.max = Math.max(1, line.head_position);
          progress.value = line.checked;
          fill(text, t('verifyProgress', { n: line.checked, total: line.head_position }));
        } else if (line.ok) {
          progress.max = Math.max(1, line.head_position);
          progress.value = line.head_position;
          text.className = 'ok';
          fill(text, t('verifyOk', { n: line.checked, p: line.head_position, hash: shortHash(line.head_hash) }));
        } else {
          text.className = 'error';
          fill(text, t('verifyFail', { p: line.position, problem: line.problem }));
        }
      });
    } catch (e) {
      text.className = 'error';
      fill(text, t('failed', { message: e.message }));
    } finally {
      button.disabled = false;
    }
  });
  return h('section.panel', { 'aria-labelledby': 'verify-title' },
    h('h2#verify-title', {}, t('verifyTitle')),
    h('p', {}, t('verifyText')),
    h('div.inline', {}, button, progress),
    text);
}

function asOfSection() {
  const input = h('input#asof-input', { type: 'datetime-local', step: 1, required: true });
  const slot = h('div#asof-result');
  let offset = 0;
  const limit = 25;
  async function load() {
    const asOf = utcFromInput(input.value);
    const page = await api(`/v1/license-table${query({ as_of: asOf, offset, limit })}`);
    fill(slot,
      licenseTable(page.items, { caption: t('asOfCaption', { at: dateTime(asOf), p: page.position }) }),
      h('div.table-foot', {},
        h('span.footer#asof-footer', {}, footerText(page)),
        h('div.pager', {},
          h('button', { type: 'button', disabled: offset === 0, on: { click: () => { offset = Math.max(0, offset - limit); load(); } } }, t('prev')),
          h('button', { type: 'button', disabled: offset + page.items.length >= page.total, on: { click: () => { offset += limit; load(); } } }, t('next')))),
      legend());
  }
  const form = h('form.filters#asof-form', {
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        offset = 0;
        try { await load(); } catch (e) { fill(slot, h('p.error', { role: 'alert' }, t('failed', { message: e.message }))); }
      },
    },
  }, field(t('asOfLabel'), input), h('div.filter-buttons', {}, h('button.primary', { type: 'submit' }, t('asOfShow'))));
  return h('section.panel', { 'aria-labelledby': 'asof-title' }, h('h2#asof-title', {}, t('asOfTitle')), form, slot);
}

const DIFF_FIELDS = [
  ['colExpires', (r) => day(r.expires_on)],
  ['colHardwareKey', (r) => r.binding?.hardware_key || ''],
  ['fHardwareId', (r) => r.binding?.hardware_id || ''],
  ['colIp', (r) => ipOf(r)],
  ['colBlocked', (r) => (r.blocked ? t('yes') : t('no'))],
  ['colLicense', (r) => (r.active ? t('yes') : t('no'))],
  ['colContract', (r) => r.contract_id || ''],
  ['fResources', (r) => Object.entries(r.resources || {}).map(([k, v]) => `${k}=${v}`).join(', ')],
  ['fLastCheckIn', (r) => (r.last_check_in ? `${dateTime(r.last_check_in.at)} ${r.last_check_in.hardware_id}` : '')],
  ['fVersion', (r) => String(r.version)],
];

async function licenseAt(id, asOf) {
  try {
    return await api(`/v1/licenses/${encodeURIComponent(id)}${query({ as_of: asOf })}`);
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

function diffSection() {
  const id = h('input#diff-license', { type: 'text', required: true, pattern: '[0-9]{1,6}', inputmode: 'numeric', autocomplete: 'off' });
  const from = h('input#diff-from', { type: 'datetime-local', step: 1, required: true });
  const to = h('input#diff-to', { type: 'datetime-local', step: 1 });
  const slot = h('div#diff-result');
  const form = h('form.filters#diff-form', {
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        const license = id.value.trim().padStart(6, '0');
        const t1 = utcFromInput(from.value);
        const t2 = utcFromInput(to.value);
        try {
          const [a, b] = await Promise.all([licenseAt(license, t1), licenseAt(license, t2)]);
          const rows = DIFF_FIELDS.map(([label, get]) => {
            const va = a ? get(a) : t('diffMissing');
            const vb = b ? get(b) : t('diffMissing');
            return { label: t(label), va, vb, changed: va !== vb };
          });
          const changed = rows.filter((r) => r.changed).length;
          fill(slot,
            h('div.table-wrap', {}, h('table.grid.compact.diff', {},
              h('caption', {}, `${license}: ${dateTime(t1)} → ${t2 ? dateTime(t2) : t('diffNow')}`),
              h('thead', {}, h('tr', {},
                h('th', { scope: 'col' }, t('diffField')),
                h('th', { scope: 'col' }, dateTime(t1)),
                h('th', { scope: 'col' }, t2 ? dateTime(t2) : t('diffNow')))),
              h('tbody', {}, rows.map((r) => h(`tr${r.changed ? '.changed' : ''}`, { dataset: { changed: r.changed ? 'yes' : 'no' } },
                h('th', { scope: 'row' }, r.label),
                h('td', {}, r.changed ? h('del', {}, r.va || t('none')) : r.va || t('none')),
                h('td', {}, r.changed ? h('ins', {}, r.vb || t('none')) : r.vb || t('none'))))))),
            changed ? null : h('p', {}, t('diffNone')));
        } catch (e) {
          fill(slot, h('p.error', { role: 'alert' }, t('failed', { message: e.message })));
        }
      },
    },
  },
  field(t('diffLicense'), id),
  field(t('diffFrom'), from),
  field(t('diffTo'), to),
  h('div.filter-buttons', {}, h('button.primary', { type: 'submit' }, t('diffCompare'))));
  return h('section.panel', { 'aria-labelledby': 'diff-title' }, h('h2#diff-title', {}, t('diffTitle')), form, slot);
}

export async function auditPage(view, ctx) {
  const head = headSection();
  fill(view,
    h('h1', {}, t('navAudit')),
    head.node,
    verifySection(),
    asOfSection(),
    diffSection());
  ctx.onRecord(() => head.load());
  await head.load();
}
