// Every page of the console. A page is `async (main, ctx) => cleanup?`: it fills `main`, subscribes to what
// it needs, and returns what to undo when the user leaves. Buttons that change something appear only for
// keys that may change it (`ctx.me.canWrite`); the API refuses them anyway for a read-only key.

import { api, get, post, patch, del, all, follow } from './api.js';
import {
  h, announce, errorBox, showError, confirmAction, stateBadge, labelsList, formatBytes, formatTime, table,
  renderOperation, parseLabels, labelsText, field,
} from './dom.js';
import { Terminal } from './terminal.js';

const STATES = ['creating', 'starting', 'running', 'stopping', 'stopped', 'rebooting', 'resizing', 'snapshotting',
  'reverting', 'migrating', 'error', 'destroying', 'suspended', 'unknown'];

// Calls `fn` at most once per `ms`, after the last call: a burst of events makes one refresh.
function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// Runs a change, shows its operation's progress in `slot` until it ends, and says how it ended.
async function runAction(slot, request) {
  slot.replaceChildren(h('p', { role: 'status', text: 'Sending…' }));
  try {
    const result = await request();
    if (result && result.kind && result.state && result.progress) {
      const op = await follow(result, (o) => renderOperation(slot, o));
      announce(`${op.kind} ${op.state}`);
      return op;
    }
    slot.replaceChildren(h('p', { role: 'status', text: 'Done.' }));
    return result;
  } catch (e) {
    showError(slot, e);
    return null;
  }
}

function link(href, text) {
  return h('a', { href, text });
}

// ---------------------------------------------------------------------------------------------- instances

