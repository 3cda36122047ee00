// Small DOM helpers: every element is built here with text nodes (never HTML strings), so
// data from the ledger cannot become markup. Dates and times are shown on the server's clock
// (its time zone, from /v1/session), like the CLI.

import { t, lang, zoneName } from './i18n.js';

/** h('tag.class#id', {attr: value, on: {click: fn}}, ...children) */
export function h(spec, attrs, ...children) {
  const [tagAndClasses, id] = spec.split('#');
  const [tag, ...classes] = tagAndClasses.split('.');
  const svg = tag === 'svg' || h.svgTags.has(tag);
  const el = svg
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag || 'div');
  if (classes.length) el.setAttribute('class', classes.join(' '));
  if (id) el.id = id;
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'on') {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'value' && !svg) {
      el.value = v;
    } else if (k === 'checked' || k === 'disabled' || k === 'selected' || k === 'hidden' || k === 'required') {
      el[k] = Boolean(v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}
h.svgTags = new Set(['rect', 'g', 'line', 'text', 'title', 'path']);

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** "2023-05-01" -> "01/05/2023" (pt) or "2023-05-01" (en). */
export function day(iso) {
  if (!iso) return '';
  const [y, m, d] = iso.slice(0, 10).split('-');
  return lang() === 'en' ? `${y}-${m}-${d}` : `${d}/${m}/${y}`;
}

const formats = new Map();

/** The wall-clock fields of instant `ms` in the server's time zone (zoneName()). */
function wall(ms) {
  const zone = zoneName();
  let format = formats.get(zone);
  if (!format) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone: zone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit',
    });
    formats.set(zone, format);
  }
  const p = {};
  for (const part of format.formatToParts(new Date(ms))) p[part.type] = part.value;
  return p;
}

/** How far the server's time zone is ahead of UTC at instant `ms`, in milliseconds. */
function offsetAt(ms) {
  const p = wall(ms);
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) - (ms - (((ms % 1000) + 1000) % 1000));
}

/** An RFC 3339 time -> "dd/mm/yyyy HH:MM:SS" on the server's clock (its time zone, shown
 * beside the labels as {zone}), as the CLI prints it. */
export function dateTime(iso) {
  if (!iso) return '';
  const ms = new Date(iso).getTime();
  if (Number.isNaN(ms)) return iso;
  const p = wall(ms);
  return `${day(`${p.year}-${p.month}-${p.day}`)} ${p.hour}:${p.minute}:${p.second}`;
}

/** Now as "dd/mm/yyyy HH:MM:SS" on the server's clock. */
export function nowText() {
  return dateTime(new Date().toISOString());
}

/** The value of a datetime-local input, read on the server's clock, as RFC 3339 UTC; ''
 * when empty. */
export function utcFromInput(value) {
  if (!value) return '';
  const withSeconds = value.length === 16 ? `${value}:00` : value;
  const asUtc = Date.parse(`${withSeconds}Z`);
  if (Number.isNaN(asUtc)) return `${withSeconds}Z`;
  // The offset at the wall time read as UTC, then at the instant that gives (right across a
  // change of offset too).
  const guess = asUtc - offsetAt(asUtc);
  const at = asUtc - offsetAt(guess);
  return new Date(at).toISOString().replace('.000Z', 'Z');
}

/** A checkbox-like mark for a boolean column, with its meaning for screen readers. */
export function box(on) {
  return h(`span.box${on ? '.on' : ''}`, { role: 'img', 'aria-label': on ? t('yes') : t('no') });
}

/** A short hash for people: the first 12 hex digits. */
export function shortHash(hash) {
  return hash ? `${hash.slice(0, 12)}…` : '';
}

let toastTimer = 0;
/** A passing message in the live region. */
export function toast(text, kind = 'ok') {
  const el = document.getElementById('toast');
  el.className = `toast show ${kind}`;
  el.textContent = text;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = 'toast'; }, 6000);
}

/** A labelled form field: <label>text <control></label> stacked. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h('div.field', {},
    h('label', { for: id }, label),
    control,
    hint ? h('small.hint', {}, hint) : null);
}

/** A <select> from [value, text] pairs. */
export function select(options, value, attrs = {}) {
  return h('select', attrs, options.map(([v, text]) => h('option', { value: v, selected: String(v) === String(value ?? '') }, text)));
}
