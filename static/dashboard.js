// pixelhub ops dashboard: vanilla JS, no dependencies.
// Every 2 s one poll cycle fetches stats, the history samples newer than the last one held, and the biggest
// backlogs, then redraws cards, chart and tables. The selected brand's definitions and deliveries refresh on
// their own 5 s loop. Hub data reaches the DOM only as text (textContent, setAttribute), never as HTML.
'use strict';
(() => {
const POLL_MS = 2000, DETAIL_MS = 5000, MAX_RETRY_MS = 10000, MIN = 60000;
// Readable on light and dark backgrounds; brands beyond eight reuse colours.
const PALETTE = ['#2f6fd6', '#e8731c', '#1f9d55', '#9b4dca', '#0e9aa7', '#d6336c', '#b88a00', '#5b6b7f'];
const STATUSES = ['queued', 'delivered', 'fired', 'failed', 'expired', 'cancelled', 'pending_retry', 'dropped'];

const S = {
  stats: null, backlogs: null,
  samples: [],        // history samples, oldest first, trimmed to the window
  lastAt: null,       // at_ms of the newest sample held: the next since_ms
  hubNow: null,       // now_ms of the last history answer: the chart's right edge
  windowMs: 15 * MIN,
  offset: 0,          // hub clock minus browser clock: ages are measured on the hub's clock
  polls: 0, failures: 0,
  brand: '',          // selected brand ('' = none)
  detailTimer: 0, detailSeq: 0,
  colors: new Map(),  // brand -> colour, assigned once so colours never shuffle
};

// ---------- helpers ----------
const $ = (sel) => document.querySelector(sel);
const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
const num = (v) => (isNum(v) ? v : 0);
const arr = (v) => (Array.isArray(v) ? v : []);
const pad = (n) => String(n).padStart(2, '0');
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

// el('td', {class, text, ...attributes}, ...children)
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v; else if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  e.append(...kids);
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}
// Write only on change, so a text selection survives refreshes.
function setText(node, v) { v = v == null ? '' : String(v); if (node.textContent !== v) node.textContent = v; }
function setAttr(node, k, v) { v = v == null ? '' : String(v); if (node.getAttribute(k) !== v) node.setAttribute(k, v); }
// Replace a node's children only when sig (a summary of what they show) changed.
function setKids(node, sig, ...kids) { if (node._sig !== sig) { node._sig = sig; node.replaceChildren(...kids); } }

function colorOf(id) {
  if (!S.colors.has(id)) S.colors.set(id, PALETTE[S.colors.size % PALETTE.length]);
  return S.colors.get(id);
}

// Seconds as 42 s, 7 min, 3 h 5 min, 2 d 4 h; '—' for none.
function fmtAge(sec) {
  if (!isNum(sec)) return '—';
  const s = Math.max(0, Math.floor(sec));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  const [big, unit, small, smallUnit] = s < 86400 ? [3600, 'h', 60, 'min'] : [86400, 'd', 3600, 'h'];
  const r = Math.floor((s % big) / small);
  return `${Math.floor(s / big)} ${unit}` + (r ? ` ${r} ${smallUnit}` : '');
}
const ageSec = (ms) => (isNum(ms) ? Math.max(0, Math.floor((Date.now() + S.offset - ms) / 1000)) : null);
const fmtClock = (ms) => { const d = new Date(ms); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };
// Local time, with the date when not today.
function fmtStamp(ms) {
  if (!isNum(ms)) return '—';
  const d = new Date(ms);
  return (d.toDateString() === new Date().toDateString() ? '' : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `) + fmtClock(ms);
}
const iso = (ms) => (isNum(ms) ? new Date(ms).toISOString() : '');

// A failing render step must not stop the others or the poll loop.
function safely(fn) { try { fn(); } catch (e) { console.warn('dashboard:', e); } }

// ---------- fetching ----------
// GET JSON; rejects with {status, code, message}: status 0 when the hub cannot be reached.
async function getJson(url) {
  let res, body = null;
  try { res = await fetch(url, { cache: 'no-store', credentials: 'same-origin' }); } catch (e) {
    throw { status: 0, code: 'unreachable', message: 'hub unreachable' };
  }
  try { body = await res.json(); } catch (e) { /* 5xx bodies are not JSON */ }
  if (!res.ok) {
    const err = (body && body.error) || {};
    throw { status: res.status, code: err.code || `http_${res.status}`, message: err.message || `HTTP ${res.status}` };
  }
  if (!body || typeof body !== 'object') throw { status: res.status, code: 'bad_body', message: `${url}: not JSON` };
  return body;
}
const failures = (results) => results.filter((r) => r.status === 'rejected').map((r) => r.reason || {});

// What to tell the user: sign-in first, then unreachable (or 5xx), then the API's own message.
function describe(errors) {
  if (errors.some((e) => e.status === 401)) return { cls: 'bad', text: 'Sign in: reload the page and give the admin token as the password.' };
  if (errors.some((e) => !(e.status > 0))) return { cls: 'warn', text: 'Hub unreachable, retrying…' };
  const e5 = errors.find((e) => e.status >= 500);
  if (e5) return { cls: 'warn', text: `Hub error (${e5.message}), retrying…` };
  return { cls: 'bad', text: `API error: ${errors[0].message} (${errors[0].code})` };
}

// ---------- history ----------
function mergeHistory(h) {
  if (isNum(h.window_ms) && h.window_ms > 0) S.windowMs = h.window_ms;
  if (isNum(h.now_ms)) {
    S.offset = h.now_ms - Date.now();
    // The hub's clock went back (or another hub answers): start over with what this answer holds.
    if (S.lastAt != null && h.now_ms < S.lastAt) { S.samples = []; S.lastAt = null; }
    S.hubNow = h.now_ms;
  }
  for (const s of arr(h.samples)) {
    if (s && isNum(s.at_ms) && (S.lastAt == null || s.at_ms > S.lastAt)) { S.samples.push(s); S.lastAt = s.at_ms; }
  }
  const cutoff = (S.hubNow != null ? S.hubNow : num(S.lastAt)) - S.windowMs;
  const keep = S.samples.findIndex((s) => s.at_ms >= cutoff);
  S.samples.splice(0, keep < 0 ? S.samples.length : keep);
}

// Per-minute rate of a counter (get(sample) -> number or undefined) over the last ~60 s of samples, scaled
// up when less history exists; 0 with fewer than two samples. A decrease means the hub restarted and the
// counter began again at zero, so the new value is what was counted since: never a negative rate.
function ratePerMin(get) { return roundRate(rawRate(get)); }
const roundRate = (r) => (r >= 100 ? Math.round(r) : Math.round(r * 10) / 10);
function rawRate(get) {
  const a = S.samples, n = a.length;
  if (n < 2) return 0;
  const end = a[n - 1].at_ms;
  let i = n - 1;
  while (i > 0 && a[i].at_ms > end - MIN) i--;
  const span = end - a[i].at_ms;
  let total = 0;
  for (; i < n - 1; i++) {
    const p = get(a[i]), c = get(a[i + 1]);
    if (isNum(p) && isNum(c)) total += c >= p ? c - p : c;
  }
  return span > 0 ? (total * MIN) / span : 0;
}
const brandSample = (s, id) => (s && s.brands && s.brands[id]) || null;
const brandRate = (id) => ratePerMin((s) => (brandSample(s, id) || {}).fired_total);

// Every brand known from stats or from the history window, sorted.
function brandIds() {
  const ids = new Set(Object.keys((S.stats && S.stats.brands) || {}));
  for (const s of S.samples) for (const id of Object.keys(s.brands || {})) ids.add(id);
  return [...ids].sort();
}

// ---------- poll cycle ----------
async function pollOnce() {
  const since = S.lastAt != null ? `?since_ms=${encodeURIComponent(S.lastAt)}` : '';
  const rs = await Promise.allSettled([
    getJson('/api/v1/stats'), getJson(`/api/v1/stats/history${since}`), getJson('/api/v1/backlogs?limit=10')]);
  if (rs[0].status === 'fulfilled') S.stats = rs[0].value;
  // Opened with a brand API key: the hub answers for that brand only; show it, and name it in the title.
  if (S.stats && S.stats.brand_id) {
    setText($('h1'), `pixelhub · brand ${S.stats.brand_id}`);
    if (S.brand !== S.stats.brand_id) safely(() => selectBrand(S.stats.brand_id));
  }
  if (rs[1].status === 'fulfilled') safely(() => mergeHistory(rs[1].value));
  if (rs[2].status === 'fulfilled') S.backlogs = rs[2].value;
  [renderCards, renderChart, renderBrands, renderBacklogs].forEach(safely);
  return failures(rs);
}

async function pollLoop() {
  let errors;
  try { errors = await pollOnce(); } catch (e) { errors = [e || {}]; }
  safely(() => reportCycle(errors));
  // After a failure back off: 2, 4, 8, then every 10 s.
  setTimeout(pollLoop, errors.length ? Math.min(POLL_MS * 2 ** (S.failures - 1), MAX_RETRY_MS) : POLL_MS);
}

// Banner, last-updated stamp and poll counter.
function reportCycle(errors) {
  const banner = $('#banner'), ok = !errors.length;
  document.body.classList.toggle('stale', !ok);
  banner.hidden = ok;
  if (ok) {
    S.failures = 0;
    const now = Date.now(), lu = $('#last-updated');
    lu.dataset.ms = String(now);
    setText(lu, `updated ${fmtClock(now)}`);
    document.body.dataset.polls = String(++S.polls);
    return;
  }
  S.failures += 1;
  const d = describe(errors);
  banner.className = `banner ${d.cls}`;
  setText(banner, d.text);
}

// ---------- cards ----------
function setCard(id, value, text) {
  const node = $(id);
  setAttr(node, 'data-value', value);
  setText(node, text == null ? value : text);
}

function renderCards() {
  const st = S.stats;
  if (!st) return;
  const brands = Object.values(st.brands || {}).filter(Boolean), s2s = st.s2s || {};
  setCard('#total-depth', num(st.queue_depth));
  setCard('#sessions', num(st.sessions));
  setCard('#players-online', num(st.players_online));
  // The sum of the brand rows' own rates, so the header and the rows can never disagree (a brand that
  // appeared within the window, or two roundings, once made them read 59 and 49).
  const rows = Object.keys(st.brands || {});
  setCard('#fired-per-min', roundRate(rows.reduce((sum, id) => sum + rawRate((s) => (brandSample(s, id) || {}).fired_total), 0)));
  const n = S.samples.length, span = n > 1 ? S.samples[n - 1].at_ms - S.samples[0].at_ms : 0;
  setText($('#fired-sub'), span >= MIN ? 'over the last minute' : n > 1 ? `from ${Math.round(span / 1000)} s of history` : 'waiting for history');

  const oldest = Math.min(...brands.map((b) => b.oldest_queued_at_ms).filter(isNum));
  const age = ageSec(oldest);  // Math.min() of nothing is Infinity: not a number here, so no age
  setCard('#oldest-pending', age == null ? '' : age, fmtAge(age));
  setText($('#oldest-sub'), age == null ? 'nothing pending' : `since ${fmtStamp(oldest)}`);

  setCard('#s2s-failures', num(s2s.failed));
  const flagged = brands.reduce((sum, b) => sum + num(b.flagged_definitions), 0), ft = $('#flagged-total');
  setAttr(ft, 'data-value', flagged);
  setText(ft, plural(flagged, 'flagged definition'));
  ft.classList.toggle('warn-text', flagged > 0);
  const line = `S2S: ${num(s2s.fired)} fired, ${num(s2s.retried)} retried, ${num(s2s.in_flight)} in flight`;
  setText($('#s2s-sub'), line);
  setAttr($('#s2s-sub'), 'title', line);
  $('#draining').hidden = !st.draining;
}

// ---------- chart ----------
function renderChart() {
  const box = $('#depth-chart'), ids = brandIds();
  const W = Math.max(280, Math.round(box.parentElement.clientWidth || 800)), H = 240;
  const L = 46, R = 14, T = 10, B = 24, pw = W - L - R, ph = H - T - B;
  const last = S.samples[S.samples.length - 1];
  const end = S.hubNow != null ? S.hubNow : last ? last.at_ms : Date.now(), start = end - S.windowMs;
  const samples = S.samples.filter((s) => s.at_ms >= start && s.at_ms <= end);
  let max = 4;
  for (const s of samples) for (const id of ids) max = Math.max(max, num((brandSample(s, id) || {}).queue_depth));
  // y scale: a round step (1, 2 or 5 × 10^k) giving about four gridlines
  const mag = 10 ** Math.floor(Math.log10(max / 4)), f = max / 4 / mag;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag, top = Math.ceil(max / step) * step;
  const X = (t) => (L + ((t - start) / (end - start)) * pw).toFixed(1);
  const Y = (v) => (T + ph - (v / top) * ph).toFixed(1);

  const kids = [];
  for (let v = 0; v <= top; v += step) {
    kids.push(svg('line', { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: v ? 'grid' : 'base' }),
      svg('text', { x: L - 6, y: +Y(v) + 4, 'text-anchor': 'end' }, v));
  }
  const mins = Math.round(S.windowMs / MIN), every = mins > 20 ? 10 : mins > 6 ? 5 : 1;
  for (let k = mins; k >= 0; k -= every) {
    const x = X(end - k * MIN), edge = k === mins ? 'start' : k === 0 ? 'end' : '';
    if (!edge) kids.push(svg('line', { x1: x, x2: x, y1: T, y2: T + ph, class: 'grid' }));
    kids.push(svg('text', { x: k === mins ? L : x, y: H - 6, 'text-anchor': edge || 'middle' }, k ? `-${k} min` : 'now'));
  }
  // One path per brand, with a gap where a sample lacks the brand; a point without neighbours gets a dot.
  for (const id of ids) {
    let d = '', run = 0, x, y;
    const dot = () => { if (run === 1) kids.push(svg('circle', { cx: x, cy: y, r: 3, fill: colorOf(id) })); run = 0; };
    for (const s of samples) {
      const b = brandSample(s, id);
      if (!b || !isNum(b.queue_depth)) { dot(); continue; }
      [x, y] = [X(s.at_ms), Y(b.queue_depth)];
      d += `${run++ ? 'L' : 'M'}${x} ${y}`;
    }
    dot();
    const path = svg('path', { class: 'series', stroke: colorOf(id), 'data-brand': id });
    if (d) path.setAttribute('d', d);
    path.append(svg('title', {}, id));
    kids.push(path);
  }
  if (!samples.length) kids.push(svg('text', { x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle', class: 'waiting' }, 'waiting for samples…'));
  for (const [k, v] of [['viewBox', `0 0 ${W} ${H}`], ['width', W], ['height', H]]) setAttr(box, k, v);
  box.replaceChildren(...kids);
  box.dataset.samples = String(samples.length);
  setText($('#chart-window'), `last ${mins} min`);

  const latest = samples[samples.length - 1];
  $('#chart-legend').replaceChildren(...ids.map((id) => el('li', { 'data-brand': id },
    el('span', { class: 'swatch', style: `background:${colorOf(id)}` }), el('span', { class: 'mono', text: id }),
    el('span', { class: 'val', text: (brandSample(latest, id) || { queue_depth: '–' }).queue_depth }))));
}

// ---------- tables ----------
// Keeps a tbody's rows in step with items, updating rows in place so focus and selections survive.
// cols: [{field, num, text(item) | render(td, item)}]; init(tr, item) runs once per new row.
function syncRows(tbody, items, key, cols, init) {
  const old = new Map([...tbody.rows].map((tr) => [tr._key, tr]));
  items.forEach((item, i) => {
    const k = key(item);
    let tr = old.get(k);
    if (tr) old.delete(k);
    else {
      tr = el('tr', {}, ...cols.map((c) => el('td', c.num ? { 'data-field': c.field, class: 'num' } : { 'data-field': c.field })));
      tr._key = k;
      init(tr, item);
    }
    cols.forEach((c, j) => (c.render ? c.render(tr.cells[j], item) : setText(tr.cells[j], c.text(item))));
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
  });
  old.forEach((tr) => tr.remove());
  // The note under the table ("No brands yet.") shows when it is empty.
  const note = tbody.closest('.table-wrap').nextElementSibling;
  if (note && note.classList.contains('empty')) note.hidden = items.length > 0;
}

// Age cell: formatted text, seconds in data-value, timestamp in title.
function ageCell(td, ms) {
  const age = ageSec(ms);
  setText(td, fmtAge(age));
  setAttr(td, 'data-value', age == null ? '' : age);
  setAttr(td, 'title', isNum(ms) ? `queued ${iso(ms)}` : '');
}
// Truncated text with the full value in the title.
function truncCell(td, v, wide) {
  v = v == null ? '' : String(v);
  if (!td.firstChild) td.append(el('span', { class: wide ? 'trunc wide' : 'trunc' }));
  setText(td.firstChild, v || '—');
  setAttr(td.firstChild, 'title', v);
}
// One coloured pill, optionally with a muted line below it.
function pillCell(td, cls, text, title, extra) {
  setKids(td, [cls, text, title, extra].join('|'), el('span', { class: `pill ${cls}`, text, title: title || '' }),
    extra ? el('span', { class: 'sub trunc', text: extra, title: extra }) : '');
}

const BRAND_COLS = [
  { field: 'brand', render(td, b) {
    if (!td.firstChild) td.append(el('span', { class: 'swatch' }), ' ', el('button', { type: 'button', class: 'link', text: b.id }));
    td.firstChild.style.background = colorOf(b.id);
    setAttr(td.lastChild, 'aria-pressed', b.id === S.brand);
  } },
  { field: 'queue_depth', num: 1, text: (b) => num(b.queue_depth) },
  { field: 'waiting_consent', num: 1, text: (b) => num(b.waiting_consent) },
  { field: 'oldest_pending', num: 1, render: (td, b) => ageCell(td, b.oldest_queued_at_ms) },
  { field: 'sessions', num: 1, text: (b) => num(b.sessions) },
  { field: 'players_online', num: 1, text: (b) => num(b.players_online) },
  { field: 'fired_per_min', num: 1, text: (b) => brandRate(b.id) },
  { field: 'failed_total', num: 1, render(td, b) {
    setText(td, num(b.failed_total));
    td.classList.toggle('flag-nonzero', num(b.failed_total) > 0);
  } },
  { field: 'flagged_definitions', num: 1, render(td, b) {
    setText(td, num(b.flagged_definitions));
    td.classList.toggle('flag-nonzero', num(b.flagged_definitions) > 0);
  } },
];

function renderBrands() {
  if (!S.stats) return;
  const map = S.stats.brands || {}, tbody = $('#brands tbody');
  syncRows(tbody, Object.keys(map).sort().map((id) => ({ ...map[id], id })), (b) => b.id, BRAND_COLS,
    (tr, b) => { tr.dataset.brand = b.id; });
  for (const tr of tbody.rows) tr.classList.toggle('selected', tr.dataset.brand === S.brand);
}

const BACKLOG_COLS = [
  { field: 'brand', render(td, p) {
    if (!td.firstChild) td.append(el('a', { href: `#brand=${encodeURIComponent(p.brand_id)}`, class: 'mono', text: p.brand_id }));
  } },
  { field: 'player', render: (td, p) => truncCell(td, p.player_id) },
  { field: 'pending', num: 1, text: (p) => num(p.pending) },
  { field: 'oldest_pending', num: 1, render: (td, p) => ageCell(td, p.oldest_queued_at_ms) },
];

