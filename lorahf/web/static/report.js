// The report page: report.md as the server rendered it, the stages' status, and one small chart per
// (stage, metric) of metrics.jsonl, asked for every 2 s while the page is open.
//
// Safe by construction: every text that comes from the run folder (stage and metric names, values, the lock
// holder's command) is set with textContent or as an SVG attribute; the one innerHTML is the report, which the
// server renders with markdown-it and raw HTML off, so whatever report.md holds arrives escaped.
"use strict";

const TOKEN = document.body.dataset.token;
const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const BOX = { width: 260, height: 112, left: 44, right: 8, top: 8, bottom: 20 };  // a chart, in SVG units
const DOTS_UP_TO = 12;  // a series this short (held-out checks) also shows each point

const metrics = { offset: 0, file: "", lines: 0, stages: new Map(), dirty: new Set() };
let stageOrder = [];       // the recipe's stages, from /api/status
let stageStates = new Map();
let reportUpdated;         // report.md's modification time as last shown; undefined: not fetched yet

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(path) {
  const answer = await fetch(path, { headers: { "X-Lorahf-Token": TOKEN }, cache: "no-store" });
  if (!answer.ok) throw new Error(`${path}: ${answer.status}`);
  return answer.json();
}

// ------------------------------------------------------------------------------------------------ polling
async function tick() {
  try {
    const status = await getJSON("api/status");
    await pollMetrics();
    showStatus(status);
    if (status.report_updated !== reportUpdated) {
      await loadReport();
      reportUpdated = status.report_updated;
    }
    showLive(status.running ? "live" : "idle");
  } catch (error) {
    showLive("offline");
  }
  setTimeout(tick, POLL_MS);
}

async function pollMetrics() {
  let more = true;
  while (more) {
    const query = `since=${metrics.offset}&file=${encodeURIComponent(metrics.file)}`;
    const answer = await getJSON(`api/metrics?${query}`);
    if (answer.reset) forgetMetrics();
    metrics.offset = answer.offset;
    metrics.file = answer.file;
    metrics.lines += answer.rows.length;
    answer.rows.forEach(addRow);
    more = answer.more;
  }
  metrics.dirty.forEach(drawChart);
  metrics.dirty.clear();
  $("metrics-empty").hidden = metrics.lines > 0;
  $("metrics-count").textContent = metrics.lines ? `${metrics.lines} lines of metrics.jsonl · every 2 s` : "";
}

function showLive(state) {
  const text = { live: "live · a run is going", idle: "not running", offline: "offline · retrying" }[state];
  const pill = $("live");
  pill.textContent = text;
  pill.className = `pill pill-${state}`;
}

// ------------------------------------------------------------------------------------------------ stages
function showStatus(status) {
  stageOrder = status.stages.map((stage) => stage.name);
  stageStates = new Map(status.stages.map((stage) => [stage.name, stage.state]));
  $("stages").replaceChildren(...status.stages.map(stageItem));
  const owner = status.owner;
  $("holder").textContent = owner
    ? `${owner.command || "lorahf"} is working in this folder (pid ${owner.pid}, since ${when(owner.since)})`
    : "No lorahf process is working in this folder.";
  orderSections();
  metrics.stages.forEach((section, name) => showStageState(section, name));
}

function when(since) {
  return String(since || "?").replace("T", " ");  // 2026-12-01T16:00:00+0000, as lorahf.runs writes it
}

function stageItem(stage) {
  const { icon, detail } = stageLabel(stage);
  const item = el("li", `stage stage-${stage.state}`);
  item.dataset.stage = stage.name;
  const name = el(metrics.stages.has(stage.name) ? "a" : "span", "stage-name", stage.name);
  if (name.tagName === "A") name.href = `#${sectionId(stage.name)}`;  // to its charts
  item.append(el("span", "stage-icon", icon), name, el("span", "stage-detail", detail));
  if (stage.finished_at) item.title = `finished ${stage.finished_at}`;
  return item;
}

