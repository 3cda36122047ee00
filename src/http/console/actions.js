// The actions on a license, each in a modal <dialog> that says exactly what will happen and
// asks for confirmation (and a reason where the ledger records one: Desassociar, Bloquear,
// Desbloquear). Every action is an API command; the answer's position is handed back so the
// table reads its own write.

import { api } from './api.js';
import { h, fill, day, toast, field, select } from './dom.js';
import { t } from './i18n.js';

const dialog = () => document.getElementById('dialog');

/**
 * Opens the dialog. `onConfirm({reason})` runs the command; it may return nodes to show in
 * place of the form (a result), else the dialog closes. Errors stay in the dialog.
 */
export function openDialog({ title, content = [], reason = false, confirmLabel, onConfirm }) {
  const dlg = dialog();
  const error = h('p.error', { role: 'alert' });
  const reasonInput = reason
    ? h('input#action-reason', { type: 'text', required: true, minlength: 3, maxlength: 500, autocomplete: 'off' })
    : null;
  const confirmBtn = h('button.primary#dialog-confirm', { type: 'submit' }, confirmLabel || t('confirm'));
  const form = h('form.dialog-form', {
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        if (!form.reportValidity()) return;
        confirmBtn.disabled = true;
        fill(error);
        try {
          const result = await onConfirm({ reason: reasonInput?.value.trim() });
          if (result) {
            fill(dlg, h('div.dialog-form', {},
              h('h2#dialog-title', {}, title),
              result,
              h('div.dialog-buttons', {}, h('button.primary#dialog-close', { type: 'button', on: { click: () => dlg.close() } }, t('close')))));
            dlg.querySelector('#dialog-close').focus();
          } else {
            dlg.close();
          }
        } catch (e) {
          fill(error, t('failed', { message: e.message }));
          confirmBtn.disabled = false;
        }
      },
    },
  },
  h('h2#dialog-title', {}, title),
  content,
  reasonInput ? field(t('reason'), reasonInput, t('reasonHint')) : h('p.hint', {}, t('noReasonRecorded')),
  error,
  h('div.dialog-buttons', {},
    h('button', { type: 'button', on: { click: () => dlg.close() } }, t('cancel')),
    confirmBtn));
  dlg.setAttribute('aria-labelledby', 'dialog-title');
  fill(dlg, form);
  dlg.showModal();
  const first = form.querySelector('input, select, textarea') || confirmBtn;
  first.focus();
}

export function unlinkAction(row, done) {
  const id = row.license_id;
  openDialog({
    title: t('unlinkTitle', { id }),
    content: h('p', {}, t('unlinkText', { id, hw: row.binding?.hardware_id || '' })),
    reason: true,
    confirmLabel: t('unlink'),
    onConfirm: async ({ reason }) => {
      const r = await api(`/v1/licenses/${id}/unlink`, { method: 'POST', body: { note: reason } });
      toast(t('unlinked', { id }));
      await done(r.position);
    },
  });
}

export function blockAction(row, done) {
  const id = row.license_id;
  const unblock = row.blocked;
  openDialog({
    title: t(unblock ? 'unblockTitle' : 'blockTitle', { id }),
    content: h('p', {}, t(unblock ? 'unblockText' : 'blockText', { id })),
    reason: true,
    confirmLabel: unblock ? t('unblock') : t('block'),
    onConfirm: async ({ reason }) => {
      const r = await api(`/v1/licenses/${id}/${unblock ? 'unblock' : 'block'}`, { method: 'POST', body: { note: reason } });
      toast(t(unblock ? 'unblocked' : 'blocked', { id }));
      await done(r.position);
    },
  });
}

