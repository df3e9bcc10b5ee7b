// The fan-out viewer: windows on a time axis, a window's top talkers, an
// address's distinct peers per window, and the addresses whose fan-out jumped.
// The receiver does the heavy lifting (devtools/viewer/api.py); this page asks
// for small JSON answers and draws them as SVG. Everything received is shown
// with textContent, never parsed as HTML: addresses and groups come from POSTs.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const state = {group: '', window: null, address: '', ratio: null, minCount: null};
let windows = [];  // the chosen group's windows, in time order
let series = null;  // the chosen address's answer from /api/series

function $(id) { return document.getElementById(id); }

function svgEl(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (parent) parent.appendChild(node);
  return node;
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function utc(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 16).replace('T', ' ');
}

function median(value) {
  if (value === null || value === undefined) return '\u2014';
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function ratioText(peers, baseline) {
  if (baseline === null || baseline === undefined) return '\u2014';
  if (baseline === 0) return 'new';
  return (peers / baseline).toFixed(1) + '\u00d7';
}

function setStatus(text, isError) {
  const status = $('status');
  status.textContent = text;
  status.className = isError ? 'error' : '';
}

async function getJson(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined) url.searchParams.set(name, value);
  }
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function ruleParams() {
  return {group: state.group, ratio: state.ratio, min_count: state.minCount};
}

// The chosen group, window and address live in the URL's fragment, so a view
// can be shared and survives a reload.
function readHash() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  state.group = params.get('group') || '';
  state.window = params.has('window') ? Number(params.get('window')) : null;
  state.address = params.get('address') || '';
  if (params.has('ratio')) state.ratio = Number(params.get('ratio'));
  if (params.has('min_count')) state.minCount = Number(params.get('min_count'));
}

function writeHash() {
  const params = new URLSearchParams();
  if (state.group) params.set('group', state.group);
  if (state.window !== null) params.set('window', state.window);
  if (state.address) params.set('address', state.address);
  params.set('ratio', state.ratio);
  params.set('min_count', state.minCount);
  history.replaceState(null, '', '#' + params.toString());
}

// --- the time axis shared by both charts -----------------------------------

// Charts are drawn at their box's width in pixels, so text keeps its size.
const CHART = {width: 1000, left: 46, right: 10};

function sizeChart(box) {
  CHART.width = Math.max(320, Math.floor(box.clientWidth || 1000));
}

function timeScale() {
  const starts = windows.map(w => w.start);
  const lengths = windows.map(w => (w.end || w.start + 600) - w.start).sort((a, b) => a - b);
  const step = lengths.length ? lengths[Math.floor(lengths.length / 2)] : 600;
  const first = starts.length ? starts[0] : 0;
  const last = starts.length ? starts[starts.length - 1] : 0;
  const slots = Math.max(1, Math.round((last - first) / step) + 1);
  const plot = CHART.width - CHART.left - CHART.right;
  const slot = plot / slots;
  return {
    x: start => CHART.left + ((start - first) / step) * slot,
    slot, barWidth: Math.max(1, slot * 0.8), first, last, step,
  };
}

function drawTimeAxis(svg, scale, y) {
  svgEl('line', {class: 'axis', x1: CHART.left, x2: CHART.width - CHART.right, y1: y, y2: y}, svg);
  const ticks = Math.min(windows.length, 6);
  for (let i = 0; i < ticks; i++) {
    const w = windows[Math.round(i * (windows.length - 1) / Math.max(1, ticks - 1))];
    const label = svgEl('text', {x: scale.x(w.start) + scale.slot / 2, y: y + 14,
                                 'text-anchor': 'middle'}, svg);
    label.textContent = utc(w.start).slice(5);
  }
}

function drawValueAxis(svg, top, bottom, max) {
  for (const value of [0, max]) {
    const y = bottom - (value / Math.max(1, max)) * (bottom - top);
    const label = svgEl('text', {x: CHART.left - 6, y: y + 4, 'text-anchor': 'end'}, svg);
    label.textContent = String(value);
  }
}

function chosenWindowMark(svg, scale, height) {
  if (state.window === null || !windows.some(w => w.start === state.window)) return;
  svgEl('rect', {class: 'chosen-window', x: scale.x(state.window), y: 0,
                 width: scale.slot, height}, svg);
}

