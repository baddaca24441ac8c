// Behaviour of the faashub console pages: deploy, remove, invoke, the
// selection, redrive and purge of dead letters, live async-call status and
// the invocation chart.
//
// Every value shown is set with textContent or as an SVG attribute, never
// as HTML. Every request that changes state is JSON with the
// X-Faashub-Console header, which a cross-site form cannot send.
"use strict";

const FINAL_STATES = new Set(["succeeded", "failed", "dead-lettered", "cancelled"]);
const POLL_INTERVAL_MS = 500;
// A function page stops following an async call's state after this long, or
// after this many failed status requests in a row. Its calls table keeps
// refreshing.
const FOLLOW_MAX_MS = 10 * 60 * 1000;
const FOLLOW_MAX_FAILURES = 5;
const REFRESH_INTERVAL_MS = 2000;
const CHART_SAMPLES = 60;
const HEX_PREVIEW_BYTES = 256;

async function sendJson(method, url, document) {
  const response = await fetch(url, {
    method: method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Faashub-Console": "1" },
    body: document === undefined ? "{}" : JSON.stringify(document),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    data = { detail: "The gateway returned status " + response.status + " without JSON." };
  }
  return { ok: response.ok, status: response.status, data: data };
}

function showNotice(message, isError) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.className = isError ? "error" : "success";
  notice.hidden = false;
}

function detailOf(result) {
  return (result.data && result.data.detail) || "status " + result.status;
}

// Parse "KEY=VALUE" lines into an object; blank lines are skipped.
function parsePairs(text, separator, kind) {
  const pairs = {};
  for (const rawLine of text.split("\n")) {
    const line = rawLine.trim();
    if (!line) continue;
    const at = line.indexOf(separator);
    if (at <= 0) throw new Error("Invalid " + kind + " line '" + line + "': expected KEY" + separator + "VALUE.");
    pairs[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return pairs;
}

// Functions page.

function setUpFunctionsPage() {
  const form = document.getElementById("deploy");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = form.elements;
    let deployment;
    try {
      deployment = {
        service: fields.service.value.trim(),
        namespace: fields.namespace.value,
        image: fields.image.value.trim(),
        envProcess: fields.envProcess.value.trim(),
        envVars: parsePairs(fields.envVars.value, "=", "environment"),
        annotations: parsePairs(fields.annotations.value, "=", "annotation"),
        labels: parsePairs(fields.labels.value, "=", "label"),
      };
    } catch (error) {
      showNotice(error.message, true);
      return;
    }
    const result = await sendJson("POST", "/ui/api/functions", deployment);
    if (!result.ok) {
      showNotice("Deploy failed: " + detailOf(result), true);
      return;
    }
    showNotice("Deployed " + deployment.service + ".", false);
    window.setTimeout(() => window.location.reload(), 500);
  });

  for (const button of document.querySelectorAll("button[data-action=remove]")) {
    button.addEventListener("click", async () => {
      const row = button.closest("tr");
      const name = row.dataset.function;
      const namespace = row.dataset.namespace;
      if (!window.confirm("Remove function " + name + " from " + namespace + "?")) return;
      const url = "/ui/api/functions/" + encodeURIComponent(namespace) + "/" + encodeURIComponent(name);
      const result = await sendJson("DELETE", url);
      if (!result.ok) {
        showNotice("Remove failed: " + detailOf(result), true);
        return;
      }
      row.remove();
      showNotice("Removed " + name + ".", false);
    });
  }
}

// Function page.

function decodeBase64(text) {
  const binary = window.atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index++) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

function hexPreview(bytes) {
  const lines = [];
  const shown = Math.min(bytes.length, HEX_PREVIEW_BYTES);
  for (let offset = 0; offset < shown; offset += 16) {
    const row = [];
    for (let index = offset; index < Math.min(offset + 16, shown); index++) {
      row.push(bytes[index].toString(16).padStart(2, "0"));
    }
    lines.push(offset.toString(16).padStart(8, "0") + "  " + row.join(" "));
  }
  return lines.join("\n");
}

