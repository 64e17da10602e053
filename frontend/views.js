// The Sync tab's view layer, as one module: index.js and the tests import it from here.
//
// Every builder takes plain data (the `status` JSON of docs/API.md, or parts of it) and the
// server's clock `nowS` (status.server_unix_s: ages are never computed from the browser's
// clock, which may be skewed from the TensorBoard host), and returns fresh DOM nodes. Text is
// only ever set with textContent: run names, source strings and stderr are user data.
//
// Buttons carry `data-action` (+ `data-source`) and sort headers `data-sort`; index.js
// handles them by event delegation, so nothing here holds state or listeners. Nodes that
// should keep focus or an open <details> across rebuilds carry a stable `data-key`.
// Ages are printed into elements with `data-age-unix` so refreshAges() can update them in
// place between rebuilds.
//
// Imports point one way: format.js (pure wording) <- dom.js <- header.js, sources.js,
// runs.js <- this module <- index.js.

export * from './format.js';
export * from './dom.js';
export * from './header.js';
export * from './sources.js';
export * from './runs.js';