function drawTimeline() {
  const box = $('timeline');
  box.replaceChildren();
  if (!windows.length) {
    box.textContent = 'No windows received yet.';
    return;
  }
  sizeChart(box);
  const height = 120, top = 14, bottom = 96;
  const svg = svgEl('svg', {viewBox: `0 0 ${CHART.width} ${height}`, height}, box);
  const scale = timeScale();
  const max = Math.max(...windows.map(w => w.addresses));
  chosenWindowMark(svg, scale, bottom);
  for (const w of windows) {
    const x = scale.x(w.start) + (scale.slot - scale.barWidth) / 2;
    const h = Math.max(1, (w.addresses / Math.max(1, max)) * (bottom - top));
    const bar = svgEl('rect', {class: 'bar present window-bar', x, y: bottom - h,
                               width: scale.barWidth, height: h, 'data-start': w.start}, svg);
    if (w.jumps) {
      svgEl('circle', {class: 'jump-mark', cx: x + scale.barWidth / 2, cy: top - 6,
                       r: Math.min(5, Math.max(2.5, scale.barWidth / 2)), 'data-start': w.start}, svg);
    }
    const hit = svgEl('rect', {class: 'hit', x: scale.x(w.start), y: 0, width: scale.slot,
                               height: bottom, 'data-start': w.start}, svg);
    const title = svgEl('title', {}, hit);
    title.textContent = `${utc(w.start)} UTC: ${w.addresses} addresses, top ${w.max_peers} ` +
        `distinct peers, ${w.jumps} jump${w.jumps === 1 ? '' : 's'} (pane ${w.pane})`;
    hit.addEventListener('click', () => chooseWindow(w.start));
    bar.addEventListener('click', () => chooseWindow(w.start));
  }
  drawValueAxis(svg, top, bottom, max);
  drawTimeAxis(svg, scale, bottom);
  const jumpsIn = windows.filter(w => w.jumps).length;
  $('windows-summary').textContent =
      `${windows.length} windows from ${utc(windows[0].start)} to ` +
      `${utc(windows[windows.length - 1].start)} UTC; bar height: addresses; ` +
      `${jumpsIn} with jumps (marked)`;
}

function drawSeries() {
  const box = $('series');
  box.replaceChildren();
  if (!series) {
    const hint = document.createElement('p');
    hint.className = 'hint';
    hint.textContent = 'Choose an address in the tables, or type one.';
    box.appendChild(hint);
    return;
  }
  $('address-name').textContent = series.address;
  if (!series.seen) {
    const hint = document.createElement('p');
    hint.className = 'hint';
    hint.textContent = `${series.address} is in no window of this group.`;
    box.appendChild(hint);
    return;
  }
  sizeChart(box);
  const height = 220, top = 12, bottom = 196;
  const svg = svgEl('svg', {viewBox: `0 0 ${CHART.width} ${height}`, height}, box);
  const scale = timeScale();
  const points = series.series;
  const max = Math.max(1, ...points.map(p => Math.max(p.peers, p.baseline || 0)));
  const y = value => bottom - (value / max) * (bottom - top);
  chosenWindowMark(svg, scale, bottom);
  for (const p of points) {
    const x = scale.x(p.start) + (scale.slot - scale.barWidth) / 2;
    const h = Math.max(p.present ? 1 : 0, bottom - y(p.peers));
    const classes = ['bar', 'series-bar'];
    if (p.present) classes.push('present');
    if (p.jump) classes.push('jump');
    const bar = svgEl('rect', {class: classes.join(' '), x, y: bottom - h, width: scale.barWidth,
                               height: h, 'data-start': p.start, 'data-peers': p.peers}, svg);
    const title = svgEl('title', {}, bar);
    title.textContent = `${utc(p.start)} UTC: ${p.peers} distinct peers, median before ` +
        `${median(p.baseline)}${p.jump ? ' \u2014 a jump' : ''}`;
    bar.addEventListener('click', () => chooseWindow(p.start));
  }
  const line = points.filter(p => p.baseline !== null)
      .map(p => `${scale.x(p.start) + scale.slot / 2},${y(p.baseline)}`);
  if (line.length > 1) svgEl('polyline', {class: 'baseline', points: line.join(' ')}, svg);
  drawValueAxis(svg, top, bottom, max);
  drawTimeAxis(svg, scale, bottom);
}

// --- tables ------------------------------------------------------------------

function drawTop(answer) {
  const body = $('top').tBodies[0];
  body.replaceChildren();
  answer.top.forEach((row, i) => {
    const tr = body.insertRow();
    tr.dataset.address = row.address;
    if (row.jump) tr.classList.add('jump');
    if (row.address === state.address) tr.classList.add('chosen');
    cell(tr, String(i + 1), 'num');
    cell(tr, row.address, 'address');
    cell(tr, String(row.peers), 'num');
    cell(tr, median(row.baseline), 'num');
    tr.addEventListener('click', () => chooseAddress(row.address));
  });
  $('top-window').textContent = `in the window of ${utc(answer.window)} UTC`;
  rememberAddresses(answer.top.map(r => r.address));
}

function drawJumps(answer) {
  const body = $('jumps').tBodies[0];
  body.replaceChildren();
  for (const jump of answer.jumps) {
    const tr = body.insertRow();
    tr.className = 'jump';
    tr.dataset.address = jump.address;
    tr.dataset.window = jump.window_start;
    if (jump.address === state.address && jump.window_start === state.window) tr.classList.add('chosen');
    cell(tr, utc(jump.window_start) + ' UTC');
    cell(tr, jump.address, 'address');
    cell(tr, String(jump.peers), 'num');
    cell(tr, median(jump.baseline), 'num');
    cell(tr, ratioText(jump.peers, jump.baseline), 'num');
    tr.addEventListener('click', () => {
      state.window = jump.window_start;
      chooseAddress(jump.address);
    });
  }
  const shown = answer.jumps.length;
  $('jumps-summary').textContent = shown
      ? `${shown}${answer.truncated ? ' (the newest)' : ''}, newest first: ${answer.rule.text}`
      : `none: ${answer.rule.text}`;
  rememberAddresses(answer.jumps.map(j => j.address));
}