function renderBacklogs() {
  if (!S.backlogs) return;
  const items = arr(S.backlogs.players).filter((p) => p && typeof p.brand_id === 'string' && typeof p.player_id === 'string');
  syncRows($('#backlogs tbody'), items, (p) => `${p.brand_id} ${p.player_id}`, BACKLOG_COLS, (tr, p) => {
    tr.dataset.brand = p.brand_id;
    tr.dataset.player = p.player_id;
  });
}

// ---------- brand drill-down ----------
function brandFromHash() {
  const m = /^#brand=(.*)$/.exec(location.hash);
  try { return m ? decodeURIComponent(m[1]) : ''; } catch (e) { return ''; }
}

// Select a brand ('' = none), kept in the URL hash.
function selectBrand(id) {
  const hash = id ? `#brand=${encodeURIComponent(id)}` : '';
  if (location.hash !== hash) history.replaceState(null, '', location.pathname + location.search + hash);
  showBrand(id);
}

function showBrand(id) {
  if (id === S.brand) return;
  S.brand = id;
  $('#brand-detail').dataset.brand = id;
  setText($('#detail-title'), id || '—');
  $('#detail-hint').hidden = !!id;
  $('#detail-body').hidden = $('#detail-clear').hidden = !id;
  // Drop the previous brand's rows at once rather than show them under the new name.
  for (const sel of ['#definitions tbody', '#deliveries tbody']) $(sel).replaceChildren();
  for (const sel of ['#definitions-empty', '#deliveries-empty']) $(sel).hidden = true;
  detailStatus(id ? 'loading…' : '', false);
  safely(renderBrands);
  clearTimeout(S.detailTimer);
  S.detailSeq += 1; // answers still in flight for the previous brand are dropped
  if (id) detailLoop();
}

