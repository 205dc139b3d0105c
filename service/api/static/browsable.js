// The browsable API's behaviour: the visitor's key (sessionStorage, sent as a bearer
// header), pages fetched with it and swapped in, and the forms sent as JSON.
"use strict";

const KEY = "sibyl.key";
let keyTried = false; // this page was fetched with the stored key already

function key() { return sessionStorage.getItem(KEY); }

function headers(extra) {
  const all = Object.assign({}, extra);
  if (key()) all["Authorization"] = "Bearer " + key();
  return all;
}

async function load(url, push) {
  // Only Sibyl's own pages are put in place (X-Sibyl-Page): an answer of any other kind
  // (JSON, whose strings a caller wrote, or a file) is shown as text, never parsed as a
  // page. ?format= is dropped so that Accept asks for the page.
  const target = new URL(url, location.href);
  target.searchParams.delete("format");
  url = target.pathname + target.search;
  const response = await fetch(url, { headers: headers({ Accept: "text/html" }) });
  if (response.headers.get("X-Sibyl-Page") !== "1") {
    show(response.status, await response.json().catch(() => null));
    return;
  }
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  document.title = page.title;
  document.body.replaceWith(page.body);
  if (push) history.pushState(null, "", url);
  start();
}

async function send(method, url, body, extra) {
  const options = { method: method, headers: headers(Object.assign({ Accept: "application/json" }, extra)) };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, options);
  let answer = null;
  try { answer = await response.json(); } catch (error) { answer = null; }
  return { status: response.status, answer: answer };
}

