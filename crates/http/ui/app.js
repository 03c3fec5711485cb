/* Portcullis operator console. Plain DOM, no framework, no build step.
 *
 * Safety rules of this file (the page runs under a strict CSP as well):
 *  - Every element is built with h()/s(): createElement + textContent. Nothing here parses
 *    HTML from strings (no innerHTML/outerHTML/insertAdjacentHTML/document.write).
 *  - h()/s() refuse event-handler attributes (on*), style attributes and URL-bearing attributes;
 *    the one URL attribute allowed is href, and only as a '#/' hash this file builds from
 *    encodeURIComponent'd ids. Data never becomes a link target.
 *  - Every request that changes something sends X-CSRF-Token; operators name the tenant they act
 *    in with X-Tenant-ID, tenant users never send one.
 */
'use strict';
(function () {
  // ---------------------------------------------------------------- DOM helpers
  const BLOCKED_ATTR = /^(on|style$|srcdoc$|src$|srcset$|action$|formaction$|xlink:href$|background$|poster$|data$|codebase$|manifest$|ping$)/i;
  const BOOL_PROPS = new Set(['checked', 'disabled', 'hidden', 'required', 'readOnly', 'multiple', 'selected', 'open', 'autofocus']);

  function setAttrs(el, attrs, svg) {
    const late = [];
    for (const k of Object.keys(attrs)) {
      const v = attrs[k];
      if (v == null || v === false) continue;
      if (k === 'ev') {
        for (const type of Object.keys(v)) el.addEventListener(type, v[type]);
        continue;
      }
      if (BLOCKED_ATTR.test(k)) throw new Error('h(): attribute not allowed: ' + k);
      if (k === 'class') {
        const c = Array.isArray(v) ? v.filter(Boolean).join(' ') : String(v);
        if (svg) el.setAttribute('class', c);
        else el.className = c;
      } else if (k === 'testid') {
        el.setAttribute('data-testid', String(v));
      } else if (k === 'css') {
        // CSSOM (allowed by the CSP), never a style attribute.
        for (const p of Object.keys(v)) el.style.setProperty(p, String(v[p]));
      } else if (k === 'href') {
        if (svg || typeof v !== 'string' || !v.startsWith('#/')) throw new Error('h(): href must be a #/ route');
        el.setAttribute('href', v);
      } else if (k === 'value' || BOOL_PROPS.has(k)) {
        late.push([k, v]);
      } else {
        el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    return late;
  }

  function addKids(el, kids) {
    for (const k of kids) {
      if (k == null || k === false || k === true) continue;
      if (Array.isArray(k)) addKids(el, k);
      else if (k instanceof Node) el.appendChild(k);
      else el.appendChild(document.createTextNode(String(k)));
    }
    return el;
  }

  function add(el, ...kids) { return addKids(el, kids); }

  /** h('tag', {attrs}, ...children): the only way this file makes HTML elements. */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    const late = attrs ? setAttrs(el, attrs, false) : [];
    addKids(el, kids);
    for (const [k, v] of late) {
      if (k === 'value') el.value = String(v);
      else if (k === 'autofocus') el.autofocus = true;
      else el[k] = Boolean(v);
    }
    return el;
  }

  const SVGNS = 'http://www.w3.org/2000/svg';
  /** s('tag', {attrs}, ...children): SVG elements, same rules as h(). */
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVGNS, tag);
    if (attrs) setAttrs(el, attrs, true);
    addKids(el, kids);
    return el;
  }

  function clear(el) {
    while (el && el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function replace(el, ...kids) {
    clear(el);
    return addKids(el, kids);
  }

  const enc = encodeURIComponent;

  // Feather-style 24×24 stroke icons, each one path.
  const ICONS = {
    tenants: 'M12 2L2 7l10 5 10-5-10-5z M2 17l10 5 10-5 M2 12l10 5 10-5',
    keys: 'M21 2l-2 2m-7.61 7.61a5.5 5.5 0 1 1-7.778 7.778 5.5 5.5 0 0 1 7.777-7.777zm0 0L15.5 7.5m0 0l3 3L22 7l-3-3m-3.5 3.5L19 4',
    sessions: 'M22 12h-4l-3 9L9 3l-3 9H2',
    models: 'M18 20V10 M12 20V4 M6 20v-6',
    audit: 'M8 6h13 M8 12h13 M8 18h13 M3 6h.01 M3 12h.01 M3 18h.01',
    policies: 'M14 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V8z M14 2v6h6 M16 13H8 M16 17H8 M10 9H8',
    usage: 'M21.21 15.89A10 10 0 1 1 8 2.83 M22 12A10 10 0 0 0 12 2v10z',
    logout: 'M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4 M16 17l5-5-5-5 M21 12H9',
    copy: 'M11 9h9a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2h-9a2 2 0 0 1-2-2v-9a2 2 0 0 1 2-2z M5 15H4a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2h9a2 2 0 0 1 2 2v1',
    x: 'M18 6L6 18 M6 6l12 12',
    alert: 'M10.29 3.86L1.82 18a2 2 0 0 0 1.71 3h16.94a2 2 0 0 0 1.71-3L13.71 3.86a2 2 0 0 0-3.42 0z M12 9v4 M12 17h.01',
    check: 'M20 6L9 17l-5-5',
    ban: 'M22 12a10 10 0 1 1-20 0a10 10 0 1 1 20 0 M4.93 4.93l14.14 14.14',
    user: 'M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z',
    assistant: 'M12 3l1.9 5.1L19 10l-5.1 1.9L12 17l-1.9-5.1L5 10l5.1-1.9z M19 16l.9 2.1 2.1.9-2.1.9-.9 2.1-.9-2.1-2.1-.9 2.1-.9z',
    tool: 'M14.7 6.3a1 1 0 0 0 0 1.4l1.6 1.6a1 1 0 0 0 1.4 0l3.77-3.77a6 6 0 0 1-7.94 7.94l-6.91 6.91a2.12 2.12 0 0 1-3-3l6.91-6.91a6 6 0 0 1 7.94-7.94l-3.76 3.76z',
    system: 'M22 12a10 10 0 1 1-20 0a10 10 0 1 1 20 0 M12 16v-4 M12 8h.01',
    plus: 'M12 5v14 M5 12h14',
    refresh: 'M23 4v6h-6 M1 20v-6h6 M3.51 9a9 9 0 0 1 14.85-3.36L23 10 M1 14l4.64 4.36A9 9 0 0 0 20.49 15',
    back: 'M19 12H5 M12 19l-7-7 7-7',
    shield: 'M12 22s8-4 8-10V5l-8-3-8 3v7c0 6 8 10 8 10z',
    search: 'M19 11a8 8 0 1 1-16 0a8 8 0 1 1 16 0 M21 21l-4.35-4.35',
    chevron: 'M9 18l6-6-6-6',
  };

  function icon(name, cls) {
    return s('svg', { viewBox: '0 0 24 24', class: 'ico' + (cls ? ' ' + cls : ''), 'aria-hidden': 'true', focusable: 'false' },
      s('path', { d: ICONS[name] || ICONS.system }));
  }

  // ---------------------------------------------------------------- formatting
  function toDate(v) {
    if (v == null || v === '') return null;
    const d = v instanceof Date ? v : new Date(v);
    return isNaN(d.getTime()) ? null : d;
  }

  function relText(d) {
    const diff = (Date.now() - d.getTime()) / 1000;
    const a = Math.abs(diff);
    let t;
    if (a < 10) return diff >= 0 ? 'just now' : 'in a few seconds';
    if (a < 60) t = Math.round(a) + 's';
    else if (a < 3600) t = Math.round(a / 60) + 'm';
    else if (a < 86400 * 1.5) t = Math.round(a / 3600) + 'h';
    else if (a < 86400 * 60) t = Math.round(a / 86400) + 'd';
    else if (a < 86400 * 365 * 2) t = Math.round(a / (86400 * 30)) + 'mo';
    else t = Math.round(a / (86400 * 365)) + 'y';
    return diff >= 0 ? t + ' ago' : 'in ' + t;
  }

  const absFmt = new Intl.DateTimeFormat(undefined, {
    year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  function absText(d) { return absFmt.format(d); }

  const shortFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  const hmFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  const hmsFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

  /** A <time> with relative text and the absolute time (local and UTC) on hover. */
  function timeEl(v, opts) {
    const d = toDate(v);
    if (!d) return h('span', { class: 'muted' }, (opts && opts.none) || '—');
    return h('time', {
      datetime: d.toISOString(),
      title: absText(d) + '  ·  ' + d.toISOString(),
      'data-rel': '1',
      class: 'rel',
    }, relText(d));
  }

  function tickTimes() {
    for (const t of document.querySelectorAll('time[data-rel]')) {
      const d = toDate(t.getAttribute('datetime'));
      if (d) t.textContent = relText(d);
    }
  }

  function fmtDuration(ms) {
    if (ms == null || !isFinite(ms) || ms < 0) return '—';
    const sec = Math.round(ms / 1000);
    if (ms < 1000) return '<1s';
    if (sec < 60) return sec + 's';
    const m = Math.floor(sec / 60);
    if (m < 60) return m + 'm ' + (sec % 60) + 's';
    const hr = Math.floor(m / 60);
    if (hr < 48) return hr + 'h ' + (m % 60) + 'm';
    return Math.floor(hr / 24) + 'd ' + (hr % 24) + 'h';
  }

  const intFmt = new Intl.NumberFormat('en-US');
  const compactFmt = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });
  function num(n) { return n == null || !isFinite(n) ? '—' : intFmt.format(n); }
  function compact(n) { return n == null || !isFinite(n) ? '—' : (Math.abs(n) < 10000 ? intFmt.format(n) : compactFmt.format(n)); }

  function usd(v) {
    if (v == null || !isFinite(v)) return '—';
    const a = Math.abs(v);
    // Fixed decimals per magnitude, so a column of costs lines up.
    let digits = 2;
    if (a > 0 && a < 0.0001) digits = 6;
    else if (a > 0 && a < 1) digits = 4;
    const s = new Intl.NumberFormat('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(a);
    return (v < 0 ? '-$' : '$') + s;
  }

  function pct(v, digits) {
    if (v == null || !isFinite(v)) return '—';
    return (v * 100).toFixed(digits == null ? 1 : digits) + '%';
  }

  function msFmt(v) {
    if (v == null || !isFinite(v)) return '—';
    if (v >= 10000) return (v / 1000).toFixed(1) + ' s';
    if (v >= 100) return Math.round(v) + ' ms';
    return (Math.round(v * 10) / 10) + ' ms';
  }

  function prettyJSON(v) {
    try {
      return JSON.stringify(v, null, 2);
    } catch (e) {
      return String(v);
    }
  }

  function debounce(fn, ms) {
    let t = null;
    return function (...args) {
      clearTimeout(t);
      t = setTimeout(() => fn.apply(this, args), ms);
    };
  }

  function utcDay(d) { return d.toISOString().slice(0, 10); }

  function toLocalInput(d) {
    const p = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T' + p(d.getHours()) + ':' + p(d.getMinutes());
  }

  // ---------------------------------------------------------------- state
  const TENANT_KEY = 'portcullis.tenant';
  const state = {
    session: null,
    tenants: [],
    tenantId: '',
    live: sessionStorage.getItem('portcullis.live') !== 'off',
    lastUpdated: null,
    policyNames: null,
    keyNames: null,
  };

  function principal() { return state.session ? state.session.principal : null; }
  function isOperator() { const p = principal(); return !!p && p.kind === 'operator'; }
  function currentTenantId() {
    const p = principal();
    if (!p) return '';
    return isOperator() ? state.tenantId : (p.tenant_id || '');
  }
  /** Tenant admins and operators may change things; other tenant roles read. */
  function canWrite() { const p = principal(); return !!p && (p.kind === 'operator' || p.role === 'admin'); }
  const NEEDS_ADMIN = 'Needs the admin role';
  function tenantById(id) { return state.tenants.find((t) => t.id === id) || null; }
  function tenantLabel(id) { const t = tenantById(id); return t ? t.name : id; }

  // ---------------------------------------------------------------- API client
  class ApiError extends Error {
    constructor(status, problem, retryAfter) {
      const p = problem && typeof problem === 'object' ? problem : {};
      super(p.detail || p.title || ('HTTP ' + status));
      this.status = status;
      this.title = typeof p.title === 'string' ? p.title : (status ? 'HTTP ' + status : 'Network error');
      this.detail = typeof p.detail === 'string' ? p.detail : '';
      this.request_id = typeof p.request_id === 'string' ? p.request_id : '';
      this.errors = Array.isArray(p.errors) ? p.errors : null;
      this.retryAfter = retryAfter || null;
      this.problem = p;
    }
  }

  async function api(method, path, opts) {
    const o = opts || {};
    let url = path;
    if (o.query) {
      const qs = new URLSearchParams();
      for (const k of Object.keys(o.query)) {
        const v = o.query[k];
        if (v != null && v !== '') qs.append(k, String(v));
      }
      const q = qs.toString();
      if (q) url += '?' + q;
    }
    const headers = { Accept: 'application/json, application/problem+json' };
    if (o.body !== undefined) headers['Content-Type'] = 'application/json';
    if (method !== 'GET' && method !== 'HEAD' && state.session) headers['X-CSRF-Token'] = state.session.csrf_token;
    const tenant = o.tenant === undefined ? true : o.tenant;
    if (tenant && isOperator()) {
      const tid = typeof tenant === 'string' ? tenant : state.tenantId;
      if (tid) headers['X-Tenant-ID'] = tid;
    }
    let res;
    try {
      res = await fetch(url, {
        method,
        headers,
        body: o.body !== undefined ? JSON.stringify(o.body) : undefined,
        credentials: 'same-origin',
        cache: 'no-store',
        redirect: 'error',
      });
    } catch (e) {
      throw new ApiError(0, { title: 'Network error', detail: 'The server could not be reached: ' + (e && e.message ? e.message : e) });
    }
    if (res.status === 204) return null;
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!res.ok) {
      const p = data && typeof data === 'object' ? data : { title: res.statusText || ('HTTP ' + res.status), detail: text.slice(0, 300) };
      const err = new ApiError(res.status, p, res.headers.get('Retry-After'));
      if (res.status === 401 && path.startsWith('/v1/') && state.session) sessionLost(err);
      throw err;
    }
    return data;
  }

  async function fetchAll(path, opts, maxPages) {
    const items = [];
    let cursor;
    for (let i = 0; i < (maxPages || 20); i++) {
      const r = await api('GET', path, Object.assign({}, opts, { query: Object.assign({}, (opts && opts.query) || {}, { limit: 500, cursor }) }));
      for (const it of (r && r.items) || []) items.push(it);
      if (!r || !r.next_cursor) break;
      cursor = r.next_cursor;
    }
    return items;
  }

  /** Runs fn over items with at most n in flight. */
  async function pool(items, n, fn) {
    const out = new Array(items.length);
    let next = 0;
    async function worker() {
      while (next < items.length) {
        const i = next++;
        try { out[i] = { ok: true, value: await fn(items[i], i) }; } catch (e) { out[i] = { ok: false, error: e }; }
      }
    }
    await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
    return out;
  }

  // ---------------------------------------------------------------- feedback: banner, toast, dialogs
  /** A bug (not an API answer) also goes to the console as an uncaught error, so tests see it. */
  function surface(err) {
    if (!(err instanceof ApiError)) setTimeout(() => { throw err; }, 0);
  }

  function problemOf(err) {
    if (err instanceof ApiError) return err;
    return { status: 0, title: 'Unexpected error', detail: String(err && err.message ? err.message : err), request_id: '' };
  }

  function showError(err, what) {
    const area = document.getElementById('banner-area');
    const p = problemOf(err);
    surface(err);
    if (!area) return;
    const title = (what ? what + ' failed' : (p.title || 'Error')) + (p.status ? ' · ' + p.status + ' ' + (what ? p.title : '') : '');
    replace(area, h('div', { class: 'banner banner-error', role: 'alert', testid: 'error-banner' },
      icon('alert', 'banner-ico'),
      h('div', { class: 'banner-body' },
        h('div', { class: 'banner-title', testid: 'error-title' }, title.trim()),
        p.detail ? h('div', { class: 'banner-detail', testid: 'error-detail' }, p.detail) : null,
        p.retryAfter ? h('div', { class: 'banner-meta' }, 'Retry after ' + p.retryAfter + ' s') : null,
        p.request_id ? h('div', { class: 'banner-meta' }, 'Request ID ',
          h('code', { class: 'mono', testid: 'error-request-id' }, p.request_id), ' ', copyButton(p.request_id, { small: true })) : null),
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Dismiss', title: 'Dismiss', testid: 'error-dismiss', ev: { click: () => clear(area) } }, icon('x'))));
  }

  function clearError() {
    const area = document.getElementById('banner-area');
    if (area) clear(area);
  }

  function toast(msg, tone) {
    let box = document.getElementById('toasts');
    if (!box) {
      box = h('div', { id: 'toasts', class: 'toasts', 'aria-live': 'polite' });
      document.body.appendChild(box);
    }
    const t = h('div', { class: 'toast toast-' + (tone || 'ok'), testid: 'toast', role: 'status' }, icon(tone === 'warn' ? 'alert' : 'check'), h('span', null, msg));
    box.appendChild(t);
    setTimeout(() => { t.classList.add('out'); setTimeout(() => t.remove(), 300); }, 3800);
  }

  async function copyText(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return true;
      }
    } catch (e) { /* fall through to the selection fallback */ }
    const ta = h('textarea', { class: 'offscreen', readonly: 'readonly' });
    ta.value = text;
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
    ta.remove();
    return ok;
  }

  function copyButton(text, o) {
    const opts = o || {};
    const label = opts.label || 'Copy';
    const b = h('button', {
      type: 'button', class: ['btn', opts.small ? 'btn-xs' : 'btn-sm', opts.primary ? 'btn-primary' : ''], testid: opts.testid,
      title: 'Copy to clipboard',
    }, icon('copy'), h('span', null, opts.small ? '' : label));
    b.addEventListener('click', async (ev) => {
      ev.stopPropagation();
      const ok = await copyText(text);
      const span = b.querySelector('span');
      if (ok) {
        b.classList.add('copied');
        if (span) span.textContent = opts.small ? '' : 'Copied';
        setTimeout(() => { b.classList.remove('copied'); if (span) span.textContent = opts.small ? '' : label; }, 1600);
      } else {
        toast('Copy failed: select the text and press Ctrl+C', 'warn');
      }
    });
    return b;
  }

  function modal(o) {
    const closeBtn = h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', title: 'Close' }, icon('x'));
    const dlg = h('dialog', { class: ['modal', o.wide ? 'modal-wide' : ''], testid: o.testid, 'aria-label': o.title },
      h('div', { class: 'modal-head' }, h('h2', null, o.title), closeBtn),
      h('div', { class: 'modal-body' }, o.body),
      o.actions ? h('div', { class: 'modal-foot' }, o.actions) : null);
    let settled = false;
    function close(result) {
      if (settled) return;
      settled = true;
      if (dlg.open) dlg.close();
      dlg.remove();
      if (o.onClose) o.onClose(result);
    }
    closeBtn.addEventListener('click', () => close(undefined));
    dlg.addEventListener('cancel', (ev) => { ev.preventDefault(); if (!o.sticky) close(undefined); });
    document.body.appendChild(dlg);
    dlg.showModal();
    return { dlg, close };
  }

  /** A confirmation in a <dialog> (never window.confirm). Resolves true or false. */
  function confirmDialog(o) {
    return new Promise((resolve) => {
      const ok = h('button', { type: 'button', class: ['btn', o.danger ? 'btn-danger' : 'btn-primary'], testid: 'confirm-ok' }, o.confirm || 'Confirm');
      const cancel = h('button', { type: 'button', class: 'btn', testid: 'confirm-cancel' }, 'Cancel');
      const m = modal({
        title: o.title,
        testid: 'confirm-dialog',
        body: [h('p', { class: 'confirm-text' }, o.message), o.extra || null],
        actions: [cancel, ok],
        onClose: (r) => resolve(r === true),
      });
      ok.addEventListener('click', () => m.close(true));
      cancel.addEventListener('click', () => m.close(false));
      setTimeout(() => cancel.focus(), 0);
    });
  }

  /** Shows a newly made API key once, with a copy button. */
  function keyOnceDialog(created, heading) {
    return new Promise((resolve) => {
      const value = h('code', { class: 'secret mono', testid: 'key-once-value' }, created.key);
      const done = h('button', { type: 'button', class: 'btn btn-primary', testid: 'key-once-close' }, 'I have stored the key');
      const m = modal({
        title: heading || 'Your new API key',
        testid: 'key-once-dialog',
        sticky: true,
        body: [
          h('div', { class: 'callout callout-warn', testid: 'key-once-warning' }, icon('alert'),
            h('div', null, h('strong', null, 'This is the only time the key is shown. '),
              'Copy it into your secret store now; Portcullis keeps only a keyed hash and cannot show it again.')),
          h('dl', { class: 'kv' },
            h('dt', null, 'Name'), h('dd', null, created.name),
            h('dt', null, 'Role'), h('dd', null, created.role),
            h('dt', null, 'Key ID'), h('dd', { class: 'mono' }, created.id),
            created.expires_at ? [h('dt', null, 'Expires'), h('dd', null, timeEl(created.expires_at))] : null),
          h('div', { class: 'secret-row' }, value, copyButton(created.key, { testid: 'key-copy', primary: true, label: 'Copy key' })),
        ],
        actions: [done],
        onClose: () => resolve(),
      });
      done.addEventListener('click', () => m.close());
    });
  }

  // ---------------------------------------------------------------- small components
  const TONES = {
    active: 'ok', success: 'ok', allow: 'ok', ok: 'ok', enabled: 'ok',
    suspended: 'danger', revoked: 'danger', denied: 'danger', deny: 'danger', failure: 'warn', broken: 'danger',
    expired: 'warn', rotating: 'info', disabled: 'muted',
  };

  function pill(text, tone, attrs) {
    return h('span', Object.assign({ class: 'pill pill-' + (tone || TONES[text] || 'muted') }, attrs || {}), text);
  }

  function mono(text, attrs) {
    return h('code', Object.assign({ class: 'mono', title: text }, attrs || {}), text);
  }

  function emptyState(title, text, extra) {
    return h('div', { class: 'empty', testid: 'empty-state' }, h('div', { class: 'empty-title' }, title), text ? h('div', { class: 'empty-text' }, text) : null, extra || null);
  }

  function loading(text) {
    return h('div', { class: 'loading', testid: 'loading' }, h('span', { class: 'spinner' }), text || 'Loading…');
  }

  function pageHeader(title, sub, actions) {
    return h('div', { class: 'page-head' },
      h('div', null, h('h2', { class: 'page-title' }, title), sub ? h('div', { class: 'page-sub' }, sub) : null),
      actions ? h('div', { class: 'page-actions' }, actions) : null);
  }

  function card(title, body, o) {
    const opts = o || {};
    return h('section', { class: ['card', opts.cls], testid: opts.testid },
      title ? h('div', { class: 'card-head' }, h('h3', null, title), opts.actions ? h('div', { class: 'card-actions' }, opts.actions) : null) : null,
      h('div', { class: 'card-body' }, body));
  }

  function segmented(options, value, onChange, prefix, label) {
    const wrap = h('div', { class: 'seg', role: 'group', 'aria-label': label || '' });
    const btns = options.map(([v, text, title]) => h('button', {
      type: 'button', class: 'seg-btn', 'aria-pressed': String(v === value), testid: prefix + '-' + v, title: title || null,
      ev: { click: () => { set(v); onChange(v); } },
    }, text));
    function set(v) { btns.forEach((b, i) => b.setAttribute('aria-pressed', String(options[i][0] === v))); }
    addKids(wrap, btns);
    wrap.set = set;
    return wrap;
  }

  function field(label, control, hint) {
    return h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), control, hint ? h('span', { class: 'field-hint' }, hint) : null);
  }

  function select(options, value, attrs) {
    return h('select', Object.assign({ value }, attrs || {}), options.map(([v, t]) => h('option', { value: v }, t)));
  }

  function kpi(label, value, o) {
    const opts = o || {};
    return h('div', { class: ['kpi', opts.tone ? 'kpi-' + opts.tone : ''], testid: opts.testid, title: opts.title || null },
      h('div', { class: 'kpi-label' }, label), h('div', { class: 'kpi-value' }, value), opts.sub ? h('div', { class: 'kpi-sub' }, opts.sub) : null);
  }

  function busy(btn, on, text) {
    if (on) {
      btn.dataset.label = btn.textContent;
      btn.disabled = true;
      btn.classList.add('is-busy');
      if (text) btn.textContent = text;
    } else {
      btn.disabled = false;
      btn.classList.remove('is-busy');
      if (btn.dataset.label != null && text) btn.textContent = btn.dataset.label;
    }
  }

  /** For operators without a chosen tenant: a prompt with a picker. Returns true if a tenant is set. */
  function requireTenant(el, what) {
    if (currentTenantId()) return true;
    const pick = tenantSelect('tenant-picker');
    add(el, emptyState('Choose a tenant', what + ' belong to one tenant. Pick the tenant to act in (the top bar switcher does the same).', h('div', { class: 'empty-actions' }, pick)));
    return false;
  }

  // ---------------------------------------------------------------- shell
  const NAV = [
    ['tenants', 'Tenants', 'tenants'],
    ['keys', 'API keys', 'keys'],
    ['sessions', 'Sessions', 'sessions'],
    ['models', 'Models', 'models'],
    ['audit', 'Audit', 'audit'],
    ['policies', 'Policies', 'policies'],
    ['usage', 'Usage & limits', 'usage'],
  ];

  function setTitle(t) {
    const el = document.getElementById('page-title');
    if (el) el.textContent = t;
    document.title = t + ' · Portcullis';
  }

  function tenantSelect(testid) {
    const opts = [['', isOperator() ? 'All tenants (platform)' : '']];
    const sorted = state.tenants.slice().sort((a, b) => a.name.localeCompare(b.name));
    const sel = h('select', { class: 'tenant-select', testid, 'aria-label': 'Tenant' },
      h('option', { value: '' }, opts[0][1]),
      sorted.map((t) => h('option', { value: t.id, title: t.id }, t.name + (t.status === 'suspended' ? ' (suspended)' : ''))));
    sel.value = state.tenantId && tenantById(state.tenantId) ? state.tenantId : '';
    sel.addEventListener('change', () => setTenant(sel.value));
    return sel;
  }

  function renderTenantSwitcher() {
    const slot = document.getElementById('tenant-slot');
    if (!slot) return;
    if (isOperator()) {
      replace(slot, h('label', { class: 'switcher' }, h('span', { class: 'switcher-label' }, 'Tenant'), tenantSelect('tenant-switcher')));
    } else {
      const t = tenantById(currentTenantId());
      replace(slot, h('div', { class: 'switcher fixed', testid: 'tenant-fixed', title: currentTenantId() },
        h('span', { class: 'switcher-label' }, 'Tenant'), h('span', { class: 'tenant-name' }, t ? t.name : currentTenantId())));
    }
  }

  function setTenant(id) {
    if (!isOperator()) return;
    state.tenantId = id || '';
    if (state.tenantId) sessionStorage.setItem(TENANT_KEY, state.tenantId);
    else sessionStorage.removeItem(TENANT_KEY);
    state.policyNames = null;
    state.keyNames = null;
    for (const sel of document.querySelectorAll('select.tenant-select')) sel.value = state.tenantId;
    // Detail pages name things of the old tenant: go back to their list.
    const { path } = parseHash();
    const m = /^\/(sessions|policies)\/.+/.exec(path);
    if (m) location.hash = '#/' + m[1];
    else route();
  }

  async function loadTenants() {
    if (isOperator()) {
      state.tenants = await fetchAll('/v1/tenants', { tenant: false });
      if (state.tenantId && !tenantById(state.tenantId)) {
        state.tenantId = '';
        sessionStorage.removeItem(TENANT_KEY);
      }
    } else {
      const own = principal().tenant_id;
      try {
        state.tenants = [await api('GET', '/v1/tenants/' + enc(own), { tenant: false })];
      } catch (e) {
        if (e.status === 401) throw e;
        state.tenants = [{ id: own, name: own, tier: '', status: '' }];
      }
    }
    renderTenantSwitcher();
  }

  function liveText() {
    if (!state.live) return 'Paused';
    if (!state.lastUpdated) return 'Live';
    const sec = Math.round((Date.now() - state.lastUpdated) / 1000);
    return 'Live · ' + (sec < 2 ? 'now' : sec + 's ago');
  }

  function renderShell() {
    const p = principal();
    const nav = h('nav', { class: 'nav', 'aria-label': 'Main' },
      NAV.map(([id, label, ic]) => h('a', { href: '#/' + id, class: 'nav-link', testid: 'nav-' + id, 'data-nav': id }, icon(ic), h('span', null, label))));
    const live = h('button', {
      type: 'button', id: 'live', class: ['live', state.live ? 'on' : 'off'], testid: 'live-toggle',
      title: 'Live pages refresh on their own (sessions every 10 s, budgets and metrics every 30 s). Click to pause or resume.',
    }, h('span', { class: 'live-dot' }), h('span', { id: 'live-text' }, liveText()));
    live.addEventListener('click', () => {
      state.live = !state.live;
      sessionStorage.setItem('portcullis.live', state.live ? 'on' : 'off');
      live.classList.toggle('on', state.live);
      live.classList.toggle('off', !state.live);
      updateLive();
    });
    const who = h('div', { class: 'who', testid: 'principal', title: p.id },
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, (p.id.replace(/^[a-z_]+:/, '')[0] || '?').toUpperCase()),
      h('div', { class: 'who-text' },
        h('div', { class: 'who-id' }, p.id.replace(/^user:/, '')),
        h('div', { class: 'who-role', testid: 'principal-role' }, p.kind === 'operator' ? 'Platform operator' : (p.role || p.kind) + ' · tenant user')));
    const refresh = h('button', { type: 'button', class: 'icon-btn', testid: 'refresh-now', title: 'Refresh this page now', 'aria-label': 'Refresh' }, icon('refresh'));
    refresh.addEventListener('click', async () => {
      refresh.classList.add('spinning');
      try {
        if (nav.refresh) await refreshTick(true);
        else await route();
      } finally { refresh.classList.remove('spinning'); }
    });
    const logout = h('button', { type: 'button', class: 'btn btn-ghost', testid: 'logout', title: 'Sign out' }, icon('logout'), h('span', null, 'Sign out'));
    logout.addEventListener('click', signOut);
    replace(document.getElementById('app'),
      h('div', { class: 'shell' },
        h('aside', { class: 'sidebar' },
          h('div', { class: 'brand' }, icon('shield', 'brand-ico'), h('span', null, 'Portcullis')),
          nav,
          h('div', { class: 'sidebar-foot' }, h('div', null, 'Operator console'), h('div', { class: 'muted' }, 'Times: local · hover for UTC'))),
        h('div', { class: 'main' },
          h('header', { class: 'topbar' },
            h('h1', { id: 'page-title', class: 'topbar-title' }, 'Portcullis'),
            h('div', { class: 'topbar-spacer' }),
            live,
            refresh,
            h('div', { id: 'tenant-slot' }),
            who,
            logout),
          h('div', { id: 'banner-area', class: 'banner-area' }),
          h('main', { id: 'content', class: 'content', tabindex: '-1' }))));
    document.getElementById('app').classList.remove('boot');
  }

  function updateLive() {
    const t = document.getElementById('live-text');
    if (t) t.textContent = liveText();
  }

  // ---------------------------------------------------------------- login / session
  function showLogin(notice) {
    state.session = null;
    state.tenants = [];
    nav.seq++;
    nav.refresh = null;
    for (const d of document.querySelectorAll('dialog')) d.remove();
    const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, testid: 'login-email', placeholder: 'you@example.com' });
    const pw = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true, testid: 'login-password' });
    const err = h('div', { class: 'login-error', testid: 'login-error', role: 'alert', hidden: true });
    const btn = h('button', { type: 'submit', class: 'btn btn-primary btn-block', testid: 'login-submit' }, 'Sign in');
    const form = h('form', { class: 'login-card', testid: 'login-form', method: 'post', autocomplete: 'on' },
      h('div', { class: 'login-brand' }, icon('shield', 'brand-ico'), h('span', null, 'Portcullis')),
      h('h1', { class: 'login-title' }, 'Sign in to the operator console'),
      notice ? h('div', { class: 'login-notice', testid: 'login-notice' }, notice) : null,
      field('Email', email),
      field('Password', pw),
      err,
      btn,
      h('p', { class: 'login-foot' }, 'Operators and tenant users sign in with their Portcullis account. Repeated failures are slowed down and audited.'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      if (!email.value || !pw.value) {
        err.textContent = 'Enter your email and password.';
        err.hidden = false;
        return;
      }
      btn.disabled = true;
      btn.textContent = 'Signing in…';
      email.disabled = true;
      pw.disabled = true;
      try {
        const sess = await api('POST', '/ui/login', { body: { email: email.value.trim(), password: pw.value }, tenant: false });
        pw.value = '';
        await startApp(sess);
      } catch (e) {
        const p = problemOf(e);
        let msg = p.status === 401 ? 'Wrong email or password.' : (p.detail || p.title);
        if (p.status === 429) msg = 'Too many attempts. ' + (p.retryAfter ? 'Try again in ' + p.retryAfter + ' s.' : (p.detail || ''));
        err.textContent = '';
        add(err, h('div', null, msg), p.status !== 401 && p.detail && p.detail !== msg ? h('div', { class: 'muted' }, p.detail) : null,
          p.request_id ? h('div', { class: 'muted small' }, 'Request ID ', h('code', { class: 'mono' }, p.request_id)) : null);
        err.hidden = false;
        btn.disabled = false;
        btn.textContent = 'Sign in';
        email.disabled = false;
        pw.disabled = false;
        pw.focus();
      }
    });
    const app = document.getElementById('app');
    app.classList.remove('boot');
    replace(app, h('div', { class: 'login-wrap' }, form));
    document.title = 'Sign in · Portcullis';
    setTimeout(() => email.focus(), 0);
  }

  async function startApp(sess) {
    state.session = sess;
    state.policyNames = null;
    state.keyNames = null;
    state.tenantId = isOperator() ? (sessionStorage.getItem(TENANT_KEY) || '') : (sess.principal.tenant_id || '');
    renderShell();
    try {
      await loadTenants();
    } catch (e) {
      if (!state.session) return;
      showError(e, 'Loading tenants');
    }
    const { path } = parseHash();
    if (!findRoute(path)) history.replaceState(null, '', '#/tenants');
    route();
  }

  function sessionLost() {
    if (!state.session) return;
    showLogin('Your session has ended. Sign in again to continue.');
  }

  async function signOut() {
    try {
      await api('POST', '/ui/logout', { tenant: false });
    } catch (e) {
      if (e.status !== 401) { showError(e, 'Sign out'); return; }
    }
    sessionStorage.removeItem(TENANT_KEY);
    history.replaceState(null, '', '#/tenants');
    showLogin('You have signed out.');
  }

  // ---------------------------------------------------------------- router
  const nav = { seq: 0, refresh: null, manual: false, every: 10000, lastRun: 0, cleanups: [] };

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const i = raw.indexOf('?');
    const path = i >= 0 ? raw.slice(0, i) : raw;
    const params = new URLSearchParams(i >= 0 ? raw.slice(i + 1) : '');
    return { path, params };
  }

  function setHashParams(path, params) {
    const q = params.toString();
    history.replaceState(null, '', '#' + path + (q ? '?' + q : ''));
  }

  const ROUTES = [
    [/^\/tenants$/, 'tenants', (el, c) => pageTenants(el, c)],
    [/^\/keys$/, 'keys', (el, c) => pageKeys(el, c)],
    [/^\/sessions$/, 'sessions', (el, c) => pageSessions(el, c)],
    [/^\/sessions\/([^/]+)$/, 'sessions', (el, c, id) => pageSession(el, c, id)],
    [/^\/models$/, 'models', (el, c) => pageModels(el, c)],
    [/^\/audit$/, 'audit', (el, c) => pageAudit(el, c)],
    [/^\/policies$/, 'policies', (el, c) => pagePolicies(el, c)],
    [/^\/policies\/([^/]+)$/, 'policies', (el, c, id) => pagePolicy(el, c, id)],
    [/^\/usage$/, 'usage', (el, c) => pageUsage(el, c)],
  ];

  function findRoute(path) {
    for (const [re, section, fn] of ROUTES) {
      const m = re.exec(path);
      if (m) return { section, fn, args: m.slice(1).map((a) => { try { return decodeURIComponent(a); } catch (e) { return a; } }) };
    }
    return null;
  }

  async function route() {
    if (!state.session) return;
    const { path, params } = parseHash();
    const r = findRoute(path);
    if (!r) {
      location.hash = '#/tenants';
      return;
    }
    nav.seq++;
    const seq = nav.seq;
    nav.refresh = null;
    nav.manual = false;
    for (const fn of nav.cleanups.splice(0)) { try { fn(); } catch (e) { /* ignore */ } }
    clearError();
    for (const a of document.querySelectorAll('.nav-link')) a.classList.toggle('active', a.getAttribute('data-nav') === r.section);
    const content = document.getElementById('content');
    if (!content) return;
    clear(content);
    content.scrollTop = 0;
    window.scrollTo(0, 0);
    const ctx = {
      params,
      alive: () => seq === nav.seq && !!state.session,
      // Live pages refresh every `every` ms (10 s by default); `manual` ones only on request.
      onRefresh: (fn, opts) => {
        if (seq !== nav.seq) return;
        nav.refresh = fn;
        nav.manual = !!(opts && opts.manual);
        nav.every = (opts && opts.every) || 10000;
        nav.lastRun = Date.now();
      },
      onCleanup: (fn) => nav.cleanups.push(fn),
    };
    try {
      await r.fn(content, ctx, ...r.args);
      if (ctx.alive()) { state.lastUpdated = Date.now(); updateLive(); }
    } catch (e) {
      if (ctx.alive()) showError(e, 'Loading this page');
    }
  }

  let refreshing = false;
  async function refreshTick(force) {
    if (!state.session || refreshing || !nav.refresh) return;
    if (!force && (!state.live || document.hidden || nav.manual || Date.now() - nav.lastRun < nav.every - 1000)) return;
    if (document.querySelector('dialog[open]')) return;
    const seq = nav.seq;
    refreshing = true;
    nav.lastRun = Date.now();
    try {
      await nav.refresh();
      if (seq === nav.seq) state.lastUpdated = Date.now();
    } catch (e) {
      if (seq === nav.seq && state.session) showError(e, 'Refreshing');
    } finally {
      refreshing = false;
      updateLive();
    }
  }

  // ---------------------------------------------------------------- page: tenants
  function budgetWindow(label, w, testid) {
    if (!w) return h('div', { class: 'budget-row', testid, 'data-state': 'unknown' }, h('div', { class: 'budget-label' }, label), h('div', { class: 'muted' }, 'not reported'));
    const limit = w.limit_usd;
    const spent = w.spent_usd || 0;
    if (limit == null) {
      return h('div', { class: 'budget-row', testid, 'data-state': 'none' },
        h('div', { class: 'budget-line' }, h('span', { class: 'budget-label' }, label),
          h('span', { class: 'budget-nums' }, h('strong', null, usd(spent)), ' spent')),
        h('div', { class: 'budget-none', testid: 'budget-none' }, 'No budget set'));
    }
    const percent = w.percent != null ? w.percent : (limit > 0 ? (spent / limit) * 100 : 100);
    const st = percent >= 100 ? 'exceeded' : ((w.warning || percent >= 90) ? 'warning' : 'ok');
    const fill = h('div', { class: 'bar-fill' });
    fill.style.width = Math.max(0, Math.min(100, percent)).toFixed(1) + '%';
    return h('div', { class: ['budget-row', 'budget-' + st], testid, 'data-state': st },
      h('div', { class: 'budget-line' },
        h('span', { class: 'budget-label' }, label),
        h('span', { class: 'budget-nums' }, h('strong', null, usd(spent)), ' of ', usd(limit)),
        h('span', { class: 'budget-pct' }, percent.toFixed(percent < 10 ? 1 : 0) + '%')),
      h('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(Math.round(percent)), 'aria-label': label + ' budget' }, fill),
      h('div', { class: 'budget-foot' },
        st === 'exceeded' ? pill('Exhausted · requests get 402', 'danger', { testid: 'budget-exceeded' })
          : st === 'warning' ? pill('Over 90% of budget', 'warn', { testid: 'budget-warning' }) : h('span', { class: 'muted' }, usd(Math.max(0, limit - spent)) + ' left'),
        w.resets_at ? h('span', { class: 'muted' }, 'resets ', timeEl(w.resets_at)) : null));
  }

  function budgetCard(b, err) {
    if (err) {
      return h('div', { class: 'budget-card', testid: 'budget-card', 'data-state': 'error' },
        h('div', { class: 'budget-head' }, 'Budget'), h('div', { class: 'muted' }, 'Budget unavailable: ' + (err.detail || err.title || err.message)));
    }
    if (!b) return h('div', { class: 'budget-card', testid: 'budget-card' }, loading('Loading budget…'));
    const worst = ['exceeded', 'warning', 'ok', 'none'].find((st) => [b.daily, b.monthly].some((w) => w && stateOfWindow(w) === st)) || 'none';
    return h('div', { class: ['budget-card', 'budget-card-' + worst], testid: 'budget-card', 'data-state': worst },
      h('div', { class: 'budget-head' }, 'Budget'),
      budgetWindow('Today', b.daily, 'budget-daily'),
      budgetWindow('This month', b.monthly, 'budget-monthly'));
  }

  function stateOfWindow(w) {
    if (w.limit_usd == null) return 'none';
    const p = w.percent != null ? w.percent : (w.limit_usd > 0 ? (w.spent_usd / w.limit_usd) * 100 : 100);
    return p >= 100 ? 'exceeded' : ((w.warning || p >= 90) ? 'warning' : 'ok');
  }

  async function pageTenants(el, ctx) {
    setTitle('Tenants');
    const op = isOperator();
    const list = h('div', { class: 'tenant-grid', testid: 'tenant-list' });
    const filter = h('input', { type: 'search', class: 'input', placeholder: 'Filter by name or id', testid: 'tenant-filter', 'aria-label': 'Filter tenants' });
    let tenants = [];
    let budgets = new Map();

    const createName = h('input', { type: 'text', class: 'input', required: true, maxlength: '200', placeholder: 'acme-prod', testid: 'tenant-create-name' });
    const createTier = select([['free', 'Free'], ['starter', 'Starter'], ['pro', 'Pro'], ['enterprise', 'Enterprise']], 'free', { testid: 'tenant-create-tier' });
    const createBtn = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'tenant-create-submit' }, 'Create tenant');
    const createForm = h('form', { class: 'card form-inline create-panel', testid: 'tenant-create-form', hidden: true },
      field('Name', createName), field('Tier', createTier), h('div', { class: 'form-actions' }, createBtn));
    createForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!createName.value.trim()) return;
      busy(createBtn, true, 'Creating…');
      try {
        const t = await api('POST', '/v1/tenants', { body: { name: createName.value.trim(), tier: createTier.value }, tenant: false });
        toast('Tenant “' + t.name + '” created');
        createName.value = '';
        createForm.hidden = true;
        await load();
      } catch (e) {
        showError(e, 'Creating the tenant');
      } finally {
        busy(createBtn, false, 'Create tenant');
      }
    });
    const newBtn = op ? h('button', { type: 'button', class: 'btn btn-primary', testid: 'tenant-new' }, icon('plus'), h('span', null, 'New tenant')) : null;
    if (newBtn) newBtn.addEventListener('click', () => { createForm.hidden = !createForm.hidden; if (!createForm.hidden) createName.focus(); });

    add(el,
      pageHeader(op ? 'Tenants' : 'Your tenant', op ? 'Every tenant on this gateway: status, tier and spend against budget.' : 'Status, tier and spend against budget.',
        op ? [filter, newBtn] : null),
      op ? createForm : null,
      list);
    filter.addEventListener('input', () => paint());
    list.appendChild(loading('Loading tenants…'));

    function paint() {
      const q = filter.value.trim().toLowerCase();
      const sel = currentTenantId();
      const shown = tenants
        .filter((t) => !q || t.name.toLowerCase().includes(q) || t.id.toLowerCase().includes(q))
        .sort((a, b) => (b.id === sel) - (a.id === sel) || a.name.localeCompare(b.name));
      if (!shown.length) {
        replace(list, emptyState(tenants.length ? 'No tenant matches' : 'No tenants yet', tenants.length ? 'Try another filter.' : (op ? 'Create the first tenant with “New tenant”.' : '')));
        return;
      }
      replace(list, shown.map((t) => tenantCard(t, sel)));
    }

    function tenantCard(t, sel) {
      const b = budgets.get(t.id);
      const actions = [];
      const use = h('button', { type: 'button', class: 'btn btn-sm', testid: 'tenant-open-sessions' }, 'Sessions');
      use.addEventListener('click', () => { if (op) { state.tenantId = t.id; sessionStorage.setItem(TENANT_KEY, t.id); renderTenantSwitcher(); } location.hash = '#/sessions?range=today&sort=cost'; });
      actions.push(use);
      const usage = h('button', { type: 'button', class: 'btn btn-sm', testid: 'tenant-open-usage' }, 'Usage & limits');
      usage.addEventListener('click', () => { if (op) { state.tenantId = t.id; sessionStorage.setItem(TENANT_KEY, t.id); renderTenantSwitcher(); } location.hash = '#/usage'; });
      actions.push(usage);
      if (op) {
        if (t.id !== sel) {
          const pick = h('button', { type: 'button', class: 'btn btn-sm btn-ghost', testid: 'tenant-select' }, 'Act here');
          pick.addEventListener('click', () => setTenant(t.id));
          actions.push(pick);
        }
        const suspended = t.status === 'suspended';
        const b2 = h('button', { type: 'button', class: ['btn', 'btn-sm', 'push-right', suspended ? '' : 'btn-danger-ghost'], testid: suspended ? 'tenant-resume' : 'tenant-suspend' }, suspended ? 'Resume' : 'Suspend');
        b2.addEventListener('click', async () => {
          const ok = await confirmDialog(suspended
            ? { title: 'Resume tenant?', message: 'Resume “' + t.name + '”? Its credentials work again at once.', confirm: 'Resume' }
            : { title: 'Suspend tenant?', message: 'Suspend “' + t.name + '”? Every credential of the tenant fails with 403 until it is resumed. Running streams are not cut.', confirm: 'Suspend', danger: true });
          if (!ok) return;
          busy(b2, true);
          try {
            await api('POST', '/v1/tenants/' + enc(t.id) + (suspended ? '/resume' : '/suspend'), { tenant: false });
            toast('Tenant ' + (suspended ? 'resumed' : 'suspended'));
            await load();
          } catch (e) {
            showError(e, suspended ? 'Resuming the tenant' : 'Suspending the tenant');
            busy(b2, false);
          }
        });
        actions.push(b2);
      }
      return h('article', { class: ['card', 'tenant-card', t.id === sel ? 'selected' : '', t.status === 'suspended' ? 'is-suspended' : ''], testid: 'tenant-card', 'data-tenant-id': t.id },
        h('div', { class: 'tenant-top' },
          h('div', { class: 'tenant-title' }, h('h3', { class: 'tenant-name', testid: 'tenant-name' }, t.name),
            h('div', { class: 'tenant-meta' }, mono(t.id, { class: 'mono tenant-id' }), copyButton(t.id, { small: true }),
              t.created_at ? h('span', { class: 'muted small' }, '· created ', timeEl(t.created_at)) : null)),
          h('div', { class: 'tenant-pills' }, t.id === sel && op ? pill('acting here', 'muted') : null,
            t.tier ? pill(t.tier, 'info', { testid: 'tenant-tier' }) : null, t.status ? pill(t.status, null, { testid: 'tenant-status' }) : null)),
        budgetCard(b && b.ok ? b.value : null, b && !b.ok ? b.error : null),
        h('div', { class: 'tenant-actions' }, actions));
    }

    async function load() {
      const fresh = op ? await fetchAll('/v1/tenants', { tenant: false })
        : [await api('GET', '/v1/tenants/' + enc(currentTenantId()), { tenant: false })];
      if (!ctx.alive()) return;
      tenants = fresh;
      if (op) { state.tenants = fresh; renderTenantSwitcher(); }
      paint();
      const results = await pool(tenants, 6, (t) => api('GET', '/v1/tenants/' + enc(t.id) + '/budget', { tenant: false }));
      if (!ctx.alive()) return;
      budgets = new Map(tenants.map((t, i) => [t.id, results[i]]));
      paint();
    }

    await load();
    // Each tenant's budget is a read of its own (and audited): every 30 s is live enough.
    ctx.onRefresh(load, { every: 30000 });
  }

  // ---------------------------------------------------------------- page: API keys
  async function pageKeys(el, ctx) {
    setTitle('API keys');
    if (!requireTenant(el, 'API keys')) return;
    const name = h('input', { type: 'text', class: 'input', required: true, maxlength: '200', placeholder: 'ci-deploy', testid: 'key-name' });
    const role = select([['service', 'service'], ['viewer', 'viewer'], ['editor', 'editor'], ['admin', 'admin']], 'service', { testid: 'key-role' });
    const exp = select([['', 'Never'], ['1d', '1 day'], ['7d', '7 days'], ['30d', '30 days'], ['90d', '90 days'], ['365d', '1 year']], '90d', { testid: 'key-expiry' });
    const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'key-create-submit' }, icon('plus'), h('span', null, 'Create key'));
    const form = h('form', { class: 'card form-inline', testid: 'key-create-form', hidden: !canWrite() },
      field('Name', name), field('Role', role), field('Expires', exp), h('div', { class: 'form-actions' }, submit));
    const body = h('div', { testid: 'key-list', 'aria-busy': 'true' }, loading('Loading keys…'));
    const showAll = h('input', { type: 'checkbox', checked: true, testid: 'key-show-inactive' });
    let keys = [];

    add(el, pageHeader('API keys', 'Keys of ' + tenantLabel(currentTenantId()) + '. A key is shown once when it is made; only its keyed hash is stored.',
      h('label', { class: 'check' }, showAll, ' Show revoked and expired')), form, card(null, body, { cls: 'card-flush' }));
    showAll.addEventListener('change', paint);

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!name.value.trim()) { name.focus(); return; }
      submit.disabled = true;
      try {
        state.keyNames = null;
        const created = await api('POST', '/v1/keys', { body: { name: name.value.trim(), role: role.value, expires_in: exp.value || undefined } });
        name.value = '';
        await load();
        await keyOnceDialog(created, 'API key created');
      } catch (e) {
        showError(e, 'Creating the key');
      } finally {
        submit.disabled = false;
      }
    });

    function paint() {
      const rows = keys.filter((k) => showAll.checked || (k.status !== 'revoked' && k.status !== 'expired'));
      body.setAttribute('aria-busy', 'false');
      if (!rows.length) {
        replace(body, emptyState('No API keys', 'Create a key above for a service or a person. Pick the least role that does the job.'));
        return;
      }
      replace(body, h('table', { class: 'table', testid: 'key-table' },
        h('thead', null, h('tr', null, ['Name', 'Prefix', 'Role', 'Status', 'Created', 'Last used', 'Expires', ''].map((c) => h('th', null, c)))),
        h('tbody', null, rows.map(keyRow))));
    }

    function keyRow(k) {
      const actions = h('div', { class: 'row-actions' });
      if ((k.status === 'active' || k.status === 'rotating') && canWrite()) {
        const rot = h('button', { type: 'button', class: 'btn btn-sm', testid: 'key-rotate' }, 'Rotate');
        rot.addEventListener('click', () => rotate(k));
        const rev = h('button', { type: 'button', class: 'btn btn-sm btn-danger-ghost', testid: 'key-revoke' }, 'Revoke');
        rev.addEventListener('click', () => revoke(k, rev));
        if (k.status === 'active') actions.appendChild(rot);
        actions.appendChild(rev);
      }
      return h('tr', { testid: 'key-row', 'data-key-id': k.id, 'data-status': k.status, class: k.status === 'revoked' || k.status === 'expired' ? 'dim' : '' },
        h('td', null, h('div', { class: 'cell-main', testid: 'key-name-cell' }, k.name), h('div', { class: 'cell-sub' }, mono(k.id, { class: 'mono small id-trunc' }))),
        h('td', { class: 'nowrap' }, mono(k.prefix + '…')),
        h('td', null, pill(k.role, 'info')),
        h('td', null, pill(k.status, null, { testid: 'key-status' }),
          k.rotated_to ? h('div', { class: 'cell-sub nowrap' }, 'replaced by ', mono(k.rotated_to, { class: 'mono small id-trunc' })) : null),
        h('td', null, timeEl(k.created_at), h('div', { class: 'cell-sub' }, k.created_by)),
        h('td', { class: 'nowrap' }, timeEl(k.last_used_at, { none: 'never' })),
        h('td', { class: 'nowrap' }, k.revoked_at ? h('span', { class: 'muted' }, 'revoked ', timeEl(k.revoked_at)) : timeEl(k.expires_at, { none: 'never' })),
        h('td', { class: 'actions-cell' }, actions));
    }

    async function revoke(k, btn) {
      const ok = await confirmDialog({ title: 'Revoke key?', message: 'Revoke “' + k.name + '” (' + k.prefix + '…)? Every request with it fails from now on. This cannot be undone.', confirm: 'Revoke key', danger: true });
      if (!ok) return;
      btn.disabled = true;
      try {
        await api('DELETE', '/v1/keys/' + enc(k.id));
        toast('Key “' + k.name + '” revoked');
        await load();
      } catch (e) {
        showError(e, 'Revoking the key');
        btn.disabled = false;
      }
    }

    async function rotate(k) {
      const grace = select([['10m', '10 minutes'], ['1h', '1 hour'], ['24h', '24 hours'], ['7d', '7 days']], '1h', { testid: 'key-rotate-grace' });
      const ok = await confirmDialog({
        title: 'Rotate key?',
        message: 'Make a new key to replace “' + k.name + '”. The old key keeps working for the grace period, then stops.',
        confirm: 'Rotate', extra: field('Grace period for the old key', grace),
      });
      if (!ok) return;
      try {
        const created = await api('POST', '/v1/keys/' + enc(k.id) + '/rotate', { body: { grace_period: grace.value } });
        await load();
        await keyOnceDialog(created, 'Key rotated: the new key');
      } catch (e) {
        showError(e, 'Rotating the key');
      }
    }

    async function load() {
      const items = await fetchAll('/v1/keys', {}, 4);
      if (!ctx.alive()) return;
      keys = items.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
      state.keyNames = { tid: currentTenantId(), map: new Map(items.map((k) => ['key:' + k.id, k.name])) };
      paint();
    }
    await load();
  }

  // ---------------------------------------------------------------- page: sessions
  const RANGES = [['today', 'Today', 'Since local midnight'], ['24h', '24 h'], ['7d', '7 days'], ['all', 'All']];

  function sinceOf(range) {
    const now = new Date();
    if (range === 'today') return new Date(now.getFullYear(), now.getMonth(), now.getDate()).toISOString();
    if (range === '24h') return new Date(now.getTime() - 86400e3).toISOString();
    if (range === '7d') return new Date(now.getTime() - 7 * 86400e3).toISOString();
    return '';
  }

  async function pageSessions(el, ctx) {
    setTitle('Sessions');
    if (!requireTenant(el, 'Sessions')) return;
    const p = ctx.params;
    const f = {
      range: RANGES.some((r) => r[0] === p.get('range')) ? p.get('range') : '24h',
      sort: p.get('sort') === 'cost' ? 'cost' : 'recent',
      q: p.get('q') || '',
    };
    let items = [];
    let cursor = null;
    let reqSeq = 0;
    let names = new Map();
    const listEl = h('div', { class: 'card card-flush', testid: 'session-list', 'aria-busy': 'true' });
    const summary = h('div', { class: 'summary-strip', testid: 'session-summary' });
    const more = h('button', { type: 'button', class: 'btn', testid: 'session-more', hidden: true }, 'Load more');
    const search = h('input', { type: 'search', class: 'input', placeholder: 'Search session id…', value: f.q, testid: 'session-search', 'aria-label': 'Search by session id' });
    const rangeSeg = segmented(RANGES, f.range, (v) => { f.range = v; reload(); }, 'range', 'Time range');
    const sortSeg = segmented([['recent', 'Most recent'], ['cost', 'Most expensive']], f.sort, (v) => { f.sort = v; reload(); }, 'sort', 'Sort');

    add(el,
      pageHeader('Sessions', 'Agent conversations through the gateway in ' + tenantLabel(currentTenantId()) + ': messages, tool calls and the policy decisions on them.'),
      h('div', { class: 'toolbar' },
        h('div', { class: 'search-box' }, icon('search'), search),
        rangeSeg, sortSeg),
      summary, listEl, h('div', { class: 'more-row' }, more));

    search.addEventListener('input', debounce(() => { f.q = search.value.trim(); reload(); }, 250));
    more.addEventListener('click', () => load(true));

    function syncHash() {
      const q = new URLSearchParams();
      q.set('range', f.range);
      q.set('sort', f.sort);
      if (f.q) q.set('q', f.q);
      setHashParams('/sessions', q);
    }

    function reload() {
      syncHash();
      items = [];
      cursor = null;
      listEl.setAttribute('aria-busy', 'true');
      listEl.classList.add('is-loading');
      return load(false);
    }

    async function load(append, keepCount) {
      const my = ++reqSeq;
      listEl.setAttribute('aria-busy', 'true');
      const limit = keepCount ? Math.min(500, Math.max(50, keepCount)) : 50;
      const r = await api('GET', '/v1/sessions', {
        query: { limit, cursor: append ? cursor : undefined, since: sinceOf(f.range), q: f.q, sort: f.sort },
      });
      if (!ctx.alive() || my !== reqSeq) return;
      items = append ? items.concat(r.items || []) : (r.items || []);
      cursor = r.next_cursor || null;
      paint();
    }

    function paint() {
      listEl.classList.remove('is-loading');
      more.hidden = !cursor;
      const totalCost = items.reduce((a, x) => a + (x.cost_usd || 0), 0);
      const denied = items.reduce((a, x) => a + (x.denied || 0), 0);
      const tools = items.reduce((a, x) => a + (x.tool_calls || 0), 0);
      replace(summary,
        kpi('Sessions', num(items.length) + (cursor ? '+' : '')),
        kpi('Cost', usd(totalCost)),
        kpi('Tool calls', num(tools)),
        kpi('Denied', num(denied), { tone: denied ? 'danger' : '' }));
      if (!items.length) {
        replace(listEl, emptyState('No sessions here', f.q ? 'No session id contains “' + f.q + '” in this range.' : 'No agent session was recorded in this range. Sessions appear when clients name them in X-Session-Id (or metadata.session_id); what is kept follows the capture settings on Usage & limits.'));
      } else {
        replace(listEl, h('table', { class: 'table table-click', testid: 'session-table' },
          h('thead', null, h('tr', null,
            h('th', null, 'Session'), h('th', null, 'Last activity'), h('th', null, 'Duration'),
            h('th', { class: 'num' }, 'Events'), h('th', { class: 'num' }, 'Msgs'), h('th', { class: 'num' }, 'Tool calls'),
            h('th', { class: 'num' }, 'Denied'), h('th', { class: 'num' }, 'Tokens'), h('th', { class: ['num', f.sort === 'cost' ? 'sorted' : ''] }, 'Cost'),
            h('th', null, 'Model'), h('th', null, 'Principal'))),
          h('tbody', null, items.map(sessionRow))));
      }
      listEl.setAttribute('aria-busy', 'false');
    }

    function sessionRow(x) {
      const href = '#/sessions/' + enc(x.session_id);
      const first = toDate(x.first_event_at);
      const last = toDate(x.last_event_at);
      const tr = h('tr', { testid: 'session-row', 'data-session-id': x.session_id, tabindex: '0' },
        h('td', null, h('a', { href, class: 'mono link', testid: 'session-link', title: x.session_id }, x.session_id)),
        h('td', null, timeEl(x.last_event_at)),
        h('td', null, first && last ? fmtDuration(last - first) : '—'),
        h('td', { class: 'num' }, num(x.total_events)),
        h('td', { class: 'num', title: x.user_messages + ' user · ' + x.assistant_messages + ' assistant' }, num((x.user_messages || 0) + (x.assistant_messages || 0))),
        h('td', { class: 'num' }, num(x.tool_calls)),
        h('td', { class: 'num' }, x.denied ? pill(String(x.denied), 'danger', { testid: 'session-denied' }) : h('span', { class: 'muted' }, '0')),
        h('td', { class: 'num', title: num(x.input_tokens) + ' in · ' + num(x.output_tokens) + ' out' }, compact((x.input_tokens || 0) + (x.output_tokens || 0))),
        h('td', { class: 'num strong', testid: 'session-cost' }, usd(x.cost_usd)),
        h('td', null, x.last_model ? h('span', { class: 'mono small' }, x.last_model) : h('span', { class: 'muted' }, '—')),
        h('td', { class: 'truncate' }, actorEl(x.last_principal_id, names)));
      tr.addEventListener('click', (ev) => { if (!ev.target.closest('a')) location.hash = href; });
      tr.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') location.hash = href; });
      return tr;
    }

    listEl.appendChild(loading('Loading sessions…'));
    syncHash();
    names = await keyNames();
    await load(false);
    ctx.onRefresh(() => load(false, items.length));
  }

  /** Names of the tenant's API keys by principal id (`key:<id>`), to show who acted. */
  async function keyNames() {
    const tid = currentTenantId();
    if (!tid) return new Map();
    if (state.keyNames && state.keyNames.tid === tid) return state.keyNames.map;
    let map = new Map();
    try {
      const items = await fetchAll('/v1/keys', {}, 2);
      map = new Map(items.map((k) => ['key:' + k.id, k.name]));
    } catch (e) {
      if (e.status === 401) throw e;
    }
    state.keyNames = { tid, map };
    return map;
  }

  /** A principal id, with the key's name when known (the id stays in the title). */
  function actorEl(id, names) {
    if (!id) return h('span', { class: 'muted' }, '—');
    const n = names && names.get(id);
    if (n) return h('span', { class: 'actor', title: id }, icon('keys'), h('span', { class: 'actor-name' }, n));
    return h('span', { class: 'actor', title: id }, id.replace(/^user:/, ''));
  }

  async function policyNames() {
    if (state.policyNames) return state.policyNames;
    try {
      const r = await api('GET', '/v1/policies');
      state.policyNames = new Map(((r && r.items) || []).map((p) => [p.id, p.name]));
    } catch (e) {
      if (e.status === 401) throw e;
      state.policyNames = new Map();
    }
    return state.policyNames;
  }

  const TYPE_LABEL = { user: 'User', assistant: 'Assistant', tool: 'Tool call', system: 'System' };

  async function pageSession(el, ctx, id) {
    setTitle('Session');
    if (!requireTenant(el, 'Sessions')) return;
    const back = h('a', { href: '#/sessions', class: 'back-link', testid: 'session-back' }, icon('back'), 'Sessions');
    const head = h('div', { class: 'page-head' },
      h('div', null, back, h('h2', { class: 'page-title' }, 'Session ', h('code', { class: 'mono title-id', testid: 'session-id' }, id), ' ', copyButton(id, { small: true }))));
    const stats = h('div', { class: 'kpis', testid: 'session-stats' });
    const tools = h('div', { class: 'toolbar' });
    const tl = h('ol', { class: 'timeline', testid: 'timeline' });
    add(el, head, stats, tools, card(null, tl, { cls: 'timeline-card' }));
    tl.appendChild(loading('Loading the session…'));
    let filter = 'all';
    let data = null;
    let names = new Map();
    let keyMap = new Map();

    const filterSeg = segmented([['all', 'All events'], ['messages', 'Messages'], ['tool', 'Tool calls'], ['denied', 'Denied']], filter, (v) => { filter = v; paintTimeline(); }, 'tl-filter', 'Show');
    const jump = h('button', { type: 'button', class: 'btn btn-danger-ghost', testid: 'jump-denied', hidden: true }, icon('ban'), h('span', null, 'Jump to first denial'));
    jump.addEventListener('click', () => {
      const first = tl.querySelector('[data-decision="deny"]');
      if (first) { first.scrollIntoView({ behavior: 'smooth', block: 'center' }); first.classList.add('flash'); setTimeout(() => first.classList.remove('flash'), 1600); }
    });
    add(tools, filterSeg, jump);

    function paintStats() {
      const st = data.statistics || {};
      const first = toDate(st.first_event);
      const last = toDate(st.last_event);
      replace(stats,
        kpi('Events', num(st.total_events), { testid: 'stat-total' }),
        kpi('User', num(st.user_messages), { testid: 'stat-user' }),
        kpi('Assistant', num(st.assistant_messages), { testid: 'stat-assistant' }),
        kpi('Tool calls', num(st.tool_calls), { testid: 'stat-tools' }),
        kpi('Denied', num(st.denied), { testid: 'stat-denied', tone: st.denied ? 'danger' : '' }),
        kpi('Tokens', compact((st.input_tokens || 0) + (st.output_tokens || 0)), { testid: 'stat-tokens', sub: compact(st.input_tokens) + ' in · ' + compact(st.output_tokens) + ' out', title: num(st.input_tokens) + ' input · ' + num(st.output_tokens) + ' output tokens' }),
        kpi('Cost', usd(st.cost_usd), { testid: 'stat-cost' }),
        kpi('First event', first ? hmsFmt.format(first) : '—', { testid: 'stat-first', tone: 'time', sub: first ? dayFmt.format(first) + ' · ' + relText(first) : '', title: first ? absText(first) + ' · ' + first.toISOString() : '' }),
        kpi('Last event', last ? hmsFmt.format(last) : '—', { testid: 'stat-last', tone: 'time', sub: first && last ? 'lasted ' + fmtDuration(last - first) : '', title: last ? absText(last) + ' · ' + last.toISOString() : '' }));
      jump.hidden = !st.denied;
    }

    function decisionBadges(d) {
      if (!d) return null;
      if (d.result === 'deny') {
        const pols = Array.isArray(d.policies) ? d.policies : [];
        if (!pols.length) {
          return h('span', { class: 'badge badge-deny', testid: 'denied-badge', title: d.action || '' }, icon('ban'), 'Denied' + (d.action ? ' · ' + d.action : ''));
        }
        return pols.map((pid) => h('a', {
          href: '#/policies/' + enc(String(pid)), class: 'badge badge-deny', testid: 'denied-badge', 'data-policy-id': String(pid),
          title: 'Open policy ' + pid + (d.action ? ' (action ' + d.action + ')' : ''),
        }, icon('ban'), 'Denied by policy ', h('span', { class: 'mono' }, String(pid)), names.get(pid) ? h('span', { class: 'badge-sub' }, ' · ' + names.get(pid)) : null));
      }
      return h('span', { class: 'badge badge-allow', testid: 'allowed-badge', title: (d.policies || []).join(', ') }, icon('check'), 'Allowed' + (d.action ? ' · ' + d.action : ''));
    }

    function eventItem(ev, i) {
      const type = TYPE_LABEL[ev.type] ? ev.type : 'system';
      const denied = ev.decision && ev.decision.result === 'deny';
      const meta = ev.metadata && typeof ev.metadata === 'object' && Object.keys(ev.metadata).length ? ev.metadata : null;
      const hasArgs = ev.tool_args !== null && ev.tool_args !== undefined;
      const tokens = (ev.input_tokens || 0) + (ev.output_tokens || 0);
      return h('li', { class: ['tl-item', 'tl-t-' + type, denied ? 'tl-denied' : ''], testid: 'timeline-item', 'data-type': type, 'data-event-id': ev.id != null ? String(ev.id) : null, 'data-decision': ev.decision ? ev.decision.result : null },
        h('div', { class: 'tl-icon', title: TYPE_LABEL[type] }, icon(denied ? 'ban' : type)),
        h('div', { class: 'tl-body' },
          h('div', { class: 'tl-head' },
            h('span', { class: 'tl-type' }, TYPE_LABEL[type]),
            h('span', { class: 'tl-index muted' }, '#' + (i + 1)),
            timeEl(ev.created_at),
            ev.principal_id ? h('span', { class: 'tl-meta' }, actorEl(ev.principal_id, keyMap)) : null,
            ev.model ? h('span', { class: 'tl-meta mono' }, ev.model) : null,
            tokens ? h('span', { class: 'tl-meta', title: num(ev.input_tokens) + ' in · ' + num(ev.output_tokens) + ' out' }, compact(tokens) + ' tok') : null,
            ev.cost_usd ? h('span', { class: 'tl-meta' }, usd(ev.cost_usd)) : null,
            h('span', { class: 'tl-spacer' }),
            decisionBadges(ev.decision)),
          ev.tool_name ? h('div', { class: 'tl-toolname' }, icon('tool'), h('span', { class: 'mono', testid: 'tool-name' }, ev.tool_name)) : null,
          ev.message ? h('div', { class: 'tl-msg', testid: 'event-message' }, ev.message) : null,
          hasArgs ? h('pre', { class: 'code', testid: 'tool-args' }, prettyJSON(ev.tool_args)) : null,
          meta || ev.request_id ? h('details', { class: 'tl-details' },
            h('summary', null, 'Details'),
            ev.request_id ? h('div', { class: 'small' }, 'Request ID ', mono(ev.request_id)) : null,
            meta ? h('pre', { class: 'code', testid: 'event-metadata' }, prettyJSON(meta)) : null) : null));
    }

    function paintTimeline() {
      const evs = (data.events || []).map((e, i) => [e, i]).filter(([e]) =>
        filter === 'all' || (filter === 'messages' && (e.type === 'user' || e.type === 'assistant')) ||
        (filter === 'tool' && e.type === 'tool') || (filter === 'denied' && e.decision && e.decision.result === 'deny'));
      if (!evs.length) {
        replace(tl, emptyState(data.events && data.events.length ? 'Nothing matches this filter' : 'No events', data.events && data.events.length ? '' : 'This session has no recorded events (capture may be off).'));
        return;
      }
      replace(tl, evs.map(([e, i]) => eventItem(e, i)));
    }

    // Events come in pages of up to 1000, oldest first.
    let cursor = null;
    let paged = false;
    const more = h('button', { type: 'button', class: 'btn', testid: 'timeline-more', hidden: true }, 'Load later events');
    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        const r = await api('GET', '/v1/sessions/' + enc(id), { query: { cursor } });
        if (!ctx.alive()) return;
        paged = true;
        data.events = (data.events || []).concat(r.events || []);
        cursor = r.next_cursor || null;
        more.hidden = !cursor;
        paintTimeline();
      } catch (e) {
        showError(e, 'Loading more events');
      } finally { more.disabled = false; }
    });
    el.appendChild(h('div', { class: 'more-row' }, more));

    async function load() {
      const r = await api('GET', '/v1/sessions/' + enc(id));
      if (!ctx.alive()) return;
      if (paged) {
        // Later pages are shown: keep them, refresh the figures only.
        data.statistics = r.statistics;
        paintStats();
        return;
      }
      const changed = !data || (r.events || []).length !== (data.events || []).length;
      data = r;
      cursor = r.next_cursor || null;
      more.hidden = !cursor;
      paintStats();
      if (changed) paintTimeline();
    }

    try {
      [names, keyMap] = await Promise.all([policyNames(), keyNames()]);
    } catch (e) { /* names are a nicety */ }
    try {
      await load();
    } catch (e) {
      if (e.status === 404) {
        replace(tl, emptyState('Session not found', 'No session with this id in ' + tenantLabel(currentTenantId()) + '.'));
        return;
      }
      throw e;
    }
    ctx.onRefresh(load);
  }

  // ---------------------------------------------------------------- page: models
  const WINDOWS = [['15m', '15 min'], ['1h', '1 h'], ['6h', '6 h'], ['24h', '24 h'], ['7d', '7 d'], ['30d', '30 d']];

  /** A round top for an axis of four steps: each step is 1, 2, 2.5 or 5 × 10^k (whole for counts). */
  function niceMax(v, whole) {
    if (!(v > 0)) return whole ? 4 : 1;
    const raw = v / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = 10 * p;
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) { step = m * p; break; }
    if (whole) step = Math.max(1, Math.ceil(step));
    return step * 4;
  }

  /** An SVG chart (bars or a line) of series[key], with axes, labels and hover titles. */
  function chart(o) {
    const W = 520;
    const H = 190;
    const m = { l: 54, r: 10, t: 12, b: 26 };
    const pw = W - m.l - m.r;
    const ph = H - m.t - m.b;
    const series = o.series || [];
    const vals = series.map((p) => (p[o.key] == null ? null : Number(p[o.key])));
    const present = vals.filter((v) => v != null && isFinite(v));
    const max = niceMax(present.length ? Math.max(...present) : 0, o.whole);
    const n = Math.max(1, series.length);
    const step = pw / n;
    const x = (i) => m.l + i * step;
    const y = (v) => m.t + ph - (v / max) * ph;
    const root = s('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart chart-' + o.kind, role: 'img', 'aria-label': o.label, testid: o.testid });
    root.appendChild(s('title', null, o.label));
    const grid = s('g', { class: 'grid' });
    for (let k = 0; k <= 4; k++) {
      const v = (max * k) / 4;
      const yy = y(v);
      grid.appendChild(s('line', { x1: m.l, x2: W - m.r, y1: yy, y2: yy, class: k === 0 ? 'axis' : 'gridline' }));
      grid.appendChild(s('text', { x: m.l - 6, y: yy + 3.5, class: 'tick', 'text-anchor': 'end' }, o.fmt(v, true)));
    }
    grid.appendChild(s('line', { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, class: 'axis' }));
    root.appendChild(grid);
    const span = series.length > 1 ? toDate(series[series.length - 1].from) - toDate(series[0].from) : 0;
    const tfmt = (d) => (span > 36 * 3600e3 ? shortFmt.format(d) : hmFmt.format(d));
    const labels = s('g', { class: 'xlabels' });
    if (series.length) {
      const idxs = [0, Math.floor((series.length - 1) / 2), series.length - 1].filter((v, i, a) => a.indexOf(v) === i);
      for (const i of idxs) {
        const d = toDate(series[i].from);
        if (!d) continue;
        const anchor = i === 0 ? 'start' : (i === series.length - 1 ? 'end' : 'middle');
        const xx = i === series.length - 1 ? x(i) + step : (i === 0 ? x(i) : x(i) + step / 2);
        labels.appendChild(s('text', { x: xx, y: H - 8, class: 'tick', 'text-anchor': anchor }, tfmt(d)));
      }
    }
    root.appendChild(labels);
    const tipOf = (i) => {
      const d = toDate(series[i].from);
      return (d ? absText(d) : '') + ' — ' + o.label + ': ' + (vals[i] == null ? 'no data' : o.fmt(vals[i], false));
    };
    if (!present.length) {
      root.appendChild(s('text', { x: m.l + pw / 2, y: m.t + ph / 2, class: 'chart-empty', 'text-anchor': 'middle' }, 'No traffic in this window'));
    } else if (o.kind === 'bar') {
      const g = s('g', { class: 'bars' });
      const bw = Math.max(1, step * 0.72);
      vals.forEach((v, i) => {
        const hv = v == null ? 0 : v;
        const top = y(hv);
        g.appendChild(s('rect', { x: x(i) + (step - bw) / 2, y: top, width: bw, height: Math.max(hv > 0 ? 1 : 0, m.t + ph - top), class: 'bar-rect' }, s('title', null, tipOf(i))));
      });
      root.appendChild(g);
    } else {
      let d = '';
      let pen = false;
      vals.forEach((v, i) => {
        if (v == null) { pen = false; return; }
        d += (pen ? 'L' : 'M') + (x(i) + step / 2).toFixed(1) + ' ' + y(v).toFixed(1) + ' ';
        pen = true;
      });
      root.appendChild(s('path', { d: d.trim(), class: 'line-path' }));
      const g = s('g', { class: 'points' });
      vals.forEach((v, i) => {
        if (v != null) g.appendChild(s('circle', { cx: x(i) + step / 2, cy: y(v), r: 2.4, class: 'line-point' }, s('title', null, tipOf(i))));
      });
      root.appendChild(g);
    }
    // Hover columns so every step has a tooltip, bars or not.
    const hov = s('g', { class: 'hover-cols' });
    series.forEach((p, i) => hov.appendChild(s('rect', { x: x(i), y: m.t, width: step, height: ph, class: 'hover-col' }, s('title', null, tipOf(i)))));
    root.appendChild(hov);
    return root;
  }

  async function pageModels(el, ctx) {
    setTitle('Models');
    if (!requireTenant(el, 'Model profiles')) return;
    let win = sessionStorage.getItem('portcullis.window') || '1h';
    if (!WINDOWS.some((w) => w[0] === win)) win = '1h';
    const grid = h('div', { class: 'model-grid', testid: 'model-list', 'aria-busy': 'true' }, loading('Loading model profiles…'));
    const seg = segmented(WINDOWS, win, (v) => { win = v; sessionStorage.setItem('portcullis.window', v); load(); }, 'window', 'Window');
    add(el, pageHeader('Models', 'Model profiles of ' + tenantLabel(currentTenantId()) + ' with live latency, success and cost from the traffic through the gateway.', seg), grid);
    let profiles = null;

    function modelCard(p, res) {
      const mm = res && res.ok ? res.value : null;
      const err = res && !res.ok ? res.error : null;
      const body = [];
      if (err) body.push(h('div', { class: 'callout callout-warn' }, icon('alert'), 'Metrics unavailable: ' + (err.detail || err.title)));
      else if (!mm) body.push(loading('Loading metrics…'));
      else {
        const sr = mm.success_rate;
        body.push(h('div', { class: 'kpis kpis-compact' },
          kpi('Requests', num(mm.requests), { testid: 'model-requests' }),
          kpi('Success', pct(sr), { tone: sr != null && sr < 0.95 ? 'danger' : '', testid: 'model-success', sub: mm.status_4xx + ' 4xx · ' + mm.status_5xx + ' 5xx' }),
          kpi('p95 latency', msFmt(mm.latency_ms && mm.latency_ms.p95), { testid: 'model-p95', sub: 'p50 ' + msFmt(mm.latency_ms && mm.latency_ms.p50).replace(' ms', '') + ' · p99 ' + msFmt(mm.latency_ms && mm.latency_ms.p99).replace(' ms', ''), title: 'Upper bound of a histogram bucket: at most 10% above the true value' }),
          kpi('Cost / 1K tok', usd(mm.cost_per_1k_tokens_usd), { testid: 'model-cost-1k' }),
          kpi('Cost', usd(mm.cost_usd), { sub: compact(mm.input_tokens + mm.output_tokens) + ' tokens' })));
        body.push(h('div', { class: 'charts' },
          h('figure', { class: 'chart-fig' }, h('figcaption', null, 'Requests'),
            chart({ series: mm.series, key: 'requests', kind: 'bar', whole: true, label: 'Requests', testid: 'chart-requests', fmt: (v, tick) => (tick ? compact(Math.round(v)) : num(v)) })),
          h('figure', { class: 'chart-fig' }, h('figcaption', null, 'p95 latency'),
            chart({ series: mm.series, key: 'p95_latency_ms', kind: 'line', label: 'p95 latency', testid: 'chart-latency', fmt: (v) => msFmt(v) }))));
      }
      return h('article', { class: 'card model-card', testid: 'model-card', 'data-profile-id': p.id },
        h('div', { class: 'model-head' },
          h('div', null,
            h('h3', { class: 'model-name', testid: 'model-name' }, p.model),
            h('div', { class: 'model-sub' }, pill(p.role, 'info'), ' ', pill(p.deployment_mode, 'muted'), ' ', mono(p.id, { class: 'mono small' }))),
          h('div', { class: 'model-prices', title: 'USD per 1 000 tokens' },
            h('div', null, h('span', { class: 'muted' }, 'in '), usd(p.input_price_per_1k)),
            h('div', null, h('span', { class: 'muted' }, 'out '), usd(p.output_price_per_1k)),
            h('div', { class: 'muted small' }, 'per 1K tokens · temp ' + p.temperature))),
        h('div', { class: 'model-url muted small', title: 'Upstream base URL (not a link)' }, p.base_url),
        body);
    }

    async function load() {
      grid.setAttribute('aria-busy', 'true');
      const r = await api('GET', '/v1/model-profiles');
      if (!ctx.alive()) return;
      profiles = (r && r.items) || [];
      if (!profiles.length) {
        grid.setAttribute('aria-busy', 'false');
        replace(grid, emptyState('No model profiles', 'Create one with the API or `portcullis model-profile create`: a role, a deployment mode, the model and its prices.'));
        return;
      }
      const w = win;
      const res = await pool(profiles, 4, (p) => api('GET', '/v1/model-profiles/' + enc(p.id) + '/metrics', { query: { window: w } }));
      if (!ctx.alive() || w !== win) return;
      replace(grid, profiles.map((p, i) => modelCard(p, res[i])));
      grid.setAttribute('aria-busy', 'false');
    }
    await load();
    // The figures are per minute: refreshing faster than every 30 s shows nothing new.
    ctx.onRefresh(load, { every: 30000 });
  }

  // ---------------------------------------------------------------- page: audit
  const AUDIT_ACTIONS = ['auth.login', 'auth.logout', 'auth.whoami', 'tenant.create', 'tenant.suspend', 'tenant.resume', 'tenant.limits.update',
    'key.create', 'key.revoke', 'key.rotate', 'user.create', 'policy.create', 'policy.update', 'policy.delete', 'policy.simulate',
    'model_profile.create', 'conversation.send', 'tool.request', 'cross_tenant_access_blocked', 'csrf.rejected', 'security_alert', 'audit.query'];

  async function pageAudit(el, ctx) {
    setTitle('Audit');
    const op = isOperator();
    const tid = currentTenantId();
    const f = { user_id: '', action: '', result: '', from: '', to: '' };
    const user = h('input', { type: 'text', class: 'input', placeholder: 'key:… or user:…', testid: 'audit-user' });
    const action = h('input', { type: 'text', class: 'input', placeholder: 'e.g. key.create', list: 'audit-actions', testid: 'audit-action' });
    const actionList = h('datalist', { id: 'audit-actions' }, AUDIT_ACTIONS.map((a) => h('option', { value: a })));
    const result = select([['', 'Any result'], ['success', 'success'], ['denied', 'denied'], ['failure', 'failure']], '', { testid: 'audit-result' });
    const from = h('input', { type: 'datetime-local', class: 'input', testid: 'audit-from' });
    const to = h('input', { type: 'datetime-local', class: 'input', testid: 'audit-to' });
    const apply = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'audit-apply' }, 'Apply');
    const reset = h('button', { type: 'button', class: 'btn btn-ghost', testid: 'audit-reset' }, 'Reset');
    const form = h('form', { class: 'card form-inline filters', testid: 'audit-filters' },
      field('Actor', user), field('Action', action), actionList, field('Result', result), field('From', from), field('To', to),
      h('div', { class: 'form-actions' }, apply, reset));
    const listEl = h('div', { class: 'card card-flush', testid: 'audit-list', 'aria-busy': 'true' }, loading('Loading audit events…'));
    const detail = h('aside', { class: 'card audit-detail', testid: 'audit-detail', hidden: true });
    const pager = h('div', { class: 'pager' });
    const verify = op ? verifyPanel() : null;
    const scope = op ? (tid ? 'Events of ' + tenantLabel(tid) + '.' : 'Events of every tenant and of the platform.') : 'Events of your tenant.';
    add(el, pageHeader('Audit', scope + ' Newest first; each row is one hash-chained record.'), verify, form,
      h('div', { class: 'split' }, h('div', { class: 'split-main' }, listEl, pager), detail));
    let items = [];
    let names = new Map();
    let cursors = [null];
    let page = 0;
    let next = null;
    let selected = null;

    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const fd = (inp) => { const d = inp.value ? new Date(inp.value) : null; return d && !isNaN(d) ? d.toISOString() : ''; };
      Object.assign(f, { user_id: user.value.trim(), action: action.value.trim(), result: result.value, from: fd(from), to: fd(to) });
      cursors = [null];
      page = 0;
      load();
    });
    reset.addEventListener('click', () => {
      user.value = ''; action.value = ''; result.value = ''; from.value = ''; to.value = '';
      Object.assign(f, { user_id: '', action: '', result: '', from: '', to: '' });
      cursors = [null];
      page = 0;
      load();
    });

    function keyOf(r) { return r.writer_id + ':' + r.seq; }

    /** A reason naming policies (`pol_…`) links each to the policy. */
    function reasonEl(reason) {
      return reason.split(/(\bpol_[A-Za-z0-9_]{1,64}\b)/).filter(Boolean).map((part) => (/^pol_[A-Za-z0-9_]+$/.test(part) && tid
        ? h('a', { href: '#/policies/' + enc(part), class: 'link mono small', title: 'Open policy ' + part }, part) : part));
    }
    function closeDetail() {
      detail.hidden = true;
      selected = null;
      for (const tr of listEl.querySelectorAll('tr.selected')) tr.classList.remove('selected');
    }
    const onKey = (ev) => { if (ev.key === 'Escape' && !detail.hidden && !document.querySelector('dialog[open]')) closeDetail(); };
    document.addEventListener('keydown', onKey);
    ctx.onCleanup(() => document.removeEventListener('keydown', onKey));

    function showDetail(r) {
      selected = keyOf(r);
      for (const tr of listEl.querySelectorAll('tr.selected')) tr.classList.remove('selected');
      const row = Array.from(listEl.querySelectorAll('tr[data-key]')).find((tr) => tr.getAttribute('data-key') === selected);
      if (row) row.classList.add('selected');
      const json = prettyJSON(r);
      const close = h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', testid: 'audit-detail-close' }, icon('x'));
      close.addEventListener('click', closeDetail);
      replace(detail,
        h('div', { class: 'card-head' }, h('h3', null, r.action), close),
        h('div', { class: 'card-body' },
          h('dl', { class: 'kv' },
            h('dt', null, 'Time'), h('dd', null, timeEl(r.timestamp), ' ', h('span', { class: 'muted small' }, r.timestamp)),
            h('dt', null, 'Result'), h('dd', null, pill(r.result)),
            r.reason ? [h('dt', null, 'Reason'), h('dd', null, reasonEl(r.reason))] : null,
            h('dt', null, 'Actor'), h('dd', null, names.get(r.user_id) ? [names.get(r.user_id), ' ', h('span', { class: 'mono small muted' }, r.user_id)] : (r.user_id || '—')),
            h('dt', null, 'Tenant'), h('dd', null, r.tenant_id ? tenantLabel(r.tenant_id) : '— (platform)'),
            h('dt', null, 'Resource'), h('dd', null, r.resource_type ? r.resource_type + (r.resource_id ? ' ' + r.resource_id : '') : '—'),
            h('dt', null, 'Request ID'), h('dd', null, r.request_id ? mono(r.request_id) : '—'),
            h('dt', null, 'Chain'), h('dd', null, mono(r.writer_id + ' #' + r.seq))),
          h('div', { class: 'detail-json-head' }, h('span', null, 'Full record'), copyButton(json, { label: 'Copy JSON' })),
          h('pre', { class: 'code code-tall', testid: 'audit-detail-json' }, json)));
      detail.hidden = false;
    }

    function paint() {
      listEl.setAttribute('aria-busy', 'false');
      if (!items.length) {
        replace(listEl, emptyState('No audit events', 'Nothing matches these filters.'));
      } else {
        replace(listEl, h('div', { class: 'table-wrap' }, h('table', { class: 'table table-click', testid: 'audit-table' },
          h('thead', null, h('tr', null, ['Time', 'Actor', 'Action', 'Result', 'Resource', op && !tid ? 'Tenant' : null, 'Request ID'].filter(Boolean).map((c) => h('th', null, c)))),
          h('tbody', null, items.map((r) => {
            const tr = h('tr', { testid: 'audit-row', 'data-key': keyOf(r), class: keyOf(r) === selected ? 'selected' : '', tabindex: '0' },
              h('td', { class: 'nowrap' }, timeEl(r.timestamp)),
              h('td', { class: 'truncate' }, actorEl(r.user_id, names)),
              h('td', { class: 'nowrap' }, h('span', { class: 'mono small' }, r.action)),
              h('td', null, pill(r.result), r.reason ? h('div', { class: 'cell-sub truncate', title: r.reason }, reasonEl(r.reason)) : null),
              h('td', { class: 'truncate', title: (r.resource_type || '') + ' ' + (r.resource_id || '') },
                r.resource_type ? [h('span', { class: 'muted' }, r.resource_type), r.resource_id ? ' ' : '', r.resource_id ? h('span', { class: 'mono small' }, r.resource_id) : null] : h('span', { class: 'muted' }, '—')),
              op && !tid ? h('td', { class: 'truncate' }, r.tenant_id ? tenantLabel(r.tenant_id) : h('span', { class: 'muted' }, 'platform')) : null,
              h('td', null, r.request_id ? h('span', { class: 'mono small rid', title: r.request_id }, r.request_id) : h('span', { class: 'muted' }, '—')));
            tr.addEventListener('click', () => showDetail(r));
            tr.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') showDetail(r); });
            return tr;
          })))));
      }
      const newer = h('button', { type: 'button', class: 'btn btn-sm', testid: 'audit-newer', disabled: page === 0 }, 'Newer');
      const older = h('button', { type: 'button', class: 'btn btn-sm', testid: 'audit-older', disabled: !next }, 'Older');
      newer.addEventListener('click', () => { page--; load(); });
      older.addEventListener('click', () => { cursors[page + 1] = next; page++; load(); });
      replace(pager, h('span', { class: 'muted small' }, 'Page ' + (page + 1) + ' · ' + items.length + ' events'), newer, older);
    }

    async function load() {
      listEl.setAttribute('aria-busy', 'true');
      const [r, n] = await Promise.all([
        api('GET', '/v1/audit', { query: Object.assign({ limit: 50, cursor: cursors[page] || undefined }, f) }),
        keyNames(),
      ]);
      names = n;
      if (!ctx.alive()) return;
      items = (r && r.items) || [];
      next = r && r.next_cursor ? r.next_cursor : null;
      paint();
    }
    await load();
    // Each query is itself audited: refreshing on a timer would fill the log with the page's own reads.
    ctx.onRefresh(() => load(), { manual: true });
  }

  function verifyPanel() {
    const btn = h('button', { type: 'button', class: 'btn btn-primary', testid: 'verify-button' }, icon('shield'), h('span', null, 'Verify chain'));
    const out = h('div', { class: 'verify-out', testid: 'verify-result' },
      h('span', { class: 'muted' }, 'Checks every writer’s hash chain and its signed checkpoints, like `portcullis audit verify`.'));
    btn.addEventListener('click', async () => {
      btn.disabled = true;
      replace(out, loading('Verifying the audit chain…'));
      try {
        const r = await api('POST', '/v1/audit/verify', { tenant: false });
        const ok = !!r.ok;
        const problems = Array.isArray(r.problems) ? r.problems : [];
        replace(out,
          h('div', { class: ['verify-status', ok ? 'is-ok' : 'is-broken'], testid: 'verify-status', 'data-ok': String(ok) },
            icon(ok ? 'check' : 'alert'), h('strong', null, ok ? 'Chain intact' : 'Chain broken'),
            h('span', { class: 'muted' }, ' · checked ', timeEl(r.checked_at))),
          h('table', { class: 'table table-compact', testid: 'verify-writers' },
            h('thead', null, h('tr', null, ['Writer', 'Records', 'Head seq', 'Last signed checkpoint', 'Checkpoint time'].map((c) => h('th', null, c)))),
            h('tbody', null, (r.writers || []).map((w) => h('tr', { testid: 'verify-writer' },
              h('td', null, mono(String(w.writer_id))),
              h('td', { class: 'num' }, num(w.records)),
              h('td', { class: 'num' }, w.head_seq == null ? '—' : num(w.head_seq)),
              h('td', { class: 'num' }, w.last_checkpoint_seq == null ? h('span', { class: 'muted' }, 'none') : num(w.last_checkpoint_seq)),
              h('td', null, timeEl(w.last_checkpoint_at, { none: 'never' })))))),
          problems.length ? h('div', { class: 'verify-problems', testid: 'verify-problems' },
            h('div', { class: 'strong' }, problems.length + ' problem' + (problems.length > 1 ? 's' : '')),
            h('ul', null, problems.map((p) => h('li', null, typeof p === 'string' ? p : (p && (p.message || p.detail)) ? [p.writer_id ? mono(String(p.writer_id)) : null, ' ', p.seq != null ? '#' + p.seq + ' ' : '', String(p.message || p.detail)] : prettyJSON(p)))))
            : h('div', { class: 'muted small' }, 'No problems found.'));
      } catch (e) {
        replace(out, h('span', { class: 'muted' }, 'Verification could not run.'));
        showError(e, 'Verifying the audit chain');
      } finally {
        btn.disabled = false;
      }
    });
    return card('Chain verification', out, { testid: 'verify-panel', actions: btn, cls: 'verify-card' });
  }

  // ---------------------------------------------------------------- page: policies
  async function pagePolicies(el, ctx) {
    setTitle('Policies');
    if (!requireTenant(el, 'Policies')) return;
    const newBtn = canWrite() ? h('a', { href: '#/policies/new', class: 'btn btn-primary', testid: 'policy-new' }, icon('plus'), h('span', null, 'New policy')) : null;
    const listEl = h('div', { class: 'card card-flush', testid: 'policy-list', 'aria-busy': 'true' }, loading('Loading policies…'));
    add(el, pageHeader('Policies', 'Cedar policies of ' + tenantLabel(currentTenantId()) + ' on top of the built-in RBAC. Each save is validated and versioned; decisions name the policy that made them.', newBtn), listEl);
    const r = await api('GET', '/v1/policies');
    if (!ctx.alive()) return;
    const items = (r && r.items) || [];
    state.policyNames = new Map(items.map((p) => [p.id, p.name]));
    listEl.setAttribute('aria-busy', 'false');
    if (!items.length) {
      replace(listEl, emptyState('No policies', 'Without tenant policies, the built-in RBAC decides alone. Create one with “New policy”.'));
      return;
    }
    replace(listEl, h('table', { class: 'table table-click', testid: 'policy-table' },
      h('thead', null, h('tr', null, ['Name', 'ID', 'Status', 'Version', 'Updated', 'Description'].map((c) => h('th', null, c)))),
      h('tbody', null, items.map((p) => {
        const href = '#/policies/' + enc(p.id);
        const tr = h('tr', { testid: 'policy-row', 'data-policy-id': p.id, tabindex: '0' },
          h('td', null, h('a', { href, class: 'link strong', testid: 'policy-link' }, p.name)),
          h('td', null, mono(p.id)),
          h('td', null, pill(p.enabled ? 'enabled' : 'disabled')),
          h('td', { class: 'num' }, 'v' + p.version),
          h('td', null, timeEl(p.updated_at), h('div', { class: 'cell-sub' }, p.updated_by)),
          h('td', { class: 'truncate wide', title: p.description, testid: 'policy-description' }, p.description || h('span', { class: 'muted' }, '—')));
        tr.addEventListener('click', (ev) => { if (!ev.target.closest('a')) location.hash = href; });
        tr.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') location.hash = href; });
        return tr;
      }))));
  }

  const CEDAR_TEMPLATE = 'forbid (\n  principal,\n  action == Portcullis::Action::"tool.request",\n  resource == Portcullis::Tool::"shell"\n) unless { principal.role == "admin" };\n';

  /** Character index in text of a problem (byte offset when given, else line/column). */
  function problemRange(text, p) {
    if (p.offset != null) {
      const enc8 = new TextEncoder();
      let bytes = 0;
      let start = -1;
      let end = -1;
      let i = 0;
      for (const ch of text) {
        if (start < 0 && bytes >= p.offset) start = i;
        if (start >= 0 && end < 0 && bytes >= p.offset + (p.length || 1)) end = i;
        bytes += enc8.encode(ch).length;
        i += ch.length;
      }
      if (start < 0) start = text.length;
      if (end < 0) end = text.length;
      return [start, Math.max(start, end)];
    }
    if (p.line != null) {
      const lines = text.split('\n');
      let idx = 0;
      for (let l = 0; l < p.line - 1 && l < lines.length; l++) idx += lines[l].length + 1;
      idx += Math.max(0, (p.column || 1) - 1);
      return [Math.min(idx, text.length), Math.min(idx + 1, text.length)];
    }
    return null;
  }

  function diffView(diff) {
    if (!diff) return h('div', { class: 'muted small' }, 'No text change in this version.');
    return h('pre', { class: 'code diff', testid: 'policy-diff' }, diff.replace(/\n$/, '').split('\n').map((line) => {
      const cls = line.startsWith('+++') || line.startsWith('---') ? 'd-file' : line.startsWith('@@') ? 'd-hunk' : line.startsWith('+') ? 'd-add' : line.startsWith('-') ? 'd-del' : 'd-ctx';
      return h('span', { class: 'd-line ' + cls }, line + '\n');
    }));
  }

  async function pagePolicy(el, ctx, id) {
    setTitle('Policy');
    if (!requireTenant(el, 'Policies')) return;
    const isNew = id === 'new';
    let pol = null;
    let versions = [];
    let authors = new Map();
    const name = h('input', { type: 'text', class: 'input', required: true, maxlength: '128', testid: 'policy-name', placeholder: 'shell is for admins' });
    const desc = h('input', { type: 'text', class: 'input', testid: 'policy-description-input', placeholder: 'What this policy is for' });
    const enabled = h('input', { type: 'checkbox', checked: true, testid: 'policy-enabled' });
    const gutter = h('pre', { class: 'gutter', 'aria-hidden': 'true' });
    const cedar = h('textarea', { class: 'cedar', spellcheck: 'false', autocomplete: 'off', wrap: 'off', testid: 'policy-cedar', 'aria-label': 'Cedar policy text', rows: '16' });
    const problemsEl = h('div', { class: 'problems', testid: 'policy-problems', hidden: true });
    const simEl = h('div', { testid: 'policy-simulation', hidden: true });
    const versionsEl = h('div', { testid: 'policy-versions' });
    const validateBtn = h('button', { type: 'button', class: 'btn', testid: 'policy-validate' }, icon('check'), h('span', null, 'Validate'));
    const simulateBtn = h('button', { type: 'button', class: 'btn', testid: 'policy-simulate' }, icon('refresh'), h('span', null, 'Simulate'));
    const saveBtn = h('button', { type: 'button', class: 'btn btn-primary', testid: 'policy-save', disabled: !canWrite(), title: canWrite() ? null : NEEDS_ADMIN }, isNew ? 'Create policy' : 'Save');
    const delBtn = isNew ? null : h('button', { type: 'button', class: 'btn btn-danger-ghost', testid: 'policy-delete', disabled: !canWrite(), title: canWrite() ? null : NEEDS_ADMIN }, 'Delete');
    const dirtyEl = h('span', { class: 'muted small', testid: 'policy-dirty' });
    let errLines = new Set();
    let saved = '';

    function paintGutter() {
      const n = cedar.value.split('\n').length;
      replace(gutter, Array.from({ length: n }, (_, i) => h('span', { class: errLines.has(i + 1) ? 'g-err' : '' }, String(i + 1) + '\n')));
      gutter.scrollTop = cedar.scrollTop;
    }
    function markDirty() {
      const cur = JSON.stringify([name.value, desc.value, enabled.checked, cedar.value]);
      dirtyEl.textContent = cur !== saved ? 'Unsaved changes' : '';
    }
    function snapshot() { saved = JSON.stringify([name.value, desc.value, enabled.checked, cedar.value]); markDirty(); }
    cedar.addEventListener('input', () => { paintGutter(); markDirty(); });
    cedar.addEventListener('scroll', () => { gutter.scrollTop = cedar.scrollTop; });
    cedar.addEventListener('keydown', (ev) => {
      if (ev.key === 'Tab' && !ev.shiftKey && !ev.ctrlKey && !ev.metaKey) {
        ev.preventDefault();
        cedar.setRangeText('  ', cedar.selectionStart, cedar.selectionEnd, 'end');
        paintGutter();
        markDirty();
      }
    });
    for (const i of [name, desc, enabled]) i.addEventListener('input', markDirty);
    for (const i of [name, desc, enabled]) i.addEventListener('change', markDirty);

    function showProblems(errors, heading) {
      errLines = new Set(errors.map((p) => p.line).filter((l) => l != null));
      paintGutter();
      problemsEl.hidden = false;
      replace(problemsEl,
        h('div', { class: 'problems-head' }, icon('alert'), heading || (errors.length + ' problem' + (errors.length === 1 ? '' : 's'))),
        h('ul', null, errors.map((p) => {
          const pos = p.line != null ? 'L' + p.line + ':' + (p.column != null ? p.column : 1) : '—';
          const li = h('li', { class: 'problem', testid: 'policy-problem', tabindex: '0', title: 'Show in the editor' },
            h('code', { class: 'mono pos', testid: 'problem-pos' }, pos),
            h('div', null, h('div', null, p.message), p.help ? h('div', { class: 'muted small' }, p.help) : null));
          const go = () => {
            const r = problemRange(cedar.value, p);
            if (!r) return;
            cedar.focus();
            cedar.setSelectionRange(r[0], r[1]);
            const line = cedar.value.slice(0, r[0]).split('\n').length;
            cedar.scrollTop = Math.max(0, (line - 4) * 19);
          };
          li.addEventListener('click', go);
          li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') go(); });
          return li;
        })));
    }
    function showValid(text, warnings) {
      errLines = new Set();
      paintGutter();
      problemsEl.hidden = false;
      replace(problemsEl, h('div', { class: 'valid', testid: 'policy-valid' }, icon('check'), text));
      if (warnings && warnings.length) problemsEl.appendChild(h('div', { class: 'warnings' }, h('div', { class: 'strong' }, 'Warnings'), h('ul', null, warnings.map((w) => h('li', null, (w.line != null ? 'L' + w.line + ':' + w.column + ' ' : '') + w.message)))));
    }
    function problemHeading(d) { return (d || '').replace(/^drafts\[0\] /, 'The policy '); }
    function draft() { return [{ id: pol ? pol.id : undefined, cedar: cedar.value }]; }

    async function runSim(limit) {
      return api('POST', '/v1/policies/simulate', { body: { drafts: draft(), limit } });
    }

    validateBtn.addEventListener('click', async () => {
      validateBtn.disabled = true;
      try {
        await runSim(1);
        showValid('Valid against the schema');
      } catch (e) {
        if (e.status === 400 && e.errors) showProblems(e.errors, problemHeading(e.detail));
        else showError(e, 'Validating');
      } finally { validateBtn.disabled = false; }
    });

    simulateBtn.addEventListener('click', async () => {
      simulateBtn.disabled = true;
      simEl.hidden = false;
      replace(simEl, card('Simulation', loading('Replaying recent decisions…')));
      try {
        const r = await runSim(1000);
        showValid('Valid against the schema');
        replace(simEl, card('Simulation: the last ' + num(r.evaluated) + ' recorded decisions replayed with this draft', [
          h('div', { class: 'kpis kpis-compact' },
            kpi('Evaluated', num(r.evaluated), { testid: 'sim-evaluated' }),
            kpi('Skipped', num(r.skipped), { title: 'Events that are not replayable decisions' }),
            kpi('Changed', num(r.changed), { testid: 'sim-changed', tone: r.changed ? 'warn' : '' }),
            kpi('Allow → deny', num(r.allow_to_deny), { tone: r.allow_to_deny ? 'danger' : '', testid: 'sim-allow-deny' }),
            kpi('Deny → allow', num(r.deny_to_allow), { tone: r.deny_to_allow ? 'warn' : '', testid: 'sim-deny-allow' })),
          (r.examples || []).length ? h('table', { class: 'table table-compact', testid: 'sim-examples' },
            h('thead', null, h('tr', null, ['Time', 'Principal', 'Action', 'Resource', 'Before', 'After'].map((c) => h('th', null, c)))),
            h('tbody', null, r.examples.map((x) => h('tr', null,
              h('td', null, timeEl(x.timestamp)),
              h('td', { class: 'truncate' }, x.principal, h('div', { class: 'cell-sub' }, x.role)),
              h('td', null, h('span', { class: 'mono small' }, x.action)),
              h('td', { class: 'truncate' }, x.resource_type ? x.resource_type + ' ' + (x.resource_id || '') : '—'),
              h('td', { title: (x.before.reasons || []).join(', ') }, pill(x.before.decision)),
              h('td', { title: (x.after.reasons || []).join(', ') }, pill(x.after.decision), h('div', { class: 'cell-sub truncate' }, (x.after.reasons || []).join(', ')))))))
            : h('div', { class: 'muted' }, r.changed ? '' : 'No recorded decision would change.'),
        ], { testid: 'sim-card' }));
      } catch (e) {
        simEl.hidden = true;
        if (e.status === 400 && e.errors) showProblems(e.errors, problemHeading(e.detail));
        else showError(e, 'Simulating');
      } finally { simulateBtn.disabled = false; }
    });

    saveBtn.addEventListener('click', async () => {
      if (!name.value.trim()) { name.focus(); return; }
      saveBtn.disabled = true;
      try {
        let r;
        if (isNew) {
          r = await api('POST', '/v1/policies', { body: { name: name.value.trim(), description: desc.value, cedar: cedar.value, enabled: enabled.checked } });
        } else {
          r = await api('PUT', '/v1/policies/' + enc(pol.id), { body: { name: name.value.trim(), description: desc.value, cedar: cedar.value, enabled: enabled.checked, version: pol.version } });
        }
        state.policyNames = null;
        toast('Policy saved (v' + r.version + ')' + (r.warnings && r.warnings.length ? ' with ' + r.warnings.length + ' warning(s)' : ''));
        if (isNew) { location.hash = '#/policies/' + enc(r.id); return; }
        pol = r;
        fill();
        showValid('Saved as version ' + r.version, r.warnings);
        await loadVersions();
      } catch (e) {
        if (e.status === 400 && e.errors) showProblems(e.errors, problemHeading(e.detail));
        else showError(e, 'Saving the policy');
      } finally { saveBtn.disabled = false; }
    });

    if (delBtn) {
      delBtn.addEventListener('click', async () => {
        const ok = await confirmDialog({ title: 'Delete policy?', message: 'Delete “' + pol.name + '”? It stops deciding at once; its history stays readable.', confirm: 'Delete', danger: true });
        if (!ok) return;
        try {
          await api('DELETE', '/v1/policies/' + enc(pol.id));
          state.policyNames = null;
          toast('Policy deleted');
          location.hash = '#/policies';
        } catch (e) { showError(e, 'Deleting the policy'); }
      });
    }

    function fill() {
      name.value = pol.name;
      desc.value = pol.description || '';
      enabled.checked = !!pol.enabled;
      cedar.value = pol.cedar;
      titleId.textContent = pol.id;
      titleName.textContent = pol.name;
      verPill.textContent = 'v' + pol.version;
      verPill.hidden = false;
      paintGutter();
      snapshot();
      setTitle('Policy · ' + pol.name);
    }

    function paintVersions(selectedV) {
      if (!versions.length) { replace(versionsEl, h('div', { class: 'muted small' }, isNew ? 'Versions appear after the first save.' : 'No history.')); return; }
      const cur = selectedV || versions[versions.length - 1].version;
      const v = versions.find((x) => x.version === cur) || versions[versions.length - 1];
      replace(versionsEl,
        h('ol', { class: 'versions' }, versions.slice().reverse().map((x) => {
          const li = h('li', { class: ['version', x.version === v.version ? 'active' : ''], testid: 'policy-version', tabindex: '0' },
            h('div', { class: 'version-top' }, h('strong', null, 'v' + x.version), pill(x.change, x.change === 'delete' ? 'danger' : x.change === 'create' ? 'ok' : 'info'), timeEl(x.changed_at)),
            h('div', { class: 'cell-sub truncate' }, actorEl(x.changed_by, authors)));
          li.addEventListener('click', () => paintVersions(x.version));
          li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') paintVersions(x.version); });
          return li;
        })),
        h('div', { class: 'version-diff' }, h('div', { class: 'small muted' }, 'Changes in v' + v.version + ' (' + v.change + ' by ' + (authors.get(v.changed_by) || v.changed_by) + ')'), diffView(v.diff)));
    }

    async function loadVersions() {
      if (isNew) { paintVersions(); return; }
      try {
        authors = await keyNames();
        const r = await api('GET', '/v1/policies/' + enc(id) + '/versions');
        versions = (r && r.items) || [];
      } catch (e) {
        if (e.status !== 404) throw e;
        versions = [];
      }
      if (ctx.alive()) paintVersions();
    }

    const titleName = h('span', { testid: 'policy-title' }, isNew ? 'New policy' : 'Policy');
    const titleId = h('code', { class: 'mono title-id', testid: 'policy-id' }, isNew ? '' : id);
    const verPill = h('span', { class: 'pill pill-info', hidden: true });
    const schemaEl = h('details', { class: 'schema' }, h('summary', null, 'Schema and built-in policies'));
    schemaEl.addEventListener('toggle', async () => {
      if (!schemaEl.open || schemaEl.dataset.loaded) return;
      schemaEl.dataset.loaded = '1';
      try {
        const sch = await api('GET', '/v1/policies/schema');
        add(schemaEl, h('div', { class: 'small muted' }, 'Schema'), h('pre', { class: 'code code-tall' }, sch.schema), h('div', { class: 'small muted' }, 'Built-in RBAC policies'), h('pre', { class: 'code code-tall' }, sch.builtin));
      } catch (e) { showError(e, 'Loading the schema'); }
    });

    add(el,
      h('div', { class: 'page-head' },
        h('div', null, h('a', { href: '#/policies', class: 'back-link' }, icon('back'), 'Policies'),
          h('h2', { class: 'page-title' }, titleName, ' ', verPill, ' ', titleId))),
      h('div', { class: 'editor-layout' },
        h('div', { class: 'editor-main' },
          card(null, [
            h('div', { class: 'form-grid' }, field('Name', name), field('Description', desc), h('label', { class: 'check' }, enabled, ' Enabled')),
            h('div', { class: 'editor', testid: 'policy-editor' }, gutter, cedar),
            h('div', { class: 'editor-actions' }, validateBtn, simulateBtn, h('span', { class: 'tl-spacer' }), dirtyEl, delBtn, saveBtn),
            problemsEl,
          ]),
          simEl,
          schemaEl),
        h('div', { class: 'editor-side' }, card('History', versionsEl, { testid: 'policy-history' }))));

    if (isNew) {
      cedar.value = CEDAR_TEMPLATE;
      enabled.checked = true;
      paintGutter();
      snapshot();
      paintVersions();
      setTitle('New policy');
      return;
    }
    try {
      pol = await api('GET', '/v1/policies/' + enc(id));
    } catch (e) {
      if (e.status !== 404) throw e;
    }
    if (!ctx.alive()) return;
    if (!pol) {
      titleName.textContent = 'Policy not found';
      add(problemsEl, h('div', { class: 'callout callout-warn', testid: 'policy-missing' }, icon('alert'), 'No policy ', mono(id), ' exists in ' + tenantLabel(currentTenantId()) + ' now. It may have been deleted (its history is shown if any) or be a built-in rule.'));
      problemsEl.hidden = false;
      for (const b of [saveBtn, validateBtn, simulateBtn, delBtn]) if (b) b.disabled = true;
      cedar.readOnly = true;
      await loadVersions();
      const last = versions[versions.length - 1];
      if (last) { cedar.value = last.cedar; name.value = last.name; desc.value = last.description; paintGutter(); }
      return;
    }
    fill();
    await loadVersions();
  }

  // ---------------------------------------------------------------- page: usage & limits
  const GROUPS = [['day', 'Day'], ['model', 'Model'], ['principal', 'Caller'], ['route', 'Route'], ['day,model', 'Day × model'], ['model,principal', 'Model × caller']];

  async function pageUsage(el, ctx) {
    setTitle('Usage & limits');
    if (!requireTenant(el, 'Usage and limits')) return;
    const tid = currentTenantId();
    const today = new Date();
    const from = h('input', { type: 'date', class: 'input', value: utcDay(new Date(today.getTime() - 6 * 86400e3)), testid: 'usage-from' });
    const to = h('input', { type: 'date', class: 'input', value: utcDay(today), testid: 'usage-to' });
    const group = select(GROUPS, 'day', { testid: 'usage-group' });
    const apply = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'usage-apply' }, 'Show');
    const form = h('form', { class: 'form-inline bare' }, field('From (UTC day)', from), field('To', to), field('Group by', group), h('div', { class: 'form-actions' }, apply));
    const tableEl = h('div', { testid: 'usage-report', 'aria-busy': 'true' }, loading('Loading usage…'));
    const limitsEl = h('div', null, loading('Loading limits…'));
    const captureEl = h('div', null, loading('Loading capture settings…'));
    add(el,
      pageHeader('Usage & limits', 'Traffic, tokens and cost of ' + tenantLabel(tid) + ', the limits in force, and what sessions record.'),
      card('Usage', [form, tableEl], { testid: 'usage-card' }),
      h('div', { class: 'two-col' },
        card('Effective limits', limitsEl, { testid: 'limits-card' }),
        card('Session capture', captureEl, { testid: 'capture-card' })));

    form.addEventListener('submit', (ev) => { ev.preventDefault(); loadUsage().catch((e) => showError(e, 'Loading usage')); });
    group.addEventListener('change', () => loadUsage().catch((e) => showError(e, 'Loading usage')));

    async function loadUsage() {
      tableEl.setAttribute('aria-busy', 'true');
      const [r, names] = await Promise.all([
        api('GET', '/v1/usage', { query: { from: from.value, to: to.value, group_by: group.value } }),
        keyNames(),
      ]);
      if (!ctx.alive()) return;
      const dims = r.group_by || [];
      const DIM = { day: 'Day', principal: 'Caller', model: 'Model', route: 'Route' };
      const maxCost = Math.max(0, ...(r.items || []).map((x) => x.cost_usd || 0));
      const row = (x, total) => h('tr', { class: total ? 'total-row' : '', testid: total ? 'usage-total' : 'usage-row' },
        dims.map((d, i) => h('td', { class: d === 'day' ? 'nowrap' : 'truncate', title: x[d] || '' },
          total ? (i === 0 ? 'Total' : '') : !x[d] ? h('span', { class: 'muted' }, '(none)') : d === 'principal' ? actorEl(x[d], names) : x[d])),
        h('td', { class: 'num' }, num(x.requests)),
        h('td', { class: 'num' }, num(x.status_2xx)),
        h('td', { class: 'num' }, x.status_4xx ? h('span', { class: 'warn-text' }, num(x.status_4xx)) : '0'),
        h('td', { class: 'num' }, x.status_5xx ? h('span', { class: 'danger-text' }, num(x.status_5xx)) : '0'),
        h('td', { class: 'num' }, compact(x.input_tokens)),
        h('td', { class: 'num' }, compact(x.output_tokens)),
        h('td', { class: 'num' }, msFmt(x.avg_latency_ms)),
        h('td', { class: 'num cost-cell' }, total || !maxCost ? null : (() => { const b = h('span', { class: 'cost-bar' }); b.style.width = ((x.cost_usd / maxCost) * 100).toFixed(1) + '%'; return b; })(), h('span', { class: 'cost-val' }, usd(x.cost_usd))));
      tableEl.setAttribute('aria-busy', 'false');
      if (!(r.items || []).length) {
        replace(tableEl, emptyState('No traffic in this range', 'Usage is counted for traffic through the gateway’s routes (' + r.from + ' to ' + r.to + ', UTC).'));
        return;
      }
      replace(tableEl, h('div', { class: 'table-wrap' }, h('table', { class: 'table', testid: 'usage-table' },
        h('thead', null, h('tr', null, dims.map((d) => h('th', null, DIM[d] || d)), ['Requests', '2xx', '4xx', '5xx', 'Input tok', 'Output tok', 'Avg latency', 'Cost'].map((c) => h('th', { class: 'num' }, c)))),
        h('tbody', null, r.items.map((x) => row(x, false))),
        dims.length ? h('tfoot', null, row(r.totals, true)) : null)));
    }

    const LIMITS = [
      ['rate_per_minute', 'Requests per minute', num],
      ['requests_per_day', 'Requests per day', num],
      ['concurrency', 'Concurrent requests', num],
      ['max_tokens_per_request', 'Max tokens per request', num],
      ['budget_usd_per_day', 'Budget per UTC day', (v) => (v == null ? 'none' : usd(v))],
      ['budget_usd_per_month', 'Budget per UTC month', (v) => (v == null ? 'none' : usd(v))],
    ];

    async function loadLimits() {
      const r = await api('GET', '/v1/tenants/' + enc(tid) + '/limits', { tenant: false });
      if (!ctx.alive()) return;
      const eff = r.effective || {};
      const ov = r.overrides || {};
      const editBtn = isOperator() ? h('button', { type: 'button', class: 'btn btn-sm', testid: 'limits-edit' }, 'Edit overrides') : null;
      replace(limitsEl,
        h('div', { class: 'limits-head' }, h('span', null, 'Tier ', pill(r.tier || '—', 'info')), h('span', { class: 'tl-spacer' }), editBtn),
        h('table', { class: 'table table-compact', testid: 'limits-table' }, h('tbody', null, LIMITS.map(([k, label, f]) => h('tr', null,
          h('th', { scope: 'row' }, label),
          h('td', { class: 'num strong' }, f(eff[k])),
          h('td', null, ov[k] != null ? pill('override', 'warn') : h('span', { class: 'muted small' }, k === 'max_tokens_per_request' ? 'tier' : 'tier default')))))));
      if (editBtn) editBtn.addEventListener('click', () => editLimits(ov));
    }

    function editLimits(ov) {
      const keys = ['rate_per_minute', 'requests_per_day', 'concurrency', 'budget_usd_per_day', 'budget_usd_per_month'];
      const inputs = {};
      const body = h('div', { class: 'form-grid' }, keys.map((k) => {
        inputs[k] = h('input', { type: 'number', class: 'input', min: '0', step: k.startsWith('budget') ? '0.01' : '1', value: ov[k] != null ? ov[k] : '', placeholder: 'tier default', testid: 'limit-' + k });
        return field(LIMITS.find((l) => l[0] === k)[1], inputs[k]);
      }));
      const save = h('button', { type: 'button', class: 'btn btn-primary', testid: 'limits-save' }, 'Save overrides');
      const cancel = h('button', { type: 'button', class: 'btn' }, 'Cancel');
      const m = modal({ title: 'Limit overrides for ' + tenantLabel(tid), testid: 'limits-dialog', body: [h('p', { class: 'muted small' }, 'Empty fields follow the tier. Saving replaces the whole set; running servers apply it within a second.'), body], actions: [cancel, save] });
      cancel.addEventListener('click', () => m.close());
      save.addEventListener('click', async () => {
        const out = {};
        for (const k of keys) {
          const v = inputs[k].value.trim();
          if (v !== '') out[k] = k.startsWith('budget') ? parseFloat(v) : parseInt(v, 10);
        }
        save.disabled = true;
        try {
          await api('PUT', '/v1/tenants/' + enc(tid) + '/limits', { body: out, tenant: false });
          m.close();
          toast('Limits saved');
          await loadLimits();
        } catch (e) {
          m.close();
          showError(e, 'Saving limits');
        }
      });
    }

    async function loadCapture() {
      let cfg;
      try {
        cfg = await api('GET', '/v1/session-settings');
      } catch (e) {
        if (e.status === 401) throw e;
        replace(captureEl, h('div', { class: 'muted' }, 'Capture settings unavailable: ' + (e.detail || e.title)));
        return;
      }
      if (!ctx.alive()) return;
      const modes = [
        ['full', 'Full content', 'Messages, tool names and arguments are stored, with credentials and the patterns below redacted.'],
        ['metadata', 'Metadata only', 'Event types, tool names, decisions, tokens and cost; no message text or arguments.'],
        ['off', 'Off', 'Nothing is captured from traffic (events appended through the API are still stored).'],
      ];
      const radios = modes.map(([v, label, hint]) => {
        const r = h('input', { type: 'radio', name: 'capture', value: v, checked: cfg.capture === v, testid: 'capture-' + v });
        return h('label', { class: 'radio-card' }, r, h('div', null, h('div', { class: 'strong' }, label), h('div', { class: 'muted small' }, hint)));
      });
      const patterns = h('textarea', { class: 'input mono', rows: '5', spellcheck: 'false', testid: 'capture-patterns', placeholder: 'e.g. sk-[A-Za-z0-9]{20,}' });
      patterns.value = (cfg.redact_patterns || []).join('\n');
      const patErr = h('div', { class: 'field-error', testid: 'capture-pattern-error', hidden: true });
      const save = h('button', { type: 'button', class: 'btn btn-primary', testid: 'capture-save', disabled: !canWrite(), title: canWrite() ? null : NEEDS_ADMIN }, 'Save capture settings');
      patterns.addEventListener('input', () => {
        const bad = patterns.value.split('\n').map((p) => p.trim()).filter(Boolean).filter((p) => { try { new RegExp(p); return false; } catch (e) { return true; } });
        patErr.hidden = !bad.length;
        patErr.textContent = bad.length ? 'Check these patterns (the server validates them): ' + bad.join(', ') : '';
      });
      save.addEventListener('click', async () => {
        const mode = (captureEl.querySelector('input[name=capture]:checked') || {}).value || cfg.capture;
        const pats = patterns.value.split('\n').map((p) => p.trim()).filter(Boolean);
        save.disabled = true;
        try {
          const r = await api('PUT', '/v1/session-settings', { body: { capture: mode, redact_patterns: pats } });
          cfg = r || { capture: mode, redact_patterns: pats };
          toast('Capture settings saved');
        } catch (e) {
          showError(e, 'Saving capture settings');
        } finally { save.disabled = false; }
      });
      replace(captureEl,
        h('div', { class: 'radio-group', role: 'radiogroup', 'aria-label': 'Capture mode', testid: 'capture-mode' }, radios),
        field('Redaction patterns: one regular expression per line; matches become [REDACTED] before storage, besides the built-in credential patterns', patterns),
        patErr,
        h('div', { class: 'form-actions' }, save));
    }

    const results = await Promise.allSettled([loadUsage(), loadLimits(), loadCapture()]);
    for (const r of results) if (r.status === 'rejected' && ctx.alive()) showError(r.reason, 'Loading usage and limits');
    ctx.onRefresh(() => loadUsage(), { every: 30000 });
  }

  // ---------------------------------------------------------------- boot
  window.addEventListener('hashchange', () => route());
  // '/' focuses the page's search or filter box, as in most consoles.
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== '/' || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    const box = document.querySelector('#content input[type=search], #content [data-testid=audit-user]');
    if (box) { ev.preventDefault(); box.focus(); }
  });
  setInterval(() => refreshTick(false), 5000);
  setInterval(() => { updateLive(); }, 1000);
  setInterval(tickTimes, 30000);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshTick(); });

  async function boot() {
    try {
      const sess = await api('GET', '/ui/session', { tenant: false });
      await startApp(sess);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) showLogin();
      else {
        showLogin();
        const err = document.querySelector('[data-testid="login-error"]');
        if (err) { err.textContent = 'Could not reach the server: ' + (e.detail || e.message); err.hidden = false; }
      }
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