function detailStatus(text, isError) {
  setText($('#detail-status'), text);
  $('#detail-status').classList.toggle('error', isError);
}

async function detailLoop() {
  const id = S.brand, seq = ++S.detailSeq, base = `/api/v1/brands/${encodeURIComponent(id)}`;
  const rs = await Promise.allSettled([getJson(`${base}/pixel-definitions`), getJson(`${base}/deliveries?limit=20`),
    getJson(`${base}/deliveries?status=failed&limit=200`)]);
  if (seq !== S.detailSeq) return; // another brand was selected meanwhile
  safely(() => renderDetail(...rs));
  S.detailTimer = setTimeout(detailLoop, DETAIL_MS);
}

function renderDetail(defs, dels, failed) {
  const errors = failures([defs, dels]), e = errors[0];
  detailStatus(!e ? `updated ${fmtClock(Date.now())}` : e.status === 404 ? `not found: ${e.message}` : describe(errors).text, !!e);
  const list = (r, k) => (r.status === 'fulfilled' ? arr(r.value[k]) : []).filter((x) => x && typeof x.id === 'string');

  // Flagged definitions: those the delivery report lists and those whose health says so.
  const flagged = new Map();
  if (dels.status === 'fulfilled') {
    for (const f of arr(dels.value.flagged_definitions)) if (f && typeof f.definition_id === 'string') flagged.set(f.definition_id, f);
    syncRows($('#deliveries tbody'), list(dels, 'deliveries'), (d) => d.id, DELIVERY_COLS, (tr, d) => { tr.dataset.delivery = d.id; });
  }
  if (defs.status === 'fulfilled') {
    const ds = list(defs, 'definitions');
    for (const d of ds) if (d.health && d.health.flagged && !flagged.has(d.id)) flagged.set(d.id, { definition_id: d.id, ...d.health });
    // The failing definitions: failed rows of the report (render failures, browser errors, postbacks that
    // ran out of attempts), by definition, with their reasons.
    const failing = new Map();
    for (const row of failed && failed.status === 'fulfilled' ? arr(failed.value.deliveries) : []) {
      if (!row || typeof row.definition_id !== 'string') continue;
      const f = failing.get(row.definition_id) || { n: 0, reasons: new Set() };
      f.n += 1;
      f.reasons.add(row.reason || row.error || 'failed');
      failing.set(row.definition_id, f);
    }
    syncRows($('#definitions tbody'), ds, (d) => d.id, defCols(flagged, failing), (tr, d) => { tr.dataset.definition = d.id; });
  }
}