function show(status, answer, extra) {
  const box = document.getElementById("result");
  box.hidden = false;
  box.replaceChildren();
  const head = document.createElement("p");
  head.className = "status";
  const code = document.createElement("span");
  code.className = "code code-" + Math.floor(status / 100);
  code.textContent = String(status);
  head.append(code);
  box.append(head);
  if (extra) box.append(extra);
  const pre = document.createElement("pre");
  pre.className = "json";
  pre.textContent = JSON.stringify(answer, null, 2);
  box.append(pre);
  box.scrollIntoView({ block: "nearest" });
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

function predictionsTable(job) {
  const table = document.createElement("table");
  table.className = "predictions";
  const head = table.insertRow();
  for (const name of ["#", "label", "score"]) {
    const cell = document.createElement("th");
    cell.textContent = name;
    head.append(cell);
  }
  for (const prediction of job.predictions || []) {
    const row = table.insertRow();
    row.insertCell().textContent = String(prediction.index);
    row.insertCell().textContent = prediction.label === null ? JSON.stringify(prediction.output) : prediction.label;
    row.insertCell().textContent = prediction.score === null ? "" : prediction.score.toFixed(3);
  }
  return table;
}

function jsonField(form, name, fallback) {
  const text = form.elements[name].value.trim();
  if (!text) return fallback;
  return JSON.parse(text);
}

// The body of a form built from the schema (templates/browsable/forms/schema.html): each
// input read as its field's kind; an empty one is left out (a change sends null for a
// nullable field); multipart, with JSON values as text, when the form holds a file.
function schemaFormBody(form) {
  const body = {};
  for (const element of form.querySelectorAll("[data-kind]")) {
    const kind = element.dataset.kind;
    if (kind === "checkbox") { body[element.name] = element.checked; continue; }
    if (kind === "file") { if (element.files[0]) body[element.name] = element.files[0]; continue; }
    const raw = element.value.trim();
    if (!raw) {
      if (form.id === "change-form" && element.dataset.nullable === "true") body[element.name] = null;
      continue;
    }
    body[element.name] = kind === "json" ? JSON.parse(raw) : kind === "number" ? Number(raw) : raw;
  }
  if (form.dataset.multipart !== "true") return body;
  const data = new FormData();
  for (const [name, value] of Object.entries(body)) {
    data.set(name, value instanceof File || typeof value === "string" ? value : JSON.stringify(value));
  }
  return data;
}

function csvRows(text) {
  return text.trim().split(/\r?\n/).filter((line) => line.trim()).map(
    (line) => line.split(",").map((cell) => Number(cell.trim())));
}

function describeModel(form) {
  const option = form.elements.model.selectedOptions[0];
  const hint = document.getElementById("model-signature");
  if (!option || !hint) return;
  const inputs = JSON.parse(option.dataset.signature || "[]");
  const shapes = inputs.map((spec) => spec.name + ": " + spec.dtype + " " + JSON.stringify(spec.shape)).join("; ");
  hint.textContent = "Inputs: " + shapes + (option.dataset.labels ? " · labels: " + option.dataset.labels : "");
}

const forms = {
  "key-form": async (form) => {
    sessionStorage.setItem(KEY, form.elements.key.value.trim());
    keyTried = false;
    await load(location.href, false);
  },
  "filter-form": async (form) => {
    const params = new URLSearchParams();
    for (const name of ["where", "sort", "max_results"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    const query = params.toString();
    await load(form.dataset.url + (query ? "?" + query : ""), true);
  },
  "job-form": async (form) => {
    const text = form.elements.inputs.value;
    const inputs = form.elements.inputs_as.value === "csv" ? csvRows(text) : JSON.parse(text);
    const body = Object.assign(schemaFormBody(form), {
      model: form.elements.model.value, inputs: inputs, tags: jsonField(form, "tags", {}) });
    const url = "/v1/jobs" + (form.elements.wait.checked ? "?wait=30" : "");
    const { status, answer } = await send("POST", url, body);
    let extra = null;
    if (status === 201) {
      extra = document.createElement("div");
      extra.append(link("/v1/jobs/" + answer._id, "Open job " + answer._id));
      if (answer.predictions) extra.append(predictionsTable(answer));
    }
    show(status, answer, extra);
  },
  "create-form": async (form) => {
    const { status, answer } = await send("POST", form.dataset.url, schemaFormBody(form));
    const created = status === 201 && answer && answer._id;
    show(status, answer, created ? link(form.dataset.url + "/" + answer._id, "Open " + answer._id) : null);
  },
  "change-form": async (form) => {
    const { status, answer } = await send("PATCH", document.body.dataset.url, schemaFormBody(form),
      { "If-Match": document.body.dataset.etag });
    if (status < 300) await load(location.href, false);
    else show(status, answer);
  },
  "key-create-form": async (form) => {
    const body = { role: form.elements.role.value, name: form.elements.name.value.trim() };
    if (form.elements.owner.value.trim()) body.owner = form.elements.owner.value.trim();
    const { status, answer } = await send("POST", "/v1/keys", body);
    show(status, answer);
  },
  "raw-form": async (form) => {
    const method = form.elements.method.value;
    const text = form.elements.body.value.trim();
    const extra = method === "GET" ? {} : { "If-Match": document.body.dataset.etag };
    const { status, answer } = await send(method, document.body.dataset.url, text ? JSON.parse(text) : undefined, extra);
    show(status, answer);
  },
};

async function onSubmit(event) {
  const handler = forms[event.target.id];
  if (!handler) return;
  event.preventDefault();
  try {
    await handler(event.target);
  } catch (error) {
    show(0, { error: String(error.message || error) });
  }
}

async function onClick(event) {
  const target = event.target;
  if (target.id === "logout") {
    sessionStorage.removeItem(KEY);
    location.reload();
    return;
  }
  if (target.id === "delete") {
    if (target.dataset.armed !== "true") {
      target.dataset.armed = "true";
      target.textContent = "Really delete?";
      return;
    }
    const { status, answer } = await send("DELETE", document.body.dataset.url, undefined,
      { "If-Match": document.body.dataset.etag });
    if (status === 204) await load(document.body.dataset.url.replace(/\/[^/]+$/, ""), true);
    else show(status, answer);
    return;
  }
  const anchor = target.closest("a");
  if (anchor && anchor.origin === location.origin && anchor.pathname.startsWith("/v1/media/")) {
    // A model's file: downloaded with the key, which a plain navigation would not send.
    event.preventDefault();
    const response = await fetch(anchor.href, { headers: headers({}) });
    if (!response.ok) {
      show(response.status, await response.json().catch(() => null));
      return;
    }
    const save = document.createElement("a");
    save.href = URL.createObjectURL(await response.blob());
    save.download = anchor.pathname.split("/").pop();
    save.click();
    URL.revokeObjectURL(save.href);
    return;
  }
  if (anchor && anchor.origin === location.origin && anchor.pathname.startsWith("/v1/")
      && !anchor.dataset.plain && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    await load(anchor.href, true);
  }
}

function start() {
  const body = document.body;
  const jobForm = document.getElementById("job-form");
  if (jobForm) {
    describeModel(jobForm);
    jobForm.elements.model.addEventListener("change", () => describeModel(jobForm));
  }
  if (body.dataset.authenticated === "false" && key()) {
    if (keyTried) {
      // The stored key was refused (revoked, or mistyped): ask again.
      sessionStorage.removeItem(KEY);
      keyTried = false;
    } else {
      keyTried = true;
      load(location.href, false);
    }
  } else if (body.dataset.live === "true") {
    const url = new URL(location.href);
    url.searchParams.set("wait", "10");
    setTimeout(() => load(url.pathname + url.search, false).then(() => history.replaceState(null, "", location.pathname)), 200);
  }
}

document.addEventListener("submit", onSubmit);
document.addEventListener("click", onClick);
window.addEventListener("popstate", () => load(location.href, false));
document.addEventListener("DOMContentLoaded", start);