async function instancesPage(main, { me, events, params }) {
  const name = h('input', { type: 'search', name: 'name', value: params.get('name') || '' });
  const labels = h('input', { type: 'text', name: 'labels', value: params.get('labels') || '', spellcheck: false });
  const state = h('select', { name: 'state' }, h('option', { value: '', text: 'any' }),
    STATES.map((s) => h('option', { value: s, text: s, selected: params.get('state') === s })));
  const limit = h('select', { name: 'limit' }, [25, 50, 100, 500, 1000].map((n) =>
    h('option', { value: n, text: n, selected: String(n) === (params.get('limit') || '50') })));
  const status = h('div');
  const results = h('div', { 'aria-live': 'off' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  let pageTokens = [null]; // the token of every page seen, so "Previous" works without the API going back

  const applyFilters = (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (name.value) q.set('name', name.value);
    if (labels.value) q.set('labels', labels.value);
    if (state.value) q.set('state', state.value);
    if (limit.value !== '50') q.set('limit', limit.value);
    location.hash = `#/instances${q.toString() ? `?${q}` : ''}`;
  };

  main.append(
    h('div', { class: 'page-head' }, h('h1', { text: 'Instances' }),
      me.canWrite ? h('a', { class: 'button', href: '#/create', text: 'Create instance' }) : null),
    h('form', { class: 'filters', onsubmit: applyFilters, role: 'search', 'aria-label': 'Filter instances' },
      field('Name contains', name), field('Label selector', labels, 'e.g. env=prod,tier!=web'),
      field('State', state), field('Per page', limit), h('button', { type: 'submit', text: 'Filter' })),
    status, results, pager);

  let page = 0;
  const load = async () => {
    const q = new URLSearchParams();
    if (params.get('name')) q.set('name', params.get('name'));
    if (params.get('labels')) q.set('labels', params.get('labels'));
    if (params.get('state')) q.set('state', params.get('state'));
    q.set('limit', params.get('limit') || '50');
    if (pageTokens[page]) q.set('page_token', pageTokens[page]);
    try {
      const list = await get(`/v1/instances?${q}`);
      pageTokens[page + 1] = list.next_page_token || null;
      status.replaceChildren();
      results.replaceChildren(instanceTable(list.items));
      pager.replaceChildren(
        h('button', { type: 'button', text: 'Previous', disabled: page === 0, onclick: () => { page--; load(); } }),
        h('span', { text: `Page ${page + 1}` }),
        h('button', { type: 'button', text: 'Next', disabled: !list.next_page_token, onclick: () => { page++; load(); } }));
      main.dataset.loaded = 'true';
      // For bench/ui.py: when the rows are in the document (the paint follows in the same frame).
      performance.mark('nimbus:instances-rendered');
    } catch (e) {
      showError(status, e);
    }
  };
  await load();
  // Any change to an instance may move it into or out of this page: fetch the page again, once per burst.
  const refresh = debounce(load, 150);
  return events.on((e) => { if (e.kind.startsWith('instance.')) refresh(); });
}

function instanceTable(items) {
  return table('Instances', [
    { label: 'Name', cell: (i) => link(`#/instances/${i.id}`, i.name) },
    { label: 'State', cell: (i) => stateBadge(i.state, i.rescue && 'rescue') },
    { label: 'Type', cell: (i) => i.instance_type },
    { label: 'Template', cell: (i) => i.template },
    { label: 'Addresses', cell: (i) => i.ip_addresses.join(', ') || '—' },
    { label: 'Labels', cell: (i) => labelsList(i.labels) },
  ], items, 'No instance matches.');
}

// ----------------------------------------------------------------------------------------- instance detail

const ACTIONS = [
  // [action, label, shown in these states, confirmation (what is lost) or null, the call when not the action's own]
  ['start', 'Start', ['stopped'], null],
  ['start-rescue', 'Rescue', ['stopped'], 'It boots the host\'s rescue system (busybox) until it stops: ' +
    'its disks are attached but not mounted, no user-data runs; log in on the console. The next start boots its own.',
  { path: 'start', body: { rescue: true } }],
  ['stop', 'Stop', ['running'], 'The instance is shut down; what runs in it stops.'],
  ['reboot', 'Reboot', ['running'], 'The instance restarts; what runs in it is interrupted.'],
  ['suspend', 'Suspend', ['running'], 'The instance is paused; its programs stop answering until resumed.'],
  ['resume', 'Resume', ['suspended'], null],
  ['reset-password', 'Reset password', ['running', 'stopped'], 'The current password stops working.'],
  ['enable-tpm', 'Enable TPM', ['stopped'], null],
];

async function instancePage(main, { me, events, id, params }) {
  const head = h('div');
  const facts = h('div');
  const opSlot = h('div', { class: 'op-slot' });
  const actions = h('div', { class: 'actions' });
  const edit = h('section', { 'aria-labelledby': 'edit-title' });
  const history = h('section', { 'aria-labelledby': 'history-title' });
  const consoleSection = h('section', { 'aria-labelledby': 'console-title' });
  const charts = h('section', { 'aria-labelledby': 'metrics-title' });
  main.append(head, opSlot, actions, facts, edit, charts, consoleSection, history);

  let instance = await get(`/v1/instances/${id}`);
  const stopMetrics = metricsCharts(charts, id, () => instance);

  const renderHead = () => head.replaceChildren(
    h('p', { class: 'crumbs' }, link('#/instances', 'Instances'), ' / ', instance.name),
    h('div', { class: 'page-head' }, h('h1', { text: instance.name }), stateBadge(instance.state, instance.rescue && 'rescue')));

  const renderFacts = () => facts.replaceChildren(h('h2', { text: 'Details' }), h('dl', { class: 'facts' },
    [['ID', instance.id], ['Hostname', instance.hostname], ['Description', instance.description || '—'],
      ['State', instance.state + (instance.state_reason ? ` (${instance.state_reason})` : '') +
        (instance.rescue ? ' — the host\'s rescue system, until it stops' : '')],
      ['Type', `${instance.instance_type} · ${instance.vcpus} vCPU · ${formatBytes(instance.memory_mib * 1048576)}` +
        (instance.gpus ? ` · ${instance.gpus}× ${instance.gpu_model}` : '')],
      ['Template', instance.template], ['Disk', `${instance.disk_size_gb} GB`], ['Zone', instance.zone],
      ['Host', instance.host || '—'], ['Addresses', instance.ip_addresses.join(', ') || '—'],
      ['MAC address', instance.mac_address], ['Labels', labelsList(instance.labels)],
      ['System labels', labelsList(instance.system_labels)], ['SSH keys', instance.ssh_keys.join(', ') || '—'],
      ['Security groups', instance.security_groups.join(', ') || '—'],
      ['Anti-affinity groups', instance.anti_affinity_groups.join(', ') || '—'],
      ['Volumes', (instance.volumes || []).length
        ? h('span', {}, ...(instance.volumes || []).flatMap((v, n) => [n ? ', ' : '',
          link(`#/volumes?id=${v}`, v.slice(0, 8) + (instance.boot_volume && instance.boot_volume.volume_id === v ? ' (boot)' : ''))]))
        : '—'],
      ['Protected', instance.protected ? 'yes (delete refused)' : 'no'], ['TPM', instance.tpm_enabled ? 'yes' : 'no'],
      ['Secure boot', instance.secure_boot ? 'yes' : 'no'],
      ['Created', formatTime(instance.created_at)], ['Updated', formatTime(instance.updated_at)]]
      .map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)])));

  const act = async (action, label, confirmText, body) => {
    if (confirmText && !(await confirmAction(`${label} ${instance.name}?`, confirmText, label))) return;
    const op = await runAction(opSlot, () => post(`/v1/instances/${id}/${action}`, body));
    if (op && op.state === 'success' && action === 'reset-password') await showPassword();
  };

  // The root password is revealed by its own endpoint, to members only, while it has not expired.
  const showPassword = async () => {
    const slot = h('div');
    opSlot.append(slot);
    try {
      const p = await get(`/v1/instances/${id}/password`);
      slot.replaceChildren(h('p', { class: 'secret' }, 'Root password: ', h('code', { id: 'root-password', text: p.password }),
        p.expires_at ? [' (until ', formatTime(p.expires_at), ')'] : null));
    } catch (e) {
      showError(slot, e);
    }
  };

  let actionsShownFor = null;
  const renderActions = () => {
    if (!me.canWrite) { actions.replaceChildren(); return; }
    // Which actions apply depends on these alone; other updates leave the forms (and what is typed) alone.
    const key = `${instance.state}/${instance.protected}/${instance.disk_size_gb}/${instance.instance_type}`;
    if (key === actionsShownFor) return;
    actionsShownFor = key;
    // A live update must not take the focus from a keyboard user: the same button gets it back.
    const focused = actions.contains(document.activeElement) ? document.activeElement.textContent : null;
    renderActionButtons();
    if (focused) [...actions.querySelectorAll('button')].find((b) => b.textContent === focused)?.focus();
  };

  const renderActionButtons = () => {
    const buttons = ACTIONS.filter(([, , states]) => states.includes(instance.state)).map(([action, label, , confirmText, call]) =>
      h('button', { type: 'button', 'data-action': action, text: label, class: confirmText ? 'danger' : '',
        onclick: () => act(call ? call.path : action, label, confirmText, call && call.body) }));
    buttons.push(h('button', { type: 'button', text: 'Show root password', onclick: () => { opSlot.replaceChildren(); showPassword(); } }));
    buttons.push(h('button', { type: 'button', 'data-action': instance.protected ? 'remove-protection' : 'add-protection',
      text: instance.protected ? 'Remove protection' : 'Protect from deletion',
      onclick: () => act(instance.protected ? 'remove-protection' : 'add-protection', 'Protection', null) }));
    const snapName = h('input', { type: 'text', name: 'snapshot', placeholder: 'name (optional)' });
    const diskSize = h('input', { type: 'number', name: 'disk', min: instance.disk_size_gb + 1, value: instance.disk_size_gb + 10 });
    const scaleType = h('input', { type: 'text', name: 'type', value: instance.instance_type });
    actions.replaceChildren(h('h2', { text: 'Actions' }), h('div', { class: 'buttons' }, buttons,
      h('button', { type: 'button', 'data-action': 'delete', class: 'danger', text: 'Delete',
        onclick: async () => {
          if (!(await confirmAction(`Delete ${instance.name}?`, 'The instance and its disk are destroyed. This cannot be undone.', 'Delete'))) return;
          const op = await runAction(opSlot, () => del(`/v1/instances/${id}`));
          if (op && op.state === 'success') location.hash = '#/instances';
        } })),
      h('details', {}, h('summary', { text: 'Snapshot, resize, scale, reset' }),
        h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); act('create-snapshot', 'Snapshot', null, snapName.value ? { name: snapName.value } : undefined); } },
          field('Snapshot name', snapName), h('button', { type: 'submit', text: 'Take snapshot' })),
        h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); act('resize-disk', 'Resize disk', 'A disk can grow but never shrink back.', { disk_size_gb: Number(diskSize.value) }); } },
          field('New disk size (GB)', diskSize), h('button', { type: 'submit', text: 'Resize disk' })),
        h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); act('scale', 'Scale', 'The instance gets another type; it must be stopped.', { instance_type: scaleType.value }); } },
          field('Instance type', scaleType), h('button', { type: 'submit', text: 'Scale' })),
        h('button', { type: 'button', class: 'danger', 'data-action': 'reset', text: 'Reset to its template',
          onclick: () => act('reset', 'Reset', 'The disk is rebuilt from the template: everything written on it is lost.') })));
  };

  const name = h('input', { type: 'text', name: 'name', required: true });
  const description = h('input', { type: 'text', name: 'description' });
  const labelsArea = h('textarea', { name: 'labels', rows: 4, spellcheck: false });
  const editStatus = h('div');
  const renderEdit = () => {
    if (!me.canWrite) { edit.replaceChildren(); return; }
    name.value = instance.name;
    description.value = instance.description;
    labelsArea.value = labelsText(instance.labels);
    edit.replaceChildren(h('h2', { id: 'edit-title', text: 'Name, description and labels' }),
      h('form', { class: 'edit', onsubmit: async (e) => {
        e.preventDefault();
        let labels;
        try { labels = parseLabels(labelsArea.value); } catch (err) { showError(editStatus, err); return; }
        // A merge patch: labels missing from the new set are removed by sending them as null.
        const patchLabels = { ...labels };
        for (const k of Object.keys(instance.labels)) if (!(k in labels)) patchLabels[k] = null;
        try {
          instance = await patch(`/v1/instances/${id}`, { name: name.value, description: description.value, labels: patchLabels });
          editStatus.replaceChildren(h('p', { role: 'status', text: 'Saved.' }));
          renderAll(false);
        } catch (err) {
          showError(editStatus, err);
        }
      } },
      field('Name', name), field('Description', description),
      field('Labels', labelsArea, 'One key=value per line.'), editStatus,
      h('button', { type: 'submit', text: 'Save' })));
  };

  const renderHistory = async () => {
    try {
      const ops = await get(`/v1/operations?target=${id}&limit=20`);
      history.replaceChildren(h('h2', { id: 'history-title', text: 'Operations' }), table('Operations on this instance', [
        { label: 'Kind', cell: (o) => o.kind },
        { label: 'State', cell: (o) => stateBadge(o.state) },
        { label: 'Progress', cell: (o) => `${o.progress.steps_done}/${o.progress.steps_total}` },
        { label: 'Message', cell: (o) => o.message || '' },
        { label: 'Started', cell: (o) => formatTime(o.created_at) },
        { label: 'Key', cell: (o) => o.key_id || '' },
      ], ops.items, 'No operation yet.'));
    } catch (e) {
      history.replaceChildren(h('h2', { id: 'history-title', text: 'Operations' }), errorBox(e));
    }
  };

  let gone = false;
  const renderAll = (withEdit) => {
    renderHead();
    renderFacts();
    renderActions();
    if (withEdit) renderEdit();
    renderHistory();
  };
  renderAll(true);
  const stopConsole = consolePanel(consoleSection, id, () => instance, me);

  if (params.get('op')) {
    get(`/v1/operations/${params.get('op')}`).then((op) => follow(op, (o) => renderOperation(opSlot, o))).catch((e) => showError(opSlot, e));
  }

  const reload = debounce(async () => {
    if (gone) return;
    try {
      instance = await get(`/v1/instances/${id}`);
      renderAll(false);
      consoleSection.dispatchEvent(new Event('state'));
    } catch (e) {
      if (e.status === 404) {
        gone = true;
        head.replaceChildren(h('p', { class: 'crumbs' }, link('#/instances', 'Instances')),
          h('h1', { text: instance.name }), h('p', { role: 'status', text: 'This instance has been deleted.' }));
        actions.replaceChildren();
        edit.replaceChildren();
      } else {
        showError(opSlot, e);
      }
    }
  }, 100);
  const off = events.on((e) => { if (e.target_id === id) reload(); });
  return () => { off(); stopConsole(); stopMetrics(); };
}