const knownAddresses = new Set();
function rememberAddresses(addresses) {
  const list = $('known-addresses');
  for (const address of addresses) {
    if (knownAddresses.has(address) || knownAddresses.size > 500) continue;
    knownAddresses.add(address);
    const option = document.createElement('option');
    option.value = address;
    list.appendChild(option);
  }
}

function markChosenRows() {
  for (const tr of $('top').tBodies[0].rows) {
    tr.classList.toggle('chosen', tr.dataset.address === state.address);
  }
  for (const tr of $('jumps').tBodies[0].rows) {
    tr.classList.toggle('chosen', tr.dataset.address === state.address &&
                        Number(tr.dataset.window) === state.window);
  }
}

// --- loading -----------------------------------------------------------------

async function loadWindow() {
  if (state.window === null) {
    $('top').tBodies[0].replaceChildren();
    $('top-window').textContent = '';
    return;
  }
  drawTop(await getJson('/api/top', {...ruleParams(), window: state.window, limit: 20}));
}

async function loadSeries() {
  series = state.address ? await getJson('/api/series', {...ruleParams(), address: state.address})
                         : null;
  drawSeries();
}

async function loadGroup() {
  const [answer, jumps] = await Promise.all([
    getJson('/api/windows', ruleParams()),
    getJson('/api/jumps', {...ruleParams(), order: 'desc', limit: 200}),
  ]);
  windows = answer.windows;
  if (!windows.some(w => w.start === state.window)) {
    state.window = windows.length ? windows[windows.length - 1].start : null;
  }
  $('history-text').textContent = `of the previous ${answer.rule.history} windows`;
  drawTimeline();
  drawJumps(jumps);
  await Promise.all([loadWindow(), loadSeries()]);
  writeHash();
}

async function run(step) {
  const began = performance.now();
  try {
    setStatus('loading\u2026');
    document.body.dataset.busy = '1';
    await step();
    setStatus('');
    // For the benchmark: how long the last step took, asked to drawn.
    document.body.dataset.stepMs = String(Math.round(performance.now() - began));
  } catch (e) {
    setStatus(`could not load: ${e.message}`, true);
  } finally {
    delete document.body.dataset.busy;
  }
}

function chooseWindow(start) {
  state.window = start;
  run(async () => {
    drawTimeline();
    drawSeries();
    markChosenRows();
    await loadWindow();
    writeHash();
  });
}

function chooseAddress(address) {
  state.address = address.trim();
  $('address').value = state.address;
  run(async () => {
    drawTimeline();
    markChosenRows();
    await Promise.all([loadSeries(), loadWindow()]);
    writeHash();
  });
}

async function init() {
  readHash();
  const [rule, groupsAnswer] = await Promise.all([getJson('/api/rule'), getJson('/api/groups')]);
  if (!(state.ratio >= 1)) state.ratio = rule.ratio;
  if (!(state.minCount >= 1)) state.minCount = rule.min_count;
  $('ratio').value = state.ratio;
  $('min-count').value = state.minCount;
  $('address').value = state.address;
  const groups = groupsAnswer.groups;
  const select = $('group');
  for (const g of groups) {
    const option = document.createElement('option');
    option.value = g.group;
    option.textContent = g.pairs.length ? g.pairs.map(([f, v]) => `${f}=${v}`).join(' ') : '(no group)';
    select.appendChild(option);
  }
  $('group-label').hidden = !(groups.length > 1 || (groups.length === 1 && groups[0].group !== ''));
  if (!groups.some(g => g.group === state.group)) state.group = groups.length ? groups[0].group : '';
  select.value = state.group;
  await loadGroup();
}

document.addEventListener('DOMContentLoaded', () => {
  $('rule').addEventListener('submit', event => {
    event.preventDefault();
    const ratio = Number($('ratio').value), minCount = Number($('min-count').value);
    if (!(ratio >= 1) || !(minCount >= 1)) {
      setStatus('the ratio and the minimum must be at least 1', true);
      return;
    }
    state.ratio = ratio;
    state.minCount = Math.floor(minCount);
    run(loadGroup);
  });
  $('group').addEventListener('change', event => {
    state.group = event.target.value;
    state.window = null;
    run(loadGroup);
  });
  $('address-form').addEventListener('submit', event => {
    event.preventDefault();
    chooseAddress($('address').value);
  });
  let resizing = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => { drawTimeline(); drawSeries(); }, 150);
  });
  run(init).then(() => {
    // For the tests and the benchmark: the first view is drawn.
    document.body.dataset.ready = '1';
    document.body.dataset.loadMs = String(Math.round(performance.now()));
  });
});
