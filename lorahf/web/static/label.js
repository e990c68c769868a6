// lorahf's labelling page. Every text from the server is set with textContent, never as HTML.
"use strict";

const token = document.querySelector('meta[name="lorahf-token"]').content;
const tab = sessionStorage.getItem("lorahf-tab") || newTab();  // one id per tab, kept across reloads
let annotator = localStorage.getItem("lorahf-annotator") || "";
let current = null;  // the item on screen
let busy = false;    // a request is on its way: keys wait for its answer instead of acting on a stale item

const $ = (id) => document.getElementById(id);

function newTab() {
  const id = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
  sessionStorage.setItem("lorahf-tab", id);
  return id;
}

async function call(path, body) {
  const options = {headers: {"X-Lorahf-Token": token}};
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify({annotator, tab, ...body});
  }
  const url = body === undefined
    ? `${path}?${new URLSearchParams({annotator, tab})}`
    : path;
  const response = await fetch(url, options);
  const found = await response.json().catch(() => ({error: `the server answered ${response.status}`}));
  if (!response.ok && response.status !== 409) throw new Error(found.error || response.statusText);
  return found;
}

async function act(path, body, note) {
  if (busy) return;
  busy = true;
  document.body.classList.add("busy");
  try {
    const found = await call(path, body);
    show(found);
    say(found.error ? "That item was taken meanwhile; here is the next one." : note || "");
  } catch (error) {
    say(`Not saved: ${error.message}. Try again.`, true);
  } finally {
    busy = false;
    document.body.classList.remove("busy");
  }
}

function show(state) {
  const p = state.progress;
  if (p) {
    $("count").textContent = `${p.labelled} of ${p.total}` + (p.annotators.length > 1 ? ` · you ${p.mine}` : "");
    $("fill").style.width = `${p.total ? (100 * p.labelled) / p.total : 0}%`;
    $("agreement").textContent = p.agreement === null ? ""
      : `agreement ${Math.round(100 * p.agreement)}% on ${p.shared_items} shared item${p.shared_items === 1 ? "" : "s"}`;
  }
  $("source").textContent = state.source ? `pairs: ${state.source} · labels: ${state.file}` : "";
  current = state.item;
  $("work").hidden = !current;
  $("done").hidden = !!current;
  if (!current) {
    $("done-text").textContent = `${p ? p.labelled : 0} labels are in ${state.file}.`;
    return;
  }
  $("prompt").textContent = current.prompt;
  $("left-text").textContent = current.left;
  $("right-text").textContent = current.right;
  for (const id of ["prompt", "left-text", "right-text"]) $(id).scrollTop = 0;
}

function say(text, bad) {
  $("message").textContent = text;
  $("message").classList.toggle("bad", !!bad);
}

function flash(id) {
  const card = $(id);
  card.classList.add("picked");
  setTimeout(() => card.classList.remove("picked"), 180);
}

function choose(choice) {
  if (!current || busy) return;
  if (choice !== "tie") flash(choice);
  act("api/choose", {item: current.item, choice}, choice === "tie" ? "Tie saved." : "Saved.");
}

const keys = {
  "1": () => choose("left"), "2": () => choose("right"), "3": () => choose("tie"),
  "s": () => current && act("api/skip", {item: current.item}, "Skipped."),
  "u": () => act("api/undo", {}, "Undone: choose again."),
};

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const run = keys[event.key.toLowerCase()];
  if (run && annotator) {
    event.preventDefault();
    run();
  }
});

function signIn(name) {
  annotator = name.trim().slice(0, 40);
  if (!annotator) return;
  localStorage.setItem("lorahf-annotator", annotator);
  $("name").textContent = annotator;
  $("signin").hidden = true;
  act("api/next");
}

function askName() {
  if (annotator) call("api/release", {}).catch(() => {});
  current = null;
  $("work").hidden = true;
  $("done").hidden = true;
  $("signin").hidden = false;
  $("signin-name").value = annotator;
  $("signin-name").focus();
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("signin-name").value);
});
$("name").addEventListener("click", askName);
$("choose-left").addEventListener("click", () => choose("left"));
$("choose-right").addEventListener("click", () => choose("right"));
$("choose-tie").addEventListener("click", () => choose("tie"));
$("skip").addEventListener("click", keys.s);
$("undo").addEventListener("click", keys.u);
// the tab closes or reloads: its item is free for others at once (it comes back here on reload if still free)
window.addEventListener("pagehide", () => {
  if (annotator) {
    navigator.sendBeacon(`api/release?token=${encodeURIComponent(token)}`,
      new Blob([JSON.stringify({annotator, tab})], {type: "application/json"}));
  }
});

if (annotator) signIn(annotator); else askName();
