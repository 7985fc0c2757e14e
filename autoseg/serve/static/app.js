// autoseg viewer: upload, job list, and the three planes as PNG slices rendered by the server.
// Text from the server is only ever set with textContent, never parsed as HTML.
// Each result opens only with its token, which the server returns once, to the upload: this
// browser keeps its own tokens in localStorage and there is no list of everybody's results.
"use strict";

const $ = (id) => document.getElementById(id);
const HEADERS = { "X-Autoseg": "1" };
const TOKENS_KEY = "autoseg.tokens";
const state = { info: null, jobs: [], selected: null, shown: null, view: {}, classes: new Set(), confirm: null };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(describeError(body, response.status));
  return body;
}

// --- job tokens ---------------------------------------------------------------------------------

function tokens() {
  try { return JSON.parse(localStorage.getItem(TOKENS_KEY)) || {}; } catch (err) { return {}; }
}

function saveTokens(map) { localStorage.setItem(TOKENS_KEY, JSON.stringify(map)); }

function keepToken(id, token) { saveTokens({ ...tokens(), [id]: token }); }

function forgetTokens(ids) {
  const map = tokens();
  for (const id of ids) delete map[id];
  saveTokens(map);
}

function jobHeaders(id, extra = {}) { return { ...extra, "X-Autoseg-Token": tokens()[id] || "" }; }

// for images and links, which cannot send headers
function jobUrl(id, path, params = new URLSearchParams()) {
  params.set("token", tokens()[id] || "");
  return `/api/jobs/${id}${path}?${params}`;
}

function describeError(body, status) {
  if (body && body.error) return body.fix ? `${body.error}\nFix: ${body.fix}` : body.error;
  return `the server answered ${status}`;
}

function mib(bytes) { return `${Math.round(bytes / 1048576)} MiB`; }

function ago(seconds) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return new Date(seconds * 1000).toLocaleString();
}

// --- start -------------------------------------------------------------------------------------

async function start() {
  state.info = await api("/api/info");
  const info = state.info;
  $("model").textContent = `${info.dataset} · ${info.network} · folds ${info.folds.join(", ")}`;
  $("file").accept = info.accept;
  $("limits").textContent = `Limits: ${mib(info.limits.max_upload_bytes)} per upload, ` +
    `${mib(info.limits.max_decompressed_bytes)} decompressed, ${info.limits.max_queue} waiting.`;
  for (const name of info.windows) $("window").append(el("option", { value: name, textContent: name }));
  for (const c of info.classes) {
    state.classes.add(c.id);
    const box = el("input", { type: "checkbox", checked: true, value: String(c.id) });
    box.addEventListener("change", () => { box.checked ? state.classes.add(c.id) : state.classes.delete(c.id); drawAll(); });
    const swatch = el("span", { className: "swatch" });
    swatch.style.background = c.colour;
    $("classes").append(el("label", {}, box, swatch, c.name));
  }
  // the uncertainty layer: the entropy heat map instead of the labels, with its legend
  const stops = info.uncertainty.stops.map((s) => `${s.colour} ${Math.round(s.at * 100)}%`).join(", ");
  $("uncertainty-ramp").style.background = `linear-gradient(to right, ${stops})`;
  $("uncertainty-text").textContent = info.uncertainty.legend;
  $("uncertainty").addEventListener("change", () => {
    $("uncertainty-legend").hidden = !$("uncertainty").checked;
    drawAll();
  });
  $("window").addEventListener("change", drawAll);
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
    drawAll();
  });
  setUpUpload();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("job");
  await refreshJobs();
  const first = state.jobs.find((j) => j.id === wanted) || state.jobs.find((j) => j.state === "done") || state.jobs[0];
  if (first) select(first.id);
  poll();
}

async function poll() {
  try { await refreshJobs(); } catch (err) { /* the server may be restarting; try again */ }
  setTimeout(poll, 1000);
}

// --- upload ------------------------------------------------------------------------------------

function setUpUpload() {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
}

function uploadMessage(text, isError) {
  $("upload-message").textContent = text;
  $("upload-message").className = isError ? "error" : "";
}

function upload(file) {
  const limit = state.info.limits.max_upload_bytes;
  if (file.size > limit) {
    uploadMessage(`${file.name} is ${mib(file.size)}, over the server's limit of ${mib(limit)}.`, true);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  const xhr = new XMLHttpRequest();
  const bar = $("upload-progress");
  bar.hidden = false;
  bar.value = 0;
  uploadMessage(`Uploading ${file.name}…`, false);
  xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; });
  xhr.addEventListener("load", () => {
    bar.hidden = true;
    $("file").value = "";
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
    if (xhr.status === 202) {
      keepToken(body.id, body.token);
      uploadMessage(`Uploaded ${body.name}.`, false);
      state.jobs.unshift(body);
      select(body.id);
      refreshJobs();
    } else {
      uploadMessage(`${file.name} was refused: ${describeError(body, xhr.status)}`, true);
    }
  });
  xhr.addEventListener("error", () => {
    bar.hidden = true;
    uploadMessage(`${file.name} could not be sent (connection closed; is it over the size limit?)`, true);
  });
  xhr.open("POST", "/api/jobs");
  for (const [k, v] of Object.entries(HEADERS)) xhr.setRequestHeader(k, v);
  xhr.send(form);
}