function showResponse(result) {
  document.getElementById("result").hidden = false;
  document.getElementById("result-status").textContent = String(result.status);
  const body = document.getElementById("result-headers").tBodies[0];
  body.replaceChildren();
  for (const [name, value] of result.headers) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = value;
  }
  const bytes = decodeBase64(result.body_base64);
  const size = document.getElementById("result-size");
  const bodyElement = document.getElementById("result-body");
  let text = null;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    text = null;
  }
  const cut = result.body_truncated ? " (only the first " + bytes.length + " bytes were kept)" : "";
  if (text === null) {
    size.textContent = "Binary body, " + result.body_size + " bytes" + cut + "; hex of the first " +
      Math.min(bytes.length, HEX_PREVIEW_BYTES) + " bytes:";
    bodyElement.textContent = hexPreview(bytes);
  } else {
    size.textContent = result.body_size + " bytes" + cut;
    bodyElement.textContent = text;
  }
}

function headerValue(headers, lowercaseName) {
  for (const [name, value] of headers) {
    if (name.toLowerCase() === lowercaseName) return value;
  }
  return null;
}

// Incremented by each invoke submit, so that only the newest call is followed.
let followGeneration = 0;

function sleep(milliseconds) {
  return new Promise((resolve) => window.setTimeout(resolve, milliseconds));
}

async function followCall(callId, generation) {
  const line = document.getElementById("async-call");
  const state = document.getElementById("async-call-state");
  document.getElementById("async-call-id").textContent = callId;
  line.hidden = false;
  const deadline = Date.now() + FOLLOW_MAX_MS;
  let failures = 0;
  for (;;) {
    let response = null;
    try {
      response = await fetch("/async-calls/" + encodeURIComponent(callId), { credentials: "same-origin" });
    } catch (error) {
      response = null;
    }
    if (generation !== followGeneration) return;
    if (response !== null && response.ok) {
      failures = 0;
      const status = await response.json();
      if (generation !== followGeneration) return;
      state.textContent = status.state;
      state.className = "state state-" + status.state;
      if (FINAL_STATES.has(status.state)) return;
    } else {
      failures += 1;
      const problem = response === null ? "network error" : "status " + response.status;
      state.className = "state";
      if (failures >= FOLLOW_MAX_FAILURES) {
        state.textContent = "stopped following: the status request failed " + failures +
          " times in a row (last: " + problem + "); see the calls table below";
        return;
      }
      state.textContent = "status unavailable (" + problem + ")";
    }
    if (Date.now() >= deadline) {
      state.textContent = state.textContent + " (stopped following after " + FOLLOW_MAX_MS / 60000 +
        " min; see the calls table below)";
      return;
    }
    await sleep(POLL_INTERVAL_MS);
    if (generation !== followGeneration) return;
  }
}

function setUpInvoke(base) {
  const form = document.getElementById("invoke");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = form.elements;
    let headers;
    try {
      headers = Object.entries(parsePairs(fields.headers.value, ":", "header"));
    } catch (error) {
      showNotice(error.message, true);
      return;
    }
    // Stop following the previous call, whatever this submit turns out to be.
    const generation = ++followGeneration;
    const mode = fields.mode.value;
    const callback = fields.callback.value.trim();
    if (mode === "async" && callback) headers.push(["X-Callback-Url", callback]);
    document.getElementById("async-call").hidden = true;
    const result = await sendJson("POST", base + "/invoke", {
      mode: mode,
      method: fields.method.value,
      path: fields.path.value.trim(),
      headers: headers,
      body: fields.body.value,
    });
    if (generation !== followGeneration) return;
    if (!result.ok) {
      showNotice("Invoke failed: " + detailOf(result), true);
      return;
    }
    document.getElementById("notice").hidden = true;
    showResponse(result.data);
    const callId = headerValue(result.data.headers, "x-call-id");
    if (mode === "async" && result.data.status === 202 && callId) {
      await followCall(callId, generation);
      await refreshCalls();
    }
  });
}

function callCell(row, text, className) {
  const cell = row.insertCell();
  cell.textContent = text === null || text === undefined ? "" : String(text);
  if (className) cell.className = className;
  return cell;
}