function stageLabel(stage) {
  if (stage.state === "done") return { icon: "✓", detail: stage.wall_s == null ? "done" : duration(stage.wall_s) };
  if (stage.state === "running") return { icon: "", detail: "running" };
  return { icon: "", detail: metrics.stages.has(stage.name) ? "stopped" : "not started" };
}

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, "0")} min`;
}

// ------------------------------------------------------------------------------------------------ report.md
async function loadReport() {
  const report = await getJSON("api/report");
  const body = $("report-body");
  if (report.html === null) {
    body.replaceChildren(missingReport());
    $("report-updated").textContent = "";
    return;
  }
  body.innerHTML = report.html;  // markdown-it with raw HTML off: escaped (see the top of this file)
  body.querySelectorAll("table").forEach(scrollable);
  body.querySelectorAll("td").forEach(markVerdict);
  const written = new Date(report.updated * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  $("report-updated").textContent = `report.md · written ${written}`;
}

function missingReport() {
  const note = el("div", "empty");
  note.append(el("p", "empty-title", "No report.md yet"));
  const how = el("p", "muted");
  how.append("A run writes it when it finishes; ", el("code", "", "lorahf report RUN"),
    " writes it now from the stages done so far. The metrics below are live.");
  note.append(how);
  return note;
}

function scrollable(table) {
  const wrap = el("div", "table-wrap");
  table.replaceWith(wrap);
  wrap.append(table);
}

function markVerdict(cell) {
  const verdict = { "✓": "ok", "✗": "bad" }[cell.textContent.trim()];
  if (verdict) cell.classList.add("verdict", `verdict-${verdict}`);
}

// ------------------------------------------------------------------------------------------------ metrics
function addRow(row) {
  const step = Number(row.step);
  if (!Number.isFinite(step)) return;
  const stage = String(row.stage ?? "?");
  for (const [name, value] of Object.entries(row)) {
    if (name === "stage" || name === "step" || typeof value !== "number" || !Number.isFinite(value)) continue;
    const chart = chartFor(stage, name);
    chart.points.push([step, value]);
    chart.section.lastStep = Math.max(chart.section.lastStep, step);
    metrics.dirty.add(chart);
  }
}

function forgetMetrics() {
  metrics.stages.clear();
  metrics.dirty.clear();
  metrics.lines = 0;
  $("metric-stages").replaceChildren();
}

function sectionFor(stage) {
  let section = metrics.stages.get(stage);
  if (section) return section;
  const node = el("section", "card stage-metrics");
  node.id = sectionId(stage);
  node.dataset.stage = stage;
  const head = el("header", "stage-head");
  const title = el("h3", "", stage);
  const state = el("span", "stage-state");
  const meta = el("span", "muted small");
  head.append(title, state, meta);
  const grid = el("div", "charts");
  node.append(head, grid);
  section = { node, grid, state, meta, charts: new Map(), lastStep: -Infinity };
  metrics.stages.set(stage, section);
  $("metric-stages").append(node);
  orderSections();
  showStageState(section, stage);
  return section;
}

function sectionId(stage) {
  return `metrics-${stage}`;
}

function showStageState(section, stage) {
  const state = stageStates.get(stage);
  const text = { done: "✓ done", running: "running" }[state] || (state ? "stopped" : "");
  section.state.textContent = text;
  section.state.className = `stage-state stage-state-${state || "unknown"}`;
}

function orderSections() {
  const rank = (name) => (stageOrder.includes(name) ? stageOrder.indexOf(name) : stageOrder.length);
  const names = [...metrics.stages.keys()].sort((a, b) => rank(a) - rank(b));
  const parent = $("metric-stages");
  names.forEach((name) => parent.append(metrics.stages.get(name).node));  // append moves a node already there
}

function chartFor(stage, name) {
  const section = sectionFor(stage);
  let chart = section.charts.get(name);
  if (chart) return chart;
  const figure = el("figure", "chart");
  figure.dataset.stage = stage;
  figure.dataset.metric = name;
  const caption = el("figcaption");
  const label = el("span", "chart-name", name);
  label.title = `${stage} · ${name}`;
  const value = el("span", "chart-value");
  caption.append(label, value);
  const plot = svg("svg", { viewBox: `0 0 ${BOX.width} ${BOX.height}`, role: "img" });
  figure.append(caption, plot);
  chart = { section, figure, value, plot, points: [] };
  section.charts.set(name, chart);
  placeChart(section, name, figure);
  return chart;
}

function placeChart(section, name, figure) {
  const later = [...section.charts.keys()].filter((other) => other > name).sort()[0];
  section.grid.insertBefore(figure, later === undefined ? null : section.charts.get(later).figure);
}

// ------------------------------------------------------------------------------------------------ a chart
function drawChart(chart) {
  const points = chart.points.slice().sort((a, b) => a[0] - b[0]);
  const steps = extent(points.map((point) => point[0]));
  const values = extent(points.map((point) => point[1]));
  const x = scale(...steps, BOX.left, BOX.width - BOX.right);
  const y = scale(...values, BOX.height - BOX.bottom, BOX.top);
  const last = chart.points[chart.points.length - 1];  // the latest logged, shown large beside the name

  chart.plot.replaceChildren(...axes(steps, values, y), ...trace(points, x, y),
    svg("circle", { class: "last", cx: x(last[0]), cy: y(last[1]), r: 3.2 }));
  const [low, high] = values.map(number);
  chart.plot.setAttribute("aria-label", `${chart.figure.dataset.metric}: ${points.length} points, ${low} to ${high}`);
  chart.value.textContent = number(last[1]);
  chart.value.title = `step ${last[0]}`;
  chart.figure.dataset.points = String(points.length);
  const section = chart.section;
  section.meta.textContent = `step ${section.lastStep} · ${section.charts.size} metrics`;
}

function axes([firstStep, lastStep], [low, high], y) {
  const right = BOX.width - BOX.right;
  const level = (value) => [
    svg("line", { class: "grid", x1: BOX.left, x2: right, y1: y(value), y2: y(value) }),
    svg("text", { class: "tick", x: BOX.left - 6, y: y(value) + 3.5, "text-anchor": "end" }, number(value)),
  ];
  return [
    ...level(high),
    ...(low === high ? [] : level(low)),
    svg("text", { class: "tick", x: BOX.left, y: BOX.height - 4, "text-anchor": "start" }, `step ${firstStep}`),
    svg("text", { class: "tick", x: right, y: BOX.height - 4, "text-anchor": "end" }, String(lastStep)),
  ];
}

function trace(points, x, y) {
  const parts = [];
  const line = points.map(([step, value]) => `${x(step).toFixed(1)},${y(value).toFixed(1)}`).join(" ");
  if (points.length > 1) {
    const baseline = BOX.height - BOX.bottom;
    const [start, end] = [points[0][0], points[points.length - 1][0]].map((step) => x(step).toFixed(1));
    const area = `${start},${baseline} ${line} ${end},${baseline}`;
    parts.push(svg("polygon", { class: "area", points: area }), svg("polyline", { class: "line", points: line }));
  }
  if (points.length <= DOTS_UP_TO) {
    for (const [step, value] of points) parts.push(svg("circle", { class: "dot", cx: x(step), cy: y(value), r: 2.2 }));
  }
  return parts;
}

function extent(values) {
  let low = Infinity, high = -Infinity;  // not Math.min(...values): a long run's series would overflow the stack
  for (const value of values) {
    if (value < low) low = value;
    if (value > high) high = value;
  }
  return [low, high];
}

function scale(from, to, start, end) {
  if (from === to) return () => (start + end) / 2;  // one value: drawn across the middle
  return (value) => start + ((value - from) / (to - from)) * (end - start);
}

function number(value) {
  const size = Math.abs(value);
  if (value === 0) return "0";
  if (size >= 1e5 || size < 1e-3) return value.toExponential(2).replace(/\.?0+e/, "e").replace("e+", "e");
  if (size >= 100) return String(Math.round(value));
  return String(Number(value.toPrecision(4)));
}

tick();