function defCols(flagged, failing) {
  return [
    { field: 'id', render: (td, d) => truncCell(td, d.id) },
    { field: 'name', text: (d) => d.name || '' },
    { field: 'trigger', text: (d) => d.trigger || '' },
    { field: 'kind', text: (d) => d.kind || '' },
    { field: 'enabled', render: (td, d) => (d.enabled === false
      ? pillCell(td, 'off', 'disabled', '', d.disabled_reason) : pillCell(td, 'ok', 'enabled')) },
    { field: 'target', render: (td, d) => truncCell(td, typeof d.url === 'string' ? d.url
      : d.pixel_id != null ? `pixel ${d.pixel_id}` : typeof d.code === 'string' ? `code: ${d.code}` : '', true) },
    { field: 'health', render(td, d) {
      const h = d.health || flagged.get(d.id);
      if (!h) return setKids(td, '-', d.kind === 's2s' ? '—' : '');
      const fails = num(h.consecutive_failures), err = h.last_error || '';
      const text = fails ? `${plural(fails, 'failure')} in a row` : '';
      if (h.flagged || flagged.has(d.id)) pillCell(td, 'flagged', 'flagged', err, [text, err].filter(Boolean).join(' · '));
      else if (fails) pillCell(td, 'warn', text, err, err);
      else pillCell(td, 'ok', 'healthy', err && `last error: ${err}`);
    } },
    { field: 'failed', num: 1, render(td, d) {
      const f = failing.get(d.id), why = f ? [...f.reasons].join(', ') : '';
      setText(td, f ? num(f.n) : '0');
      setAttr(td, 'title', why);
      td.classList.toggle('flag-nonzero', !!f);
    } },
  ];
}