async function refreshCalls() {
  const page = document.body.dataset;
  const query = new URLSearchParams({ function: page.function, namespace: page.namespace, limit: "20" });
  const response = await fetch("/system/async-calls?" + query.toString(), { credentials: "same-origin" });
  if (!response.ok) return;
  const listing = await response.json();
  const body = document.getElementById("calls").tBodies[0];
  body.replaceChildren();
  for (const call of listing.calls) {
    const row = body.insertRow();
    row.dataset.callId = call.call_id;
    const id = document.createElement("code");
    id.textContent = call.call_id;
    row.insertCell().append(id);
    const state = document.createElement("span");
    state.className = "state state-" + call.state;
    state.textContent = call.state;
    row.insertCell().append(state);
    callCell(row, call.attempts, "number");
    callCell(row, call.last_status);
    callCell(row, call.accepted_at);
    callCell(row, call.finished_at);
  }
  if (!listing.calls.length) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 6;
    cell.className = "muted";
    cell.textContent = "No async calls found.";
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

// The rate lines of the chart, all in calls per second on the left axis.
// The class names match console.css and the legend on the page.
const CHART_SERIES = [
  { key: "sync", className: "rate", label: "/function/" },
  { key: "accepted", className: "accepted", label: "async accepted" },
  { key: "finished", className: "finished", label: "async finished" },
];

// Draw the rate lines and the share of errors (red, 0-100 %).
function drawChart(container, points) {
  const width = 600;
  const height = 160;
  const pad = 30;
  const svg = svgElement("svg", { viewBox: "0 0 " + width + " " + height, role: "img", class: "chart-svg" });
  const title = svgElement("title", {});
  const last = points.length ? points[points.length - 1] : { sync: 0, accepted: 0, finished: 0, errorShare: 0 };
  const now = CHART_SERIES.map((series) => last[series.key].toFixed(2) + " " + series.label).join(", ") +
    " calls/s, " + (last.errorShare * 100).toFixed(0) + " % errors";
  title.textContent = "Now: " + now;
  svg.append(title);
  const maxRate = Math.max(1, ...points.flatMap((point) => CHART_SERIES.map((series) => point[series.key])));
  svg.append(svgElement("line", { x1: pad, y1: height - pad, x2: width - 5, y2: height - pad, class: "axis" }));
  svg.append(svgElement("line", { x1: pad, y1: 5, x2: pad, y2: height - pad, class: "axis" }));
  const top = svgElement("text", { x: 2, y: 14, class: "label" });
  top.textContent = maxRate.toFixed(1);
  svg.append(top);
  const xOf = (index) => pad + (index * (width - pad - 5)) / (CHART_SAMPLES - 1);
  const yOf = (fraction) => height - pad - fraction * (height - pad - 5);
  for (const series of CHART_SERIES) {
    const line = points.map((point, index) => xOf(index) + "," + yOf(point[series.key] / maxRate)).join(" ");
    svg.append(svgElement("polyline", { points: line, class: series.className }));
  }
  const errorLine = points.map((point, index) => xOf(index) + "," + yOf(point.errorShare)).join(" ");
  svg.append(svgElement("polyline", { points: errorLine, class: "errors" }));
  const caption = svgElement("text", { x: pad + 5, y: height - 8, class: "label" });
  caption.textContent = "now: " + now + (last.notCounted ? "; some async outcomes were not counted" : "");
  svg.append(caption);
  container.replaceChildren(svg);
}

// Return the totals of one metrics sample that the chart takes differences of.
function chartTotals(sample) {
  const calls = sample.async_calls || {};
  const finished = calls.finished || {};
  const asyncFailed = (finished.failed || 0) + (finished["dead-lettered"] || 0);
  return {
    sync: sample.total,
    syncErrors: sample.server_errors,
    accepted: calls.accepted || 0,
    finished: (finished.succeeded || 0) + asyncFailed,
    asyncErrors: asyncFailed,
    notCounted: calls.not_counted || 0,
  };
}

// Return current - previous, or current when the total went down because
// the gateway restarted and its counters began again at zero.
function increase(current, previous) {
  return current >= previous ? current - previous : current;
}

function setUpChart(base) {
  const container = document.getElementById("chart");
  const points = [];
  let previous = null;
  let previousAt = 0;
  async function sample() {
    const response = await fetch(base + "/metrics", { credentials: "same-origin" });
    if (!response.ok) return;
    const counters = await response.json();
    const current = chartTotals(counters);
    if (previous !== null) {
      const seconds = Math.max(counters.at - previousAt, 0.001);
      const change = {};
      for (const key of Object.keys(current)) change[key] = increase(current[key], previous[key]);
      const ended = change.sync + change.finished;
      points.push({
        sync: change.sync / seconds,
        accepted: change.accepted / seconds,
        finished: change.finished / seconds,
        errorShare: ended > 0 ? (change.syncErrors + change.asyncErrors) / ended : 0,
        notCounted: change.notCounted > 0,
      });
      if (points.length > CHART_SAMPLES) points.shift();
    }
    previous = current;
    previousAt = counters.at;
    drawChart(container, points);
  }
  sample();
  window.setInterval(sample, REFRESH_INTERVAL_MS);
}

function setUpFunctionPage() {
  const page = document.body.dataset;
  const base = "/ui/api/functions/" + encodeURIComponent(page.namespace) + "/" + encodeURIComponent(page.function);
  setUpInvoke(base);
  setUpChart(base);
  window.setInterval(refreshCalls, REFRESH_INTERVAL_MS);
}

// Dead-letters page.

function deadLetterRows() {
  return Array.from(document.querySelectorAll("#dead-letters tbody tr"));
}

// Keep the page's counts and the select-all box true to the rows left.
function updateDeadLetterCounts(stored) {
  const rows = deadLetterRows();
  const boxes = rows.map((row) => row.querySelector("input[name=selected]"));
  const checked = boxes.filter((box) => box.checked).length;
  const shownCount = document.getElementById("shown-count");
  if (shownCount) shownCount.textContent = String(rows.length);
  const storedCount = document.getElementById("stored-count");
  if (storedCount && typeof stored === "number") storedCount.textContent = String(stored);
  const selectedCount = document.getElementById("selected-count");
  if (selectedCount) selectedCount.textContent = checked + " selected";
  const selectPage = document.getElementById("select-page");
  if (selectPage) {
    selectPage.checked = boxes.length > 0 && checked === boxes.length;
    selectPage.indeterminate = checked > 0 && checked < boxes.length;
  }
}

// Redrive or purge the dead letters of `rows`, selected by their stream
// sequences so that each row acts on its own dead letter only, then remove
// the rows that the response lists.
async function actOnDeadLetters(action, rows) {
  // NOTE: JavaScript numbers are exact up to 2**53, so a larger sequence
  // would be sent rounded.
  const seqs = [...new Set(rows.map((row) => Number(row.dataset.seq)))];
  if (!seqs.length) {
    showNotice("Select at least one dead letter.", true);
    return;
  }
  if (action === "purge" && !window.confirm("Purge " + seqs.length + " dead letter(s)? This cannot be undone.")) return;
  const result = await sendJson("POST", "/ui/api/dead-letters/" + action, { seqs: seqs });
  if (!result.ok) {
    showNotice(action + " failed: " + detailOf(result), true);
    return;
  }
  const done = action === "redrive" ? result.data.redriven : result.data.purged;
  const failed = result.data.failed;
  // A dead letter that is not found was redriven or purged elsewhere, so its
  // row is stale too.
  const goneSeqs = failed.filter((item) => item.error === "not found").map((item) => item.seq);
  const removedSeqs = new Set([...done.map((item) => item.seq), ...goneSeqs].map(String));
  const callIdOfSeq = new Map(rows.map((row) => [row.dataset.seq, row.dataset.callId]));
  for (const row of deadLetterRows()) {
    if (removedSeqs.has(row.dataset.seq)) row.remove();
  }
  updateDeadLetterCounts(result.data.stored);
  const verb = action === "redrive" ? "Redrove " : "Purged ";
  let message = verb + done.length + " dead letter(s).";
  // The gateway cannot name the call id of a dead letter it no longer stores,
  // so the message takes it from the row.
  const label = (item) => item.call_id || callIdOfSeq.get(String(item.seq)) || "seq " + item.seq;
  if (failed.length) message += " Failed: " + failed.map((item) => label(item) + " (" + item.error + ")").join(", ");
  showNotice(message, failed.length > 0);
}

function setUpDeadLettersPage() {
  for (const button of document.querySelectorAll("tr button[data-action]")) {
    button.addEventListener("click", () => actOnDeadLetters(button.dataset.action, [button.closest("tr")]));
  }
  const table = document.getElementById("dead-letters");
  if (table) table.addEventListener("change", () => updateDeadLetterCounts());
  // Selects the rows of this page only: other pages are other documents.
  const selectPage = document.getElementById("select-page");
  if (selectPage) {
    selectPage.addEventListener("change", () => {
      for (const box of document.querySelectorAll("#dead-letters input[name=selected]")) box.checked = selectPage.checked;
      updateDeadLetterCounts();
    });
  }
  const selectedRows = () => deadLetterRows().filter((row) => row.querySelector("input[name=selected]").checked);
  for (const action of ["redrive", "purge"]) {
    const button = document.querySelector("button[data-action=" + action + "-selected]");
    if (button) button.addEventListener("click", () => actOnDeadLetters(action, selectedRows()));
  }
  updateDeadLetterCounts();
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "functions") setUpFunctionsPage();
  else if (page === "function") setUpFunctionPage();
  else if (page === "dead-letters") setUpDeadLettersPage();
});
