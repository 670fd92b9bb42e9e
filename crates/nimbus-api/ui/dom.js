// Building blocks of every page. Elements are made with `h`, never from HTML strings, so nothing a user or
// an instance wrote (names, labels, console output) can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// Tells screen readers what just happened without moving focus.
export function announce(text) {
  const live = document.getElementById('live');
  live.textContent = '';
  setTimeout(() => { live.textContent = text; }, 50);
}

export function errorBox(error) {
  return h('p', { class: 'error', role: 'alert' }, error && error.message ? error.message : String(error));
}

// Shows an error (the API's sentence) in `slot`, replacing what it held.
export function showError(slot, error) {
  slot.replaceChildren(errorBox(error));
}

// Asks before doing something that destroys or interrupts; resolves true only on an explicit yes.
export function confirmAction(title, detail, yesLabel) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      h('h2', { id: 'confirm-title', text: title }),
      h('p', { text: detail }),
      h('form', { method: 'dialog', class: 'buttons' },
        h('button', { value: 'no', type: 'submit', text: 'Cancel', autofocus: true }),
        h('button', { value: 'yes', type: 'submit', class: 'danger', text: yesLabel })));
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'yes');
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// `note`: what else the state means (an instance running its rescue system), shown beside it.
export function stateBadge(state, note) {
  return h('span', { class: `state state-${state}`, text: note ? `${state} (${note})` : state });
}

export function labelsList(labels) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return h('span', { class: 'muted', text: 'none' });
  return h('ul', { class: 'labels' }, entries.map(([k, v]) => h('li', { text: v ? `${k}=${v}` : k })));
}

export function formatBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return h('time', { datetime: iso, title: iso, text: d.toLocaleString() });
}

// A table with a caption; `columns` are [{label, cell: row => Node|string}].
export function table(caption, columns, rows, empty = 'Nothing here yet.') {
  if (!rows.length) return h('p', { class: 'muted empty', text: empty });
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('caption', { text: caption }),
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', text: c.label })))),
      h('tbody', {}, rows.map((r) => h('tr', { 'data-id': r.id || r.key_id || r.name || null },
        columns.map((c) => h('td', {}, c.cell(r))))))));
}

// Shows an operation while it runs: kind, state, step and a progress bar; the API's message if it failed.
export function renderOperation(slot, op) {
  const done = op.progress ? op.progress.steps_done : 0;
  const total = op.progress ? Math.max(op.progress.steps_total, 1) : 1;
  const running = op.state === 'pending' || op.state === 'running';
  const text = `${op.kind}: ${op.state}` + (op.progress && op.progress.step && running ? ` (${op.progress.step})` : '');
  slot.replaceChildren(h('div', { class: `operation op-${op.state}`, role: 'status' },
    h('label', {}, text, ' ', h('progress', { max: total, value: running ? done : total })),
    op.message ? h('p', { class: op.state === 'success' ? '' : 'error', text: op.message }) : null));
}

// `key=value` lines (or commas) into a label map; throws a readable error on a bad line.
export function parseLabels(text) {
  const labels = {};
  for (const raw of text.split(/[\n,]/)) {
    const item = raw.trim();
    if (!item) continue;
    const at = item.indexOf('=');
    if (at <= 0) throw new Error(`"${item}" is not a label: write key=value`);
    labels[item.slice(0, at).trim()] = item.slice(at + 1).trim();
  }
  return labels;
}

export function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join('\n');
}

// A labelled form field; `control` is the input, select or textarea.
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2)}`;
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' }, h('label', { for: id, text: label }), control,
    hint ? h('small', { id: hintId, text: hint }) : null);
}