// The serial console: the log as text while stopped; an interactive terminal over the websocket once
// running. The websocket carries the session cookie like any same-origin request.
function consolePanel(section, id, current, me) {
  const screen = h('pre', { class: 'terminal', 'aria-label': 'Serial console', id: 'terminal' });
  const status = h('p', { role: 'status' });
  let socket = null;
  let terminal = null;
  const connect = () => {
    disconnect();
    terminal = new Terminal(screen, (data) => { if (socket && socket.readyState === 1) socket.send(data); });
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/instances/${id}/console/stream`;
    socket = new WebSocket(url);
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => { status.textContent = 'Connected: type into the console below (Tab leaves it).'; screen.focus(); };
    socket.onmessage = (m) => terminal.write(m.data);
    socket.onclose = (e) => { status.textContent = `Disconnected${e.reason ? `: ${e.reason}` : ''}.`; render(); };
    socket.onerror = () => { status.textContent = 'The console connection failed: is the instance running?'; };
    render();
  };
  const disconnect = () => {
    if (socket) { socket.onclose = null; socket.close(); }
    socket = null;
  };
  const showLog = async () => {
    try {
      const response = await fetch(`/v1/instances/${id}/console`, { credentials: 'same-origin' });
      screen.textContent = response.ok ? await response.text() : `The console log is not available (${response.status}).`;
    } catch (e) {
      screen.textContent = e.message;
    }
  };
  const render = () => {
    const running = current().state === 'running';
    const open = socket && socket.readyState <= 1;
    section.replaceChildren(h('h2', { id: 'console-title', text: 'Serial console' }),
      running && me.canWrite
        ? h('button', { type: 'button', id: 'console-connect', text: open ? 'Disconnect' : 'Connect', onclick: () => (open ? (disconnect(), render()) : connect()) })
        : h('p', { class: 'muted', text: running ? 'Read-only keys see the log only.' : 'The interactive console needs the instance running; its log is below.' }),
      status, screen);
    if (!open) showLog();
  };
  section.addEventListener('state', () => { if (current().state !== 'running') disconnect(); render(); });
  render();
  return disconnect;
}

// Charts of the instance's counters. The API gives the current counters only (`/v1/instances/{id}/metrics`),
// not a history, so the browser samples them every 10 s while the page is open and keeps the last hour in
// sessionStorage: the charts cover what this tab has watched, not the hour before it opened.
function metricsCharts(section, id, current) {
  const storeKey = `nimbus-metrics-${id}`;
  let samples = [];
  try { samples = JSON.parse(sessionStorage.getItem(storeKey) || '[]'); } catch { samples = []; }
  const note = h('p', { class: 'muted', text: 'The API reports current counters only: these charts cover the time this tab has been watching, up to the last hour, sampled every 10 s.' });
  const body = h('div', { class: 'charts' });
  section.replaceChildren(h('h2', { id: 'metrics-title', text: 'Metrics' }), note, body);
  const sample = async () => {
    if (current().state !== 'running') {
      body.replaceChildren(h('p', { class: 'muted', text: 'No metrics while the instance is not running.' }));
      return;
    }
    try {
      const m = await get(`/v1/instances/${id}/metrics`);
      const now = Date.now();
      samples.push({ t: now, ...m });
      samples = samples.filter((s) => s.t > now - 3600e3);
      sessionStorage.setItem(storeKey, JSON.stringify(samples));
      drawCharts(body, samples);
    } catch (e) {
      body.replaceChildren(errorBox(e));
    }
  };
  sample();
  const timer = setInterval(sample, 10000);
  return () => clearInterval(timer);
}

function drawCharts(body, samples) {
  const rates = (field) => samples.slice(1).map((s, i) => ({ t: s.t, v: Math.max(0, (s[field] - samples[i][field]) / ((s.t - samples[i].t) / 1000)) }));
  const series = [
    ['CPU', rates('cpu_time_ns').map((p) => ({ t: p.t, v: p.v / 1e7 })), (v) => `${v.toFixed(1)} %`],
    ['Memory', samples.map((s) => ({ t: s.t, v: s.memory_rss_bytes })), formatBytes],
    ['Disk used', samples.map((s) => ({ t: s.t, v: s.disk_used_bytes })), formatBytes],
    ['Network in', rates('net_rx_bytes'), (v) => `${formatBytes(v)}/s`],
    ['Network out', rates('net_tx_bytes'), (v) => `${formatBytes(v)}/s`],
  ];
  body.replaceChildren(...series.map(([title, points, fmt]) => chart(title, points, fmt)));
}

function chart(title, points, fmt) {
  const W = 240, H = 60;
  const last = points.length ? points[points.length - 1].v : null;
  const figure = h('figure', { class: 'chart' }, h('figcaption', {}, `${title}: `, h('strong', { text: last === null ? '—' : fmt(last) })));
  if (points.length < 2) return figure;
  const max = Math.max(...points.map((p) => p.v), 1e-9);
  const t0 = points[0].t, t1 = points[points.length - 1].t || t0 + 1;
  const d = points.map((p, i) => `${i ? 'L' : 'M'}${((p.t - t0) / Math.max(t1 - t0, 1) * W).toFixed(1)},${(H - p.v / max * H).toFixed(1)}`).join('');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${title} over the watched period, peak ${fmt(max)}`);
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', d);
  svg.append(path);
  figure.append(svg);
  return figure;
}