// --- job list ----------------------------------------------------------------------------------

async function refreshJobs() {
  const answer = await api("/api/jobs/mine", { method: "POST", body: JSON.stringify({ tokens: tokens() }),
                                               headers: { ...HEADERS, "Content-Type": "application/json" } });
  if (answer.gone.length) forgetTokens(answer.gone);  // deleted here, elsewhere or by the retention limits
  state.jobs = answer.jobs;
  const list = $("jobs");
  list.replaceChildren(...state.jobs.map(jobItem));
  $("no-jobs").hidden = state.jobs.length > 0;
  if (state.selected) {
    const job = state.jobs.find((j) => j.id === state.selected);
    if (job) showJob(job); else clearViewer();
  }
}

function jobItem(job) {
  const del = el("button", { type: "button", textContent: state.confirm === job.id ? "Delete?" : "Delete",
                             title: "delete this result and its files" });
  if (state.confirm === job.id) del.className = "confirm";
  del.addEventListener("click", (e) => { e.stopPropagation(); deleteJob(job.id); });
  const item = el("li", { title: `${job.name}, uploaded ${ago(job.created)}` },
    el("span", { className: "name", textContent: job.name }),
    el("span", { className: `badge ${job.state}`, textContent: job.state }), del);
  item.dataset.id = job.id;
  if (job.id === state.selected) item.className = "selected";
  item.addEventListener("click", () => select(job.id));
  return item;
}

async function deleteJob(id) {
  if (state.confirm !== id) {  // first click asks, second click deletes
    state.confirm = id;
    await refreshJobs();
    return;
  }
  state.confirm = null;
  try {
    await api(`/api/jobs/${id}`, { method: "DELETE", headers: jobHeaders(id, HEADERS) });
    forgetTokens([id]);
  } catch (err) {
    uploadMessage(`Not deleted: ${err.message}`, true);
  }
  if (state.selected === id) state.selected = null;
  await refreshJobs();
}

function select(id) {
  state.selected = id;
  state.shown = null;
  history.replaceState(null, "", `#job=${id}`);
  for (const li of $("jobs").children) li.classList.toggle("selected", li.dataset.id === id);
  const job = state.jobs.find((j) => j.id === id);
  if (job) showJob(job);
}

function clearViewer() {
  state.selected = null;
  state.shown = null;
  for (const id of ["job-head", "progress-panel", "failed-panel", "result"]) $(id).hidden = true;
  $("empty").hidden = false;
}

// --- one job -----------------------------------------------------------------------------------

function showJob(job) {
  $("empty").hidden = true;
  $("job-head").hidden = false;
  $("job-name").textContent = job.name;
  $("job-state").textContent = job.state;
  $("job-state").className = `badge ${job.state}`;
  $("progress-panel").hidden = !(job.state === "queued" || job.state === "running");
  $("failed-panel").hidden = job.state !== "failed";
  $("result").hidden = job.state !== "done";
  if (job.state === "queued" || job.state === "running") showProgress(job);
  if (job.state === "failed") $("failed-panel").textContent = `The prediction failed: ${job.message}`;
  if (job.state === "done" && state.shown !== job.id) {
    state.shown = job.id;
    showResult(job);
  }
}

function showProgress(job) {
  const bar = $("job-progress");
  const text = $("job-progress-text");
  if (job.state === "queued") {
    bar.removeAttribute("value");
    text.textContent = `Waiting in the queue (position ${job.position || "?"}); one prediction runs at a time.`;
    return;
  }
  const elapsed = Date.now() / 1000 - job.started;
  const folds = state.info.folds.length;
  let line = `Predicting with the ensemble of ${folds} fold${folds > 1 ? "s" : ""}: ${Math.round(elapsed)} s`;
  if (job.estimate_s) {
    bar.value = Math.min(0.95, elapsed / job.estimate_s);
    line += ` of about ${Math.round(job.estimate_s)} s`;
  } else {
    bar.removeAttribute("value");
  }
  text.textContent = line;
}

