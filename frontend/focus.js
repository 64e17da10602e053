// Keyboard focus across rebuilds: the Sync tab replaces nodes as data changes, and the
// element the user was on (found again by its stable `data-key`) keeps the focus.

/**
 * Replace a slot's content, keeping keyboard focus on the "same" element (by data-key).
 *
 * Keyboard users press Enter on "Sync" and stay where they were: the rebuilt button gets
 * focus back. (A `disabled` control cannot hold focus; `memo.key` then remembers it until it
 * is enabled again, unless the user focused something else meanwhile.)
 */
export function replaceSlot(slot, node, memo) {
  keepFocus(slot, memo, () => slot.replaceChildren(node), slot);
}

/** Run `replace` (which swaps nodes inside `scope`), then put focus back by data-key. */
export function keepFocus(scope, memo, replace, searchIn) {
  const active = document.activeElement;
  let key = active && scope.contains(active) ? active.getAttribute('data-key') : null;
  if (!key && memo.key && (!active || active === document.body)) key = memo.key;
  const node = replace();
  if (!key) return;
  const root = searchIn || node;
  const target = root.matches && root.matches(`[data-key="${CSS.escape(key)}"]`) ? root :
    root.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (!target) return;
  if (target.disabled) {  // a disabled control cannot hold focus: give it back later
    memo.key = key;
  } else {
    memo.key = null;
    target.focus();
  }
}
