// The Sync tab's look inside TensorBoard: its stylesheet, and the dark mode it follows.

/** Add style.css once (relative to the plugin's base href). */
export function ensureStylesheet() {
  if (document.querySelector('link[data-tb-rsync-style]')) return;
  const link = document.createElement('link');
  link.rel = 'stylesheet';
  link.href = './style.css';
  link.setAttribute('data-tb-rsync-style', '');
  document.head.appendChild(link);
}

/**
 * Follow TensorBoard's dark mode: it toggles `dark-mode` on its own <body>, which this
 * same-origin iframe can observe. Opened on its own (or if the parent is unreadable), follow
 * the system setting, which is also TensorBoard's default.
 */
export function followTheme(root) {
  let host = null;
  try {
    if (window.parent !== window) host = window.parent.document.body;
  } catch (e) {
    host = null;  // a cross-origin embedder
  }
  if (host) {
    const apply = () => root.classList.toggle('dark', host.classList.contains('dark-mode'));
    new MutationObserver(apply).observe(host, {attributes: true, attributeFilter: ['class']});
    apply();
    return;
  }
  const query = window.matchMedia('(prefers-color-scheme: dark)');
  const apply = () => root.classList.toggle('dark', query.matches);
  query.addEventListener('change', apply);
  apply();
}