// ------------------------------------------------------------------------------------------------ create

async function createPage(main, { me }) {
  main.append(h('h1', { text: 'Create an instance' }));
  if (!me.canWrite) { main.append(errorBox('This key is read-only: it cannot create instances.')); return; }
  const [types, templates, sshKeys, securityGroups, affinityGroups, project] = await Promise.all([
    all('/v1/instance-types'), all('/v1/templates'), all('/v1/ssh-keys'), all('/v1/security-groups'),
    all('/v1/anti-affinity-groups'), get(`/v1/projects/${me.project.id}`).catch(() => null)]);
  const usable = types.filter((t) => t.authorized !== false);
  const name = h('input', { type: 'text', name: 'name', required: true, autocomplete: 'off' });
  const type = h('select', { name: 'instance_type', required: true }, usable.map((t) =>
    h('option', { value: t.name, text: `${t.name} — ${t.vcpus} vCPU, ${formatBytes(t.memory_mib * 1048576)}${t.gpus ? `, ${t.gpus} GPU` : ''}` })));
  const template = h('select', { name: 'template', required: true }, templates.map((t) => h('option', { value: t.name, text: t.name })));
  const disk = h('input', { type: 'number', name: 'disk_size_gb', min: 1, placeholder: 'the type\'s default' });
  const userData = h('textarea', { name: 'user_data', rows: 5, spellcheck: false, placeholder: '#!/bin/sh or #cloud-config' });
  const labels = h('textarea', { name: 'labels', rows: 3, spellcheck: false });
  const checks = (legend, items, nameOf) => {
    const boxes = items.map((it) => ({ it, box: h('input', { type: 'checkbox', value: it.id || it.name }) }));
    const set = h('fieldset', {}, h('legend', { text: legend }),
      boxes.length ? boxes.map(({ it, box }) => h('label', { class: 'check' }, box, ' ', nameOf(it)))
        : h('p', { class: 'muted', text: 'none in this project' }));
    return { set, chosen: () => boxes.filter((b) => b.box.checked).map((b) => b.box.value) };
  };
  const keys = checks('SSH keys', sshKeys.map((k) => ({ id: k.name, name: k.name })), (k) => k.name);
  const secGroups = checks('Security groups', securityGroups, (g) => g.name);
  const affGroups = checks('Anti-affinity groups', affinityGroups, (g) => g.name);
  const quotaBox = h('div', { class: 'quota-left', role: 'status' });
  const status = h('div');

  const showQuota = () => {
    if (!project || !project.usage) { quotaBox.replaceChildren(h('p', { class: 'muted', text: 'Quota: not visible to this key.' })); return; }
    const t = usable.find((x) => x.name === type.value);
    const q = project.quota, u = project.usage;
    const need = { instances: 1, vcpus: t ? t.vcpus : 0, memory_mib: t ? t.memory_mib : 0, disk_gb: Number(disk.value) || (t ? t.default_disk_gb : 0) };
    const rows = [['Instances', 'instances', (n) => n], ['vCPUs', 'vcpus', (n) => n], ['Memory', 'memory_mib', (n) => formatBytes(n * 1048576)], ['Disk', 'disk_gb', (n) => `${n} GB`]];
    quotaBox.replaceChildren(h('h2', { text: 'Quota left' }), h('ul', {}, rows.map(([label, k, fmt]) => {
      const left = q[k] - u[k];
      return h('li', { class: left < need[k] ? 'over' : '' }, `${label}: ${fmt(left)} left of ${fmt(q[k])}, this instance needs ${fmt(need[k])}`);
    })));
  };
  type.addEventListener('change', showQuota);
  disk.addEventListener('input', showQuota);
  showQuota();

  const submit = async (e) => {
    e.preventDefault();
    let parsedLabels;
    try { parsedLabels = parseLabels(labels.value); } catch (err) { showError(status, err); return; }
    const body = { name: name.value, instance_type: type.value, template: template.value, labels: parsedLabels,
      ssh_keys: keys.chosen(), security_groups: secGroups.chosen(), anti_affinity_groups: affGroups.chosen() };
    if (disk.value) body.disk_size_gb = Number(disk.value);
    if (userData.value) body.user_data = btoa(String.fromCharCode(...new TextEncoder().encode(userData.value)));
    try {
      const op = await post('/v1/instances', body);
      location.hash = `#/instances/${op.target.id}?op=${op.id}`;
    } catch (err) {
      showError(status, err);
      status.querySelector('.error').focus?.();
    }
  };
  main.append(h('form', { class: 'create', onsubmit: submit },
    h('div', { class: 'columns' },
      h('div', {}, field('Name', name), field('Instance type', type), field('Template', template),
        field('Disk size (GB)', disk, 'Empty: the type\'s default size.'), field('Labels', labels, 'One key=value per line.'),
        field('User data', userData, 'A script or cloud-config the instance runs at first boot.')),
      h('div', {}, keys.set, secGroups.set, affGroups.set, quotaBox)),
    status, h('button', { type: 'submit', text: 'Create instance' })));
  name.focus();
}