const DELIVERY_COLS = [
  { field: 'queued_at', render(td, d) {
    setText(td, fmtStamp(d.queued_at_ms));
    setAttr(td, 'title', `queued ${iso(d.queued_at_ms)}` + (isNum(d.fired_at_ms) ? `, fired ${iso(d.fired_at_ms)}` : ''));
  } },
  { field: 'player', render: (td, d) => truncCell(td, d.player_id) },
  { field: 'kind', text: (d) => d.kind || '' },
  { field: 'definition', render(td, d) {
    const def = d.definition_name || d.definition_id || '';
    setKids(td, `${d.trigger}|${def}`, d.trigger || '—', def ? el('span', { class: 'sub', text: def, title: d.definition_id || '' }) : '');
  } },
  // The pill is the cell's only content, so its textContent is exactly the status.
  { field: 'status', render(td, d) {
    const st = String(d.status || '');
    pillCell(td, STATUSES.includes(st) ? `st-${st}` : 'off', st);
  } },
  { field: 'attempts', num: 1, text: (d) => num(d.attempts) },
  { field: 'result', render: (td, d) => truncCell(td, [d.http_status != null ? `HTTP ${d.http_status}` : '', d.error || ''].filter(Boolean).join(' · ')) },
  { field: 'final_url', render: (td, d) => truncCell(td, d.final_url, true) },
];

// ---------- wiring ----------
// A row click, or the brand button inside it (Tab, then Enter or Space), selects the brand.
$('#brands tbody').addEventListener('click', (ev) => {
  const tr = ev.target.closest('tr[data-brand]');
  if (tr) selectBrand(tr.dataset.brand);
});
$('#detail-clear').addEventListener('click', () => selectBrand(''));
window.addEventListener('hashchange', () => showBrand(brandFromHash()));
let raf = 0;
window.addEventListener('resize', () => { cancelAnimationFrame(raf); raf = requestAnimationFrame(() => safely(renderChart)); });
showBrand(brandFromHash());
pollLoop();
})();
