// DOM helpers the Sync tab's view modules share: element creation (text only ever through
// textContent: run names, source strings and stderr are user data), age spans that tick in
// place, and the Sync buttons.

import {ageText, formatLocalTime, freshnessClass, isNum} from './format.js';

/** createElement with a class, text (textContent) and plain attributes. */
export function el(tag, {cls, text, attrs} = {}, children = []) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const child of children) {
    if (child) node.append(child);
  }
  return node;
}

/** A span showing the age of `unixS` that refreshAges() keeps current; exact time on hover. */
export function ageSpan(unixS, nowS, {mode = 'ago', fresh = false} = {}) {
  if (!isNum(unixS)) return el('span', {cls: 'muted', text: '\u2014'});
  const span = el('span', {cls: 'age', attrs: {'data-age-unix': unixS, 'data-age-mode': mode,
    'title': formatLocalTime(unixS)}});
  if (fresh) span.setAttribute('data-fresh', '');
  setAge(span, unixS, nowS, mode, fresh);
  return span;
}

/** Set a span's age text (and freshness class) for `nowS`, touching only what changed. */
export function setAge(span, unixS, nowS, mode, fresh) {
  const text = ageText(unixS, nowS, mode);
  if (span.textContent !== text) span.textContent = text;
  if (fresh) {
    const cls = `age fresh-${freshnessClass(nowS - unixS)}`;
    if (span.className !== cls) span.className = cls;
  }
}

/** Update every age under `root` for the new server clock; touches only what changed. */
export function refreshAges(root, nowS) {
  for (const span of root.querySelectorAll('[data-age-unix]')) {
    setAge(span, Number(span.getAttribute('data-age-unix')), nowS,
        span.getAttribute('data-age-mode'), span.hasAttribute('data-fresh'));
  }
}

/** A Sync button: one source's (`source`), or "Sync all" without one. */
export function syncButton(label, {source, disabled, busyLabel, cls}) {
  const attrs = {'type': 'button', 'data-action': 'sync',
    'data-key': source === undefined ? 'sync-all' : `sync:${source}`};
  if (source !== undefined) {
    attrs['data-source'] = source;
    attrs['aria-label'] = `Sync ${source}`;
  }
  // aria-disabled, not disabled: a busy button keeps keyboard focus (index.js ignores its
  // clicks), so Tab after Enter continues from it instead of from the page's start.
  if (disabled) attrs['aria-disabled'] = 'true';
  return el('button', {cls: cls || 'btn', text: disabled && busyLabel ? busyLabel : label, attrs});
}