// -------------------------------------------------------------------------------- simple resource pages

// A list with an optional create form and a delete button per row: snapshots, SSH keys, groups.
async function resourceList(container, { title, path, columns, me, form, deleteWhat, empty }) {
  const status = h('div');
  const listSlot = h('div');
  const section = h('section', { 'aria-label': title }, status, listSlot);
  container.append(section);
  const load = async () => {
    try {
      const items = await all(path);
      const cols = columns.slice();
      if (me.canWrite && deleteWhat) {
        cols.push({ label: 'Actions', cell: (item) => h('button', { type: 'button', class: 'danger', text: 'Delete',
          'aria-label': `Delete ${item.name || item.key_id}`,
          onclick: async () => {
            if (!(await confirmAction(`Delete ${item.name || item.key_id}?`, deleteWhat(item), 'Delete'))) return;
            const done = await runAction(status, () => del(`${path.split('?')[0]}/${item.id || item.key_id}`));
            if (done !== null) load();
          } }) });
      }
      listSlot.replaceChildren(table(title, cols, items, empty));
    } catch (e) {
      showError(listSlot, e);
    }
  };
  if (form && me.canWrite) section.prepend(form(load, status));
  await load();
  return load;
}

async function snapshotsPage(main, { me }) {
  main.append(h('h1', { text: 'Snapshots' }), h('p', { class: 'muted', text: 'Take a snapshot from an instance\'s page; revert to one or delete it here.' }));
  await resourceList(main, { title: 'Snapshots', path: '/v1/snapshots', me, empty: 'No snapshot yet.', columns: [
    { label: 'Name', cell: (s) => s.name },
    { label: 'Instance', cell: (s) => link(`#/instances/${s.instance_id}`, s.instance_id.slice(0, 8)) },
    { label: 'State', cell: (s) => stateBadge(s.state) },
    { label: 'Size', cell: (s) => `${s.size_gb} GB` },
    { label: 'Taken', cell: (s) => formatTime(s.created_at) },
    { label: 'Revert', cell: (s) => me.canWrite ? h('button', { type: 'button', class: 'danger', text: 'Revert',
      onclick: async () => {
        if (!(await confirmAction(`Revert to ${s.name}?`, 'The instance\'s disk goes back to this snapshot; later changes are lost.', 'Revert'))) return;
        await runAction(main.querySelector('section div'), () => post(`/v1/instances/${s.instance_id}/revert-snapshot`, { snapshot_id: s.id }));
      } }) : '' },
  ], deleteWhat: () => 'The snapshot is destroyed.' });
}

