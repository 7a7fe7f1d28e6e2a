// The vlmkit service page: plain JavaScript, no build step, no external resources.
"use strict";

const KEY_STORAGE = "vlmkit.apiKey";
const $ = (id) => document.getElementById(id);
let thumbnailUrls = [];  // object URLs of the shown thumbnails, released when new results replace them

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

// The API's error body as one readable line: {"detail": "..."} or FastAPI's list of field errors.
function errorMessage(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => {
      const where = (item.loc || []).filter((part) => part !== "body").join(".");
      return where ? `${where}: ${item.msg}` : item.msg;
    }).join("; ");
  }
  return `the server answered ${status}`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  const body = isJson ? await response.json() : null;
  if (!response.ok) {
    if (response.status === 401) showKeyForm();
    throw new ApiError(response.status, errorMessage(response.status, body));
  }
  return body;
}

function show(element, visible) {
  element.hidden = !visible;
}

function setError(id, message) {
  const element = $(id);
  element.textContent = message || "";
  show(element, Boolean(message));
}

// Runs an async action for a panel: its button is disabled meanwhile, and a failure is shown in its error line.
async function guarded(errorId, button, action) {
  setError(errorId, "");
  if (button) button.disabled = true;
  try {
    await action();
  } catch (error) {
    setError(errorId, error instanceof ApiError ? error.message : `could not reach the server (${error.message})`);
  } finally {
    if (button) button.disabled = false;
  }
}

function showKeyForm() {
  show($("key-form"), true);
  $("api-key").value = apiKey();
}

// --- model and capabilities -------------------------------------------------------------------------------
async function loadHealth() {
  setError("global-error", "");
  let health;
  try {
    health = await api("/v1/healthz");
  } catch (error) {
    $("model-info").textContent = "not connected";
    const hint = error.status === 401 ? " Enter the server's API key above." : "";
    setError("global-error", `${error.message}.${hint}`);
    return;
  }
  const index = health.index ? ` · index of ${health.index.count} images` : " · no index";
  $("model-info").textContent = `${health.model} · ${health.capabilities.join(", ")}${index}`;
  const can = (name) => health.capabilities.includes(name);
  const embeds = can("encode_text") || can("encode_image");
  show($("search-panel"), Boolean(health.index) && embeds);
  show($("no-index-panel"), !health.index && embeds);
  show($("search-form"), can("encode_text"));
  show($("search-drop"), can("encode_image"));
  show($("classify-panel"), can("encode_image") && can("encode_text"));
  show($("caption-panel"), can("generate"));
  show($("ask-panel"), can("answer"));
}

// --- image inputs: drag and drop or file picker --------------------------------------------------------------
function imageInput(dropId, inputId, previewId, onFile) {
  const drop = $(dropId);
  const input = $(inputId);
  const accept = (file) => {
    if (!file) return;
    if (previewId) {
      const preview = $(previewId);
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(file);
      show(preview, true);
    }
    onFile(file);
  };
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    accept(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  input.addEventListener("change", () => accept(input.files[0]));
}

function chosenFile(inputId, state) {
  const file = state[inputId];
  if (!file) throw new ApiError(0, "choose an image first");
  return file;
}

// --- search -------------------------------------------------------------------------------------------------
async function thumbnailUrl(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) return "";
  const url = URL.createObjectURL(await response.blob());
  thumbnailUrls.push(url);
  return url;
}

function renderResults(results, started) {
  thumbnailUrls.forEach((url) => URL.revokeObjectURL(url));
  thumbnailUrls = [];
  const grid = $("search-results");
  grid.replaceChildren();
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  $("search-status").textContent = results.length ? `${results.length} results in ${seconds} s` : "no results";
  for (const result of results) {
    const card = document.createElement("figure");
    card.className = "result";
    card.dataset.id = result.id;
    card.title = `${result.caption || result.key} (${result.width}×${result.height})`;
    const image = document.createElement("img");
    image.alt = result.caption || result.key;
    image.loading = "lazy";
    thumbnailUrl(result.thumbnail).then((url) => { if (url) image.src = url; });
    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = result.score.toFixed(3);
    const text = document.createElement("span");
    text.className = "caption";
    text.textContent = result.caption || result.key;
    caption.append(score, text);
    card.append(image, caption);
    grid.append(card);
  }
}

function searchCount() {
  const k = parseInt($("search-k").value, 10);
  return Number.isFinite(k) ? Math.min(Math.max(k, 1), 100) : 12;
}

function setupSearch() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("search-input").value.trim();
    if (!text) {
      setError("search-error", "type what you are looking for");
      return;
    }
    const button = event.submitter || $("search-form").querySelector("button");
    guarded("search-error", button, async () => {
      const started = performance.now();
      $("search-status").textContent = "searching…";
      const body = await api("/v1/search", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text, k: searchCount() }),
      });
      renderResults(body.results, started);
    });
  });
  imageInput("search-drop", "search-file", null, (file) => {
    guarded("search-error", null, async () => {
      const started = performance.now();
      $("search-status").textContent = `searching for images like ${file.name}…`;
      const form = new FormData();
      form.append("image", file);
      form.append("k", String(searchCount()));
      const body = await api("/v1/search", { method: "POST", body: form });
      renderResults(body.results, started);
    });
  });
}

// --- classify, caption, ask ---------------------------------------------------------------------------------
function renderBars(labels) {
  const bars = $("classify-bars");
  bars.replaceChildren();
  for (const { label, score } of labels) {
    const row = document.createElement("div");
    row.className = "bar";
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = score.toFixed(3);
    row.append(name, track, value);
    bars.append(row);
  }
}

function setupImagePanels() {
  const files = {};
  for (const name of ["classify", "caption", "ask"]) {
    imageInput(`${name}-drop`, `${name}-file`, `${name}-preview`, (file) => { files[`${name}-file`] = file; });
  }
  $("classify-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded("classify-error", event.submitter, async () => {
      const labels = $("classify-labels").value.trim();
      if (!labels) throw new ApiError(0, "type a few labels, separated by commas");
      const form = new FormData();
      form.append("image", chosenFile("classify-file", files));
      form.append("labels", labels);
      renderBars((await api("/v1/classify", { method: "POST", body: form })).labels);
    });
  });
  $("caption-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded("caption-error", event.submitter, async () => {
      const form = new FormData();
      form.append("image", chosenFile("caption-file", files));
      const { caption } = await api("/v1/caption", { method: "POST", body: form });
      $("caption-output").textContent = caption || "(the model returned an empty caption)";
    });
  });
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded("ask-error", event.submitter, async () => {
      const question = $("ask-question").value.trim();
      if (!question) throw new ApiError(0, "type a question");
      const form = new FormData();
      form.append("image", chosenFile("ask-file", files));
      form.append("question", question);
      const { answer } = await api("/v1/ask", { method: "POST", body: form });
      $("ask-output").textContent = answer || "(the model returned an empty answer)";
    });
  });
}

// --- start --------------------------------------------------------------------------------------------------
async function start() {
  document.querySelectorAll("[data-pick]").forEach((button) => {
    button.addEventListener("click", () => $(button.dataset.pick).click());
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadHealth();
  });
  setupSearch();
  setupImagePanels();
  try {
    const liveness = await (await fetch("/healthz")).json();
    if (liveness.api_key_required) showKeyForm();
  } catch (error) {
    setError("global-error", `could not reach the server (${error.message})`);
    return;
  }
  await loadHealth();
}

start();