async function showResult(job) {
  const planes = $("planes");
  planes.replaceChildren();
  state.view = {};
  for (const plane of state.info.planes) {
    const v = job.view[plane];
    const img = el("img", { alt: `${plane} slice with the segmentation` });
    const label = el("span", { className: "idx" });
    const slider = el("input", { type: "range", min: 0, max: v.count - 1, value: v.index });
    slider.setAttribute("aria-label", `${plane} slice`);
    state.view[plane] = { img, label, slider, loading: false, again: false };
    slider.addEventListener("input", () => draw(plane));
    const frame = el("div", { className: "frame" }, img);
    const fig = el("figure", {}, el("figcaption", {}, plane, label), frame, slider);
    fig.dataset.plane = plane;
    img.addEventListener("load", () => settle(plane));
    img.addEventListener("error", () => settle(plane));
    planes.append(fig);
  }
  $("dl-labels").href = jobUrl(job.id, "/files/labels.nii.gz");
  $("dl-report").href = jobUrl(job.id, "/files/report.json");
  $("dl-uncertainty").hidden = true;
  $("table-warning").hidden = true;
  $("uncertainty").disabled = false;
  drawAll();
  $("dl-meshes").replaceChildren();
  try {
    const report = await api(`/api/jobs/${job.id}/report`, { headers: jobHeaders(job.id) });
    fillTables(report);
    // a result kept from a server started with another model or --roi-model has another class table
    const table = report.label_table || {};
    const served = Object.fromEntries(state.info.classes.map((c) => [String(c.id), c.name]));
    const differs = Object.entries(table).some(([id, name]) => id !== "0" && served[id] !== name);
    $("table-warning").hidden = !differs;
    if (differs) {
      $("table-warning").textContent = "This result was made with another class table " +
        `(${Object.entries(table).filter(([id]) => id !== "0").map(([id, n]) => `${id} ${n}`).join(", ")}) ` +
        "than the served model's: the class names and colours shown do not match it.";
    }
    // the uncertainty map (normalised predictive entropy, 0..1); a result made without one has none
    const uncertainty = report.uncertainty && report.uncertainty.file;
    if (uncertainty) {
      $("dl-uncertainty").href = jobUrl(job.id, `/files/${encodeURIComponent(uncertainty)}`);
      $("dl-uncertainty").hidden = false;
    } else if ($("uncertainty").checked) {
      $("uncertainty").checked = false;
      $("uncertainty-legend").hidden = true;
      drawAll();
    }
    $("uncertainty").disabled = !uncertainty;
    // one STL surface per structure present (patient mm, LPS), for 3D Slicer and other planning viewers
    for (const [structure, file] of Object.entries(report.meshes || {})) {
      $("dl-meshes").append(el("a", { href: jobUrl(job.id, `/files/${encodeURIComponent(file)}`),
                                      textContent: `${structure} mesh (.stl)`, className: "dl-mesh" }));
    }
  } catch (err) {
    $("failed-panel").hidden = false;
    $("failed-panel").textContent = `The report could not be read: ${err.message}`;
  }
}

function sliceUrl(plane) {
  const v = state.view[plane];
  const params = new URLSearchParams({ window: $("window").value, opacity: $("opacity").value,
                                       classes: [...state.classes].sort().join(","),
                                       layer: $("uncertainty").checked ? "uncertainty" : "labels" });
  return jobUrl(state.shown, `/slices/${plane}/${v.slider.value}.png`, params);
}

function draw(plane) {
  const v = state.view[plane];
  v.label.textContent = `${Number(v.slider.value) + 1} / ${Number(v.slider.max) + 1}`;
  if (v.loading) { v.again = true; return; }  // one request per plane at a time: sliders stay smooth
  v.loading = true;
  v.img.dataset.loaded = "0";
  v.img.src = sliceUrl(plane);
}

function settle(plane) {
  const v = state.view[plane];
  v.loading = false;
  v.img.dataset.loaded = v.img.naturalWidth > 0 ? "1" : "0";
  if (v.again) { v.again = false; draw(plane); }
}

function drawAll() { for (const plane of Object.keys(state.view)) draw(plane); }

function fillTables(report) {
  const rows = state.info.classes.map((c) => {
    const swatch = el("span", { className: "swatch" });
    swatch.style.background = c.colour;
    const ml = report.volumes_ml[c.name];
    return el("tr", {}, el("td", {}, swatch, c.name),
              el("td", { className: "num", textContent: ml === undefined ? "–" : ml.toFixed(1) }));
  });
  $("volumes").tBodies[0].replaceChildren(...rows);
  const tumours = report.tumours;
  $("tumours").hidden = !tumours;
  if (!tumours) return;
  $("tumours").caption.textContent = `Tumours: ${tumours.count}` + (tumours.count > 20 ? " (largest 20 shown)" : "");
  const lesions = tumours.lesions.slice(0, 20).map((t, i) => el("tr", {},
    el("td", { textContent: String(i + 1) }),
    el("td", { className: "num", textContent: t.volume_ml.toFixed(2) }),
    el("td", { textContent: t.extent_mm.map((e) => e.toFixed(0)).join(" × ") })));
  $("tumours").tBodies[0].replaceChildren(...lesions);
}

start().catch((err) => uploadMessage(`The page could not start: ${err.message}`, true));