// Volumes: disks of their own, made here (empty, or from a template to boot from), attached to an instance
// and detached (hot-plugged into a running guest), deleted; each change shows its operation's progress.
async function volumesPage(main, { me, events, params }) {
  main.append(h('h1', { text: 'Volumes' }),
    h('p', { class: 'muted', text: 'An attached volume is the guest\'s /dev/disk/by-id/virtio-<serial>; it outlives its instance.' }));
  const instances = await all('/v1/instances');
  const nameOf = (id) => (instances.find((i) => i.id === id) || { name: id.slice(0, 8) }).name;
  const status = h('div', { class: 'op-slot' });
  const change = async (request, reload) => {
    const op = await runAction(status, request);
    if (op !== null) reload();
  };
  const attachControl = (v, reload) => {
    const choice = h('select', { 'aria-label': `Instance to attach ${v.name} to` },
      h('option', { value: '', text: 'Attach to…' }),
      ...instances.filter((i) => i.zone === v.zone).map((i) => h('option', { value: i.id, text: i.name })));
    choice.addEventListener('change', () => {
      if (choice.value) change(() => post(`/v1/volumes/${v.id}/attach`, { instance_id: choice.value }), reload);
    });
    return choice;
  };
  let reload = () => {};
  reload = await resourceList(main, { title: 'Volumes', path: '/v1/volumes', me, empty: 'No volume yet.', columns: [
    { label: 'Name', cell: (v) => (params.get('id') === v.id ? h('strong', { text: v.name }) : v.name) },
    { label: 'State', cell: (v) => stateBadge(v.state) },
    { label: 'Size', cell: (v) => `${v.size_gb} GB` },
    { label: 'Serial', cell: (v) => h('code', { text: v.serial }) },
    { label: 'Attached to', cell: (v) => (v.instance_id ? link(`#/instances/${v.instance_id}`, nameOf(v.instance_id) + (v.boot ? ' (boot disk)' : '')) : '—') },
    { label: 'Attach', cell: (v) => {
      if (!me.canWrite || v.boot) return '';
      if (v.instance_id) {
        return h('button', { type: 'button', text: 'Detach', 'aria-label': `Detach ${v.name}`,
          onclick: () => change(() => post(`/v1/volumes/${v.id}/detach`), reload) });
      }
      return v.state === 'available' ? attachControl(v, reload) : '';
    } },
    { label: 'Created', cell: (v) => formatTime(v.created_at) },
  ], deleteWhat: () => 'The volume and its data are destroyed.', form: (load, formStatus) => {
    const name = h('input', { type: 'text', required: true });
    const size = h('input', { type: 'number', min: 1, step: 1 });
    const template = h('select', {}, h('option', { value: '', text: 'Empty' }));
    get('/v1/templates').then((t) => template.append(...(t.items || []).map((x) => h('option', { value: x.name, text: x.name }))),
      () => {});
    return h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      const body = { name: name.value };
      if (size.value) body.size_gb = Number(size.value);
      if (template.value) body.template = template.value;
      if (await runAction(formStatus, () => post('/v1/volumes', body)) !== null) { name.value = ''; size.value = ''; load(); }
    } }, h('h2', { text: 'Create a volume' }), field('Name', name), field('Size (GB)', size, 'From a template: empty for its smallest disk.'),
    field('From template', template, 'A volume made from a template can boot an instance.'), h('button', { type: 'submit', text: 'Create volume' }));
  } });
  main.append(status);
  // Live: a volume changed through any API or by another user shows here.
  const refresh = debounce(() => reload(), 300);
  return events.on((e) => { if (e.kind.startsWith('volume.')) refresh(); });
}

async function sshKeysPage(main, { me }) {
  main.append(h('h1', { text: 'SSH keys' }));
  await resourceList(main, { title: 'SSH keys', path: '/v1/ssh-keys', me, empty: 'No SSH key yet.', columns: [
    { label: 'Name', cell: (k) => k.name },
    { label: 'Fingerprint', cell: (k) => h('code', { text: k.fingerprint }) },
    { label: 'Added', cell: (k) => formatTime(k.created_at) },
  ], deleteWhat: () => 'Instances made with it keep it; new ones cannot use it.', form: (load, status) => {
    const name = h('input', { type: 'text', required: true });
    const key = h('textarea', { rows: 3, required: true, spellcheck: false, placeholder: 'ssh-ed25519 AAAA… you@host' });
    return h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      if (await runAction(status, () => post('/v1/ssh-keys', { name: name.value, public_key: key.value })) !== null) { name.value = ''; key.value = ''; load(); }
    } }, h('h2', { text: 'Add a key' }), field('Name', name), field('Public key', key), h('button', { type: 'submit', text: 'Add key' }));
  } });
}

