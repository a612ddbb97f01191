// The page of `vatt serve`: a text query or a dropped file goes to /api/search, the results become cards, and a
// click plays the matched segment of the source file (/media/ID#t=start,end, a W3C media fragment; the player also
// pauses itself at the end). Text from the index (names, captions) is set with textContent, never parsed as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);
let limits = { max_k: 100, max_upload_bytes: Infinity };

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the server cannot be reached (is vatt serve still running?)");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  }
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message ? String(message).split("\n")[0] : "";
  box.hidden = !message;
}

function setBusy(busy, text) {
  $("#search-button").disabled = busy;
  document.body.classList.toggle("busy", busy);
  if (text !== undefined) $("#status").textContent = text;
}

function seconds(value) {
  return value === null || value === undefined ? "?" : Number(value).toFixed(1);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function card(result) {
  const node = element("article", "result");
  node.tabIndex = 0;
  node.dataset.rank = result.rank;
  if (result.media) node.dataset.media = result.media;
  const frame = element("div", "frame");
  if (result.thumbnail) {
    const img = element("img", "thumb");
    img.src = result.thumbnail;
    img.alt = `${result.source} at ${seconds(result.start)} s`;
    frame.append(img);
  } else {
    frame.append(element("span", "no-thumb", result.kind === "audio" ? "audio" : "no thumbnail"));
  }
  frame.append(element("span", "rank", `#${result.rank}`));
  const meta = element("div", "meta");
  meta.append(element("div", "source", result.source));
  const line = element("div", "line");
  line.append(element("span", "time", `${seconds(result.start)}–${seconds(result.end)} s`));
  line.append(element("span", "score", Number(result.score).toFixed(3)));
  meta.append(line);
  const text = result.caption ?? result.label;
  if (text !== undefined && text !== null) meta.append(element("div", "caption", String(text)));
  node.append(frame, meta);
  node.addEventListener("click", () => play(node, result));
  node.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      play(node, result);
    }
  });
  return node;
}

function stopOthers(except) {
  for (const player of document.querySelectorAll("#results video, #results audio")) {
    if (player !== except) player.pause();
  }
}

function play(node, result) {
  if (!result.media) {
    showError(`${result.source}: this index keeps no playable file for it`);
    return;
  }
  const frame = node.querySelector(".frame");
  const tag = result.kind === "audio" ? "audio" : "video";
  let player = frame.querySelector(tag);
  const start = Number(result.start ?? 0);
  const end = result.end === null || result.end === undefined ? Infinity : Number(result.end);
  if (!player) {
    player = element(tag, "player");
    player.controls = true;
    player.preload = "auto";
    player.addEventListener("timeupdate", () => {
      if (player.currentTime >= end) player.pause();
    });
    player.addEventListener("error", () => showError(`${result.source}: cannot be played (moved, changed, or a ` +
                                                     "format this browser does not play)"));
    player.addEventListener("click", (event) => event.stopPropagation());
    frame.querySelector("img.thumb, .no-thumb")?.remove();
    frame.prepend(player);
    player.src = `${result.media}#t=${start},${Number.isFinite(end) ? end : ""}`;
  } else {
    player.currentTime = start;
  }
  stopOthers(player);
  showError("");
  player.play().catch((err) => {
    if (err.name !== "AbortError") showError(`${result.source}: ${err.message}`);
  });
}

function describe(query) {
  if (query.text !== undefined) return `“${query.text}”`;
  if (query.video !== undefined) return `the video ${query.video}`;
  if (query.audio !== undefined) return `the audio of ${query.audio}`;
  return "the query";
}

function render(answer) {
  const grid = $("#results");
  grid.replaceChildren(...answer.results.map(card));
  const space = answer.space === "vt" ? "video-text space" : "video-audio space";
  $("#status").textContent = `${answer.results.length} results for ${describe(answer.query)} (${space})`;
}

function topK() {
  const k = Number($("#top-k").value || 10);
  return Number.isInteger(k) ? k : 10;
}

async function run(request) {
  showError("");
  setBusy(true, "searching…");
  try {
    render(await request());
  } catch (err) {
    $("#status").textContent = "";
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

function searchText(event) {
  event.preventDefault();
  const params = new URLSearchParams({ q: $("#query").value, k: String(topK()) });
  run(() => api(`/api/search?${params}`));
}

function searchFile(file) {
  if (!file) return;
  if (file.size > limits.max_upload_bytes) {
    showError(`${file.name} is larger than the server's limit of ${limits.max_upload_bytes / 1e6} MB`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  run(() => api(`/api/search?k=${topK()}`, { method: "POST", body: form }));
}

function setUpDropZone() {
  const zone = $("#drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    searchFile(event.dataTransfer.files[0]);
  });
  $("#file-input").addEventListener("change", (event) => {
    searchFile(event.target.files[0]);
    event.target.value = "";
  });
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    limits = info;
    $("#top-k").max = String(info.max_k);
    $("#query").maxLength = info.max_text_chars;
    const model = info.model ? `, model ${info.model}` : "";
    const files = info.files ? ` from ${info.files} files` : "";
    $("#info").textContent = `index ${info.index}: ${info.windows} windows${files}${model}`;
    if (!info.queries.includes("text")) {
      $("#query").disabled = true;
      $("#query").placeholder = "this index's model has no tokenizer: drop a file instead";
    }
  } catch (err) {
    $("#info").textContent = "";
    showError(err.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search-form").addEventListener("submit", searchText);
  setUpDropZone();
  loadInfo();
});