function addDays(iso, n) {
  const d = new Date(`${iso}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

export function renewAction(row, done) {
  const id = row.license_id;
  const date = h('input#renew-date', { type: 'date', required: true, min: addDays(row.expires_on, 1), value: addDays(row.expires_on, 30) });
  openDialog({
    title: t('renewTitle', { id }),
    content: [h('p', {}, t('renewText', { id, day: day(row.expires_on) })), field(t('newExpiry'), date)],
    confirmLabel: t('renew'),
    onConfirm: async () => {
      const r = await api(`/v1/licenses/${id}/renew`, { method: 'POST', body: { expires_on: date.value } });
      toast(t('renewed', { id, day: day(date.value) }));
      await done(r.position);
    },
  });
}

function valueEditor(key, value) {
  if (typeof value === 'boolean') {
    return h('input', { type: 'checkbox', checked: value, 'aria-label': key, dataset: { key, kind: 'bool' } });
  }
  if (typeof value === 'number') {
    return h('input', { type: 'number', step: 1, value, 'aria-label': key, required: true, dataset: { key, kind: 'int' } });
  }
  return h('input', { type: 'text', value, maxlength: 200, 'aria-label': key, dataset: { key, kind: 'text' } });
}

export function resourcesAction(row, done) {
  const id = row.license_id;
  const body = h('tbody');
  const addRow = (key, value) => {
    const tr = h('tr', { dataset: { key } },
      h('th', { scope: 'row' }, h('code', {}, key)),
      h('td', {}, valueEditor(key, value)),
      h('td', {}, h('button.small', { type: 'button', 'aria-label': t('resRemove', { key }), on: { click: () => tr.remove() } }, '✕')));
    body.append(tr);
  };
  for (const [k, v] of Object.entries(row.resources || {})) addRow(k, v);
  const newKey = h('input#res-new-key', { type: 'text', pattern: '[a-z][a-z0-9_]{0,63}', autocomplete: 'off' });
  const newType = select([['bool', t('resBool')], ['int', t('resInt')], ['text', t('resText')]], 'bool');
  const add = h('button', {
    type: 'button',
    on: {
      click: () => {
        const key = newKey.value.trim();
        if (!key || !newKey.checkValidity() || body.querySelector(`tr[data-key="${key}"]`)) {
          newKey.reportValidity();
          return;
        }
        addRow(key, newType.value === 'bool' ? true : newType.value === 'int' ? 0 : '');
        newKey.value = '';
      },
    },
  }, t('resAdd'));
  openDialog({
    title: t('resourcesTitle', { id }),
    content: [
      h('p', {}, t('resourcesText')),
      h('table.grid.compact', {},
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, t('resKey')), h('th', { scope: 'col' }, t('resValue')), h('th', { scope: 'col' }, h('span.sr-only', {}, t('resRemove', { key: '' }))))),
        body),
      h('div.inline', {}, field(t('resNewKey'), newKey), field(t('resNewType'), newType), add),
    ],
    confirmLabel: t('confirm'),
    onConfirm: async () => {
      const resources = {};
      for (const input of body.querySelectorAll('input[data-key]')) {
        const { key, kind } = input.dataset;
        resources[key] = kind === 'bool' ? input.checked : kind === 'int' ? Number(input.value) : input.value;
      }
      const r = await api(`/v1/licenses/${id}/resources`, { method: 'PUT', body: { resources } });
      toast(t('resourcesSaved', { id }));
      await done(r.position);
    },
  });
}

export function offlineAction(row, session, done) {
  const product = select(session.products.map((p) => [p.product, p.name]), row?.product || 'easycash', { required: true });
  product.id = 'offline-product';
  const serial = h('input#offline-serial', {
    type: 'text', required: true, pattern: '[0-9A-Fa-f]{16}', maxlength: 16, autocomplete: 'off', spellcheck: 'false',
  });
  const link = row ? h('input#offline-link', { type: 'checkbox', checked: true }) : null;
  const caixa = h('input#offline-caixa', { type: 'number', min: 0, max: 9999 });
  const equipamento = h('input#offline-equipamento', { type: 'number', min: 0, max: 9999 });
  openDialog({
    title: t('offlineTitle'),
    content: [
      h('p', {}, t('offlineText')),
      field(t('fProduct'), product),
      field(t('serial'), serial, t('serialHint')),
      link ? h('div.check', {}, link, h('label', { for: 'offline-link' }, t('forLicense', { id: row.license_id, cnpj: row.cnpj }))) : null,
      h('div.inline', {}, field(t('caixa'), caixa), field(t('equipamento'), equipamento)),
    ],
    confirmLabel: t('offline'),
    onConfirm: async () => {
      const body = { product: product.value, serial: serial.value.trim().toUpperCase() };
      if (link?.checked) { body.cnpj = row.cnpj; body.license_id = row.license_id; }
      if (caixa.value) body.caixa = caixa.value;
      if (equipamento.value) body.equipamento = equipamento.value;
      const r = await api('/v1/offline-activations', { method: 'POST', body });
      await done(r.position);
      return [
        h('p', {}, t('offlineDone')),
        h('p.counter-key-label', {}, t('counterKey'), ' · ', body.serial),
        h('output.counter-key#counter-key', { 'aria-live': 'polite' }, r.counter_key),
        // A day: the code is good through its last second, on the server's clock.
        h('p.valid-until#counter-key-valid', {}, t('validUntil', { at: `${day(r.valid_until)} 23:59:59` })),
      ];
    },
  });
}