async function apiKeysPage(main, { me }) {
  main.append(h('h1', { text: 'API keys' }));
  const secretSlot = h('div', { 'aria-live': 'polite' });
  main.append(secretSlot);
  await resourceList(main, { title: 'API keys', path: '/v1/api-keys', me, empty: 'No key.', columns: [
    { label: 'Name', cell: (k) => k.name + (k.key_id === me.key_id ? ' (this session)' : '') },
    { label: 'Key id', cell: (k) => h('code', { text: k.key_id }) },
    { label: 'Role', cell: (k) => k.role },
    { label: 'Created', cell: (k) => formatTime(k.created_at) },
  ], deleteWhat: (k) => (k.key_id === me.key_id ? 'This is the key you signed in with: you will be signed out.' : 'Anything using it is refused from now on.'),
  form: (load, status) => {
    const name = h('input', { type: 'text', required: true });
    const role = h('select', {}, ['read-only', 'member', 'admin'].map((r) => h('option', { value: r, text: r, selected: r === 'member' })));
    return h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      const key = await runAction(status, () => post('/v1/api-keys', { name: name.value, role: role.value }));
      if (key && key.secret) {
        secretSlot.replaceChildren(h('div', { class: 'secret', role: 'alert' },
          h('p', {}, h('strong', { text: 'Copy this secret now: it is shown only once.' })),
          h('code', { id: 'new-secret', text: key.secret })));
        name.value = '';
        load();
      }
    } }, h('h2', { text: 'Make a key' }), field('Name', name), field('Role', role), h('button', { type: 'submit', text: 'Make key' }));
  } });
}

async function groupsPage(main, { me }) {
  main.append(h('h1', { text: 'Groups' }), h('h2', { text: 'Security groups' }));
  // The API takes a security group's rules when it is created: one per line, `ingress tcp 22 0.0.0.0/0`.
  const parseRules = (text) => text.split('\n').map((l) => l.trim()).filter(Boolean).map((line) => {
    const [flow_direction, protocol, ports, network] = line.split(/\s+/);
    if (!protocol) throw new Error(`"${line}" is not a rule: write direction protocol [port[-port]] [network]`);
    const rule = { flow_direction, protocol };
    if (ports) {
      const [start, end] = ports.split('-').map(Number);
      rule.start_port = start;
      rule.end_port = end || start;
    }
    if (network) rule.network = network;
    return rule;
  });
  const groupForm = (path, withRules) => (load, status) => {
    const name = h('input', { type: 'text', required: true });
    const description = h('input', { type: 'text' });
    const rules = h('textarea', { rows: 2, spellcheck: false, placeholder: 'ingress tcp 22 0.0.0.0/0' });
    return h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      const body = { name: name.value, description: description.value };
      if (withRules) {
        try { body.rules = parseRules(rules.value); } catch (err) { showError(status, err); return; }
      }
      if (await runAction(status, () => post(path, body)) !== null) { name.value = ''; rules.value = ''; load(); }
    } }, field('Name', name), field('Description', description),
    withRules ? field('Rules', rules, 'One per line: direction protocol [port or range] [network].') : null,
    h('button', { type: 'submit', text: 'Create group' }));
  };
  await resourceList(main, { title: 'Security groups', path: '/v1/security-groups', me, empty: 'No security group.', columns: [
    { label: 'Name', cell: (g) => g.name },
    { label: 'Description', cell: (g) => g.description },
    { label: 'Rules', cell: (g) => (g.rules.length ? h('ul', {}, g.rules.map((r) => h('li', { text: [r.flow_direction, r.protocol,
      r.start_port ? (r.end_port && r.end_port !== r.start_port ? `${r.start_port}-${r.end_port}` : r.start_port) : '', r.network || ''].join(' ').trim() }))) : 'none') },
  ], deleteWhat: () => 'Its rules go with it.', form: groupForm('/v1/security-groups', true) });
  main.append(h('h2', { text: 'Anti-affinity groups' }));
  await resourceList(main, { title: 'Anti-affinity groups', path: '/v1/anti-affinity-groups', me, empty: 'No anti-affinity group.', columns: [
    { label: 'Name', cell: (g) => g.name },
    { label: 'Description', cell: (g) => g.description },
  ], deleteWhat: () => 'Its members are no longer kept apart.', form: groupForm('/v1/anti-affinity-groups', false) });
}

async function quotasPage(main, { me }) {
  main.append(h('h1', { text: 'Quotas and usage' }));
  const project = await get(`/v1/projects/${me.project.id}`);
  const q = project.quota, u = project.usage || {};
  const rows = [['Instances', 'instances', (n) => n], ['vCPUs', 'vcpus', (n) => n], ['Memory', 'memory_mib', (n) => formatBytes(n * 1048576)], ['Disk', 'disk_gb', (n) => `${n} GB`]];
  main.append(h('p', { text: `Project ${project.name} (${project.id})` }), h('dl', { class: 'quotas' }, rows.map(([label, k, fmt]) => [
    h('dt', { text: label }),
    h('dd', {}, h('meter', { min: 0, max: q[k], value: u[k] ?? 0, 'aria-label': `${label} used` }), ` ${fmt(u[k] ?? 0)} used of ${fmt(q[k])}`)])));
}

async function eventsPage(main) {
  main.append(h('h1', { text: 'Event log' }), h('p', { class: 'muted', text: 'Every change in this project, newest first, live. The last 500 are shown.' }));
  const body = h('tbody');
  const status = h('div');
  main.append(status, h('div', { class: 'table-wrap' }, h('table', {}, h('caption', { text: 'Events' }),
    h('thead', {}, h('tr', {}, ['#', 'Time', 'Event', 'Target', 'State', 'Key', 'From'].map((c) => h('th', { scope: 'col', text: c })))), body)));
  const source = new EventSource('/v1/events?after=0');
  const add = (m) => {
    const e = JSON.parse(m.data);
    const target = e.kind.startsWith('instance.') ? link(`#/instances/${e.target_id}`, e.data.name || e.target_id) : (e.data.kind || e.target_id);
    body.prepend(h('tr', {}, h('td', { text: e.seq }), h('td', {}, formatTime(e.time)), h('td', { text: e.kind }), h('td', {}, target),
      h('td', { text: typeof e.data.state === 'string' ? e.data.state : '' }), h('td', { text: e.actor.key_id || '' }), h('td', { text: e.actor.source || '' })));
    while (body.children.length > 500) body.lastChild.remove();
  };
  for (const kind of ['instance.created', 'instance.updated', 'instance.deleted', 'operation.created', 'operation.updated']) source.addEventListener(kind, add);
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) showError(status, new Error('The event stream closed: reload to try again.')); };
  return () => source.close();
}

async function hostsPage(main, { me }) {
  main.append(h('h1', { text: 'Hosts' }));
  const status = h('div');
  const slot = h('div');
  main.append(status, slot);
  const load = async () => {
    const hosts = await all('/v1/hosts');
    slot.replaceChildren(table('Hosts', [
      { label: 'Name', cell: (x) => x.name },
      { label: 'State', cell: (x) => stateBadge(x.state) },
      { label: 'Zone', cell: (x) => x.zone },
      { label: 'Driver', cell: (x) => `${x.driver} (${x.accelerator})` },
      { label: 'vCPUs', cell: (x) => `${x.allocation.vcpus} / ${x.capacity.vcpus}` },
      { label: 'Memory', cell: (x) => `${formatBytes(x.allocation.memory_mib * 1048576)} / ${formatBytes(x.capacity.memory_mib * 1048576)}` },
      { label: 'Instances', cell: (x) => x.instances },
      { label: 'Last seen', cell: (x) => formatTime(x.updated_at) },
      { label: 'Actions', cell: (x) => me.isOperator ? h('div', { class: 'buttons' },
        ['enable', 'disable', 'drain'].map((a) => h('button', { type: 'button', text: a, class: a === 'enable' ? '' : 'danger', 'aria-label': `${a} ${x.name}`,
          onclick: async () => {
            if (a !== 'enable' && !(await confirmAction(`${a} ${x.name}?`, a === 'drain' ? 'No new instance is placed there and it is marked to be emptied.' : 'No new instance is placed there.', a))) return;
            if (await runAction(status, () => post(`/v1/hosts/${x.name}/${a}`)) !== null) load();
          } }))) : '' },
    ], hosts));
  };
  await load();
}

async function projectsPage(main, { me }) {
  main.append(h('h1', { text: 'Projects' }));
  const status = h('div');
  const slot = h('div');
  main.append(status);
  if (me.canWrite) {
    const name = h('input', { type: 'text', required: true });
    main.append(h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      if (await runAction(status, () => post('/v1/projects', { name: name.value })) !== null) { name.value = ''; load(); }
    } }, field('New project name', name), h('button', { type: 'submit', text: 'Create project' })));
  }
  main.append(slot);
  const load = async () => {
    const projects = await all('/v1/projects');
    slot.replaceChildren(table('Projects', [
      { label: 'Name', cell: (p) => p.name },
      { label: 'ID', cell: (p) => h('code', { text: p.id }) },
      { label: 'Quota', cell: (p) => `${p.quota.instances} instances, ${p.quota.vcpus} vCPUs, ${formatBytes(p.quota.memory_mib * 1048576)}, ${p.quota.disk_gb} GB` },
      { label: 'Created', cell: (p) => formatTime(p.created_at) },
      { label: 'Change quota', cell: (p) => (me.isOperator ? quotaForm(p, status, load) : '') },
    ], projects));
  };
  await load();
}

// An operator's form for one project's quota; the API checks it against what the project already uses.
function quotaForm(project, status, load) {
  const inputs = ['instances', 'vcpus', 'memory_mib', 'disk_gb'].map((k) =>
    [k, h('input', { type: 'number', min: 0, value: project.quota[k], name: k })]);
  const labels = { instances: 'Instances', vcpus: 'vCPUs', memory_mib: 'Memory (MiB)', disk_gb: 'Disk (GB)' };
  return h('details', {}, h('summary', { text: `Quota of ${project.name}` }),
    h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      const quota = Object.fromEntries(inputs.map(([k, input]) => [k, Number(input.value)]));
      if (await runAction(status, () => api('PUT', `/v1/projects/${project.id}/quota`, quota)) !== null) load();
    } }, inputs.map(([k, input]) => field(labels[k], input)), h('button', { type: 'submit', text: 'Set quota' })));
}

export const pages = {
  instances: instancesPage,
  instance: instancePage,
  create: createPage,
  snapshots: snapshotsPage,
  volumes: volumesPage,
  'ssh-keys': sshKeysPage,
  'api-keys': apiKeysPage,
  groups: groupsPage,
  quotas: quotasPage,
  events: eventsPage,
  hosts: hostsPage,
  projects: projectsPage,
};
