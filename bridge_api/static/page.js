// The status page: polls admin/overview and redraws; its buttons call the admin endpoints.
// Every text shown goes in as a text node (labels, reasons and models come from settings, callers
// and Discord), never as HTML. The browser sends the Basic credentials it was given for the page.
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";
  let timer = null;
  let last = null; // the last overview, for redrawing the charts on resize

  const byId = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    node.append(...children.map((child) => (child instanceof Node ? child : String(child ?? ""))));
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A table cell that a phone shows as "label: value".
  function cell(label, ...content) {
    return el("td", { "data-label": label }, el("div", {}, ...content));
  }

  // A class from a server value: only letters, digits and dashes get through.
  function stateClass(value) {
    return "state-" + String(value).toLowerCase().replace(/[^a-z0-9]+/g, "-");
  }

  function badge(value) {
    return el("span", { class: "badge " + stateClass(value) }, value);
  }

  function clock(iso) {
    if (!iso) return "–";
    const when = new Date(iso);
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function moment(iso, now) {
    if (!iso) return "–";
    const when = new Date(iso);
    const seconds = Math.round((when - new Date(now)) / 1000);
    const span = Math.abs(seconds);
    const amount = span < 90 ? `${span} s` : span < 5400 ? `${Math.round(span / 60)} min` : `${(span / 3600).toFixed(1)} h`;
    const day = when.toDateString() === new Date().toDateString() ? "" : when.toLocaleDateString() + " ";
    const relative = span < 2 ? "just now" : seconds > 0 ? "in " + amount : amount + " ago";
    return `${day}${clock(iso)} (${relative})`;
  }

  function seconds(value) {
    return value === null || value === undefined ? "–" : `${Number(value).toFixed(2)} s`;
  }

  function say(text, failed) {
    const message = byId("message");
    message.textContent = text;
    message.classList.toggle("error", Boolean(failed));
    message.hidden = !text;
  }

  function fill(id, rows, columns, empty) {
    const body = byId(id);
    if (rows.length === 0) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: columns }, empty)));
    } else {
      body.replaceChildren(...rows);
    }
  }

  function tokenRow(token, now) {
    const disabled = token.state === "disabled";
    const toggle = el("button", { type: "button", class: disabled ? "" : "danger" }, disabled ? "Enable" : "Disable");
    toggle.addEventListener("click", () =>
      act(toggle, "PATCH", `admin/tokens/${encodeURIComponent(token.id)}`, { enabled: disabled },
        `${disabled ? "Enabled" : "Disabled"} ${token.label}`));
    const check = el("button", { type: "button" }, "Check now");
    check.addEventListener("click", () =>
      act(check, "POST", `admin/tokens/${encodeURIComponent(token.id)}/check`, {}, `Checked ${token.label}`));
    const state = [badge(token.state)];
    if (token.reason) state.push(el("span", { class: "reason" }, token.reason));
    if (token.since) state.push(el("span", { class: "reason" }, "since " + moment(token.since, now)));
    const rests = Object.entries(token.resting_models || {}).map(([model, until]) => `${model}: ${clock(until)}`);
    return el(
      "tr",
      { "data-token": token.id },
      cell("Label", el("span", { class: "wrap" }, token.label)),
      cell("Fingerprint", el("span", { class: "mono" }, token.id)),
      cell("State", ...state),
      cell("In flight", `${token.in_flight} / ${token.max_in_flight}`),
      cell("Posts today", token.daily_cap === null ? `${token.posts_today} (no cap)` : `${token.posts_today} / ${token.daily_cap}`),
      cell("Resting until", token.resting_until ? moment(token.resting_until, now) : rests.length ? rests.join(", ") : "–"),
      el("td", { "data-label": "Actions", class: "buttons" }, toggle, check),
    );
  }

  function modelRow(model, now) {
    return el(
      "tr",
      {},
      cell("Model", el("span", { class: "wrap" }, model.name)),
      cell("State", badge(model.state)),
      cell("Tokens available", model.tokens_available),
      cell("Resting until", moment(model.resting_until, now)),
    );
  }

  function requestRow(request) {
    const failed = request.status >= 400;
    const status = el("span", { class: failed ? "status-failed" : "status-ok" }, request.status);
    const conversation = request.continued === null ? "–" : request.continued ? "continued" : "new";
    return el(
      "tr",
      {},
      cell("Time", clock(request.at)),
      cell("Request", el("span", { class: "wrap" }, `${request.method} ${request.path}`)),
      cell("Key", el("span", { class: "mono" }, request.key ?? "–")),
      cell("Model", el("span", { class: "wrap" }, request.model ?? "–")),
      cell("Status", status, request.code ? ` ${request.code}` : ""),
      cell("First token", seconds(request.first_token_seconds)),
      cell("Duration", seconds(request.duration_seconds)),
      cell("Conversation", conversation),
    );
  }

  // A round number at or above `value`, for the top of a chart's scale; counts get even tops, so
  // that the middle line falls on a whole number too.
  function ceiling(value, counts) {
    if (!(value > 0)) return counts ? 2 : 1;
    const step = 10 ** Math.floor(Math.log10(value));
    const rounds = counts ? [2, 4, 6, 8, 10] : [1, 2, 2.5, 5, 10];
    return Math.max(counts ? 2 : 0, rounds.map((n) => n * step).find((n) => n >= value - 1e-9));
  }

  function secondsLabel(top) {
    if (top < 1) return (value) => (value === 0 ? "0" : `${Math.round(value * 1000)} ms`);
    return (value) => (value === 0 ? "0" : `${value.toFixed(top < 10 ? 1 : 0)} s`);
  }

  function frame(box, top, label, format) {
    const width = Math.max(box.clientWidth, 200);
    const height = box.clientHeight || 180;
    const pad = { left: 52, right: 8, top: 8, bottom: 20 };
    const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
    const plot = { x: pad.left, y: pad.top, w: width - pad.left - pad.right, h: height - pad.top - pad.bottom };
    for (const part of [0, 0.5, 1]) {
      const y = plot.y + plot.h * (1 - part);
      chart.append(svg("line", { class: part === 0 ? "axis" : "grid-line", x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y }));
      chart.append(svg("text", { x: plot.x - 6, y: y + 4, "text-anchor": "end" }, format(top * part)));
    }
    for (const [part, text] of [[0, "−60 min"], [0.5, "−30 min"], [1, "now"]]) {
      const anchor = part === 0 ? "start" : part === 1 ? "end" : "middle";
      chart.append(svg("text", { x: plot.x + plot.w * part, y: height - 4, "text-anchor": anchor }, text));
    }
    return { chart, plot };
  }

  function drawFirstTokens(minutes) {
    const box = byId("ttft-chart");
    const top = ceiling(Math.max(0, ...minutes.map((m) => m.first_token_max ?? 0)), false);
    const { chart, plot } = frame(box, top, "Time to first token per minute, last hour", secondsLabel(top));
    const step = plot.w / Math.max(minutes.length - 1, 1);
    const at = (i, v) => [plot.x + step * i, plot.y + plot.h * (1 - v / top)];
    for (const [field, kind] of [["first_token_max", "max"], ["first_token_mean", "mean"]]) {
      // One path, broken where a minute had no answer.
      let path = "";
      let pen = "M";
      minutes.forEach((minute, i) => {
        const value = minute[field];
        if (value === null) {
          pen = "M";
          return;
        }
        const [x, y] = at(i, value);
        path += `${pen}${x.toFixed(1)},${y.toFixed(1)} `;
        pen = "L";
        // Dots too: a minute alone between quiet ones draws no line.
        chart.append(svg("circle", { class: kind === "mean" ? "dot" : "dot-max", cx: x, cy: y, r: kind === "mean" ? 2.5 : 2 }));
      });
      if (path) chart.append(svg("path", { class: kind, d: path.trim() }));
    }
    box.replaceChildren(chart);
  }

  function drawRequests(minutes) {
    const box = byId("rpm-chart");
    const top = ceiling(Math.max(0, ...minutes.map((m) => m.requests)), true);
    const { chart, plot } = frame(box, top, "Requests per minute, last hour", (v) => `${Math.round(v)}`);
    const slot = plot.w / minutes.length;
    const bar = Math.max(slot - 1, 1);
    minutes.forEach((minute, i) => {
      if (minute.requests === 0) return;
      const x = plot.x + slot * i;
      const okHeight = (plot.h * (minute.requests - minute.errors)) / top;
      const failedHeight = (plot.h * minute.errors) / top;
      const base = plot.y + plot.h;
      const title = `${clock(minute.minute)}: ${minute.requests} requests, ${minute.errors} failed`;
      const group = svg("g", {});
      group.append(svg("title", {}, title));
      group.append(svg("rect", { class: "ok", x, y: base - okHeight, width: bar, height: okHeight }));
      group.append(svg("rect", { class: "failed", x, y: base - okHeight - failedHeight, width: bar, height: failedHeight }));
      chart.append(group);
    });
    box.replaceChildren(chart);
  }

  function render(data) {
    last = data;
    const now = data.now;
    const state = byId("gateway-state");
    state.className = "badge " + stateClass(data.gateway.state);
    state.textContent = data.gateway.state;
    byId("gateway-since").textContent = data.gateway.since ? "since " + moment(data.gateway.since, now) : "";
    byId("intent-warning").hidden = !data.gateway.message_content_missing;
    const instance = data.instance;
    const others = instance.others.map((other) => other.name + (other.leader ? " (leader)" : ""));
    byId("instance").textContent = others.length
      ? `· ${instance.name}${instance.leader ? " (leader)" : ""}, with ${others.join(", ")}`
      : "";
    byId("storage-warning").hidden = instance.storage === "ok";
    byId("open-streams").textContent = data.open_streams;
    byId("open-replies").textContent = data.open_replies;
    const queue = data.queue;
    byId("queue").textContent = `${queue.length} / ${queue.limit}` + (queue.full_since ? " full" : "");
    byId("hour-requests").textContent = data.minutes.reduce((sum, m) => sum + m.requests, 0);
    fill("tokens", data.tokens.map((token) => tokenRow(token, now)), 7, "No user tokens configured.");
    fill("models", data.models.map((model) => modelRow(model, now)), 4, "No model reported yet.");
    fill("requests", data.requests.map(requestRow), 8, "No requests since the bridge started.");
    drawFirstTokens(data.minutes);
    drawRequests(data.minutes);
    byId("updated").textContent = "updated " + clock(new Date().toISOString());
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const response = await fetch("admin/overview", { cache: "no-store", headers: { Accept: "application/json" } });
      if (response.status === 401) {
        byId("updated").textContent = "signed out: reload the page to sign in";
      } else if (!response.ok) {
        byId("updated").textContent = `the bridge answered ${response.status}`;
      } else {
        render(await response.json());
      }
    } catch (error) {
      byId("updated").textContent = "the bridge does not answer; retrying";
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  // The admin endpoints take JSON bodies only (a form could be posted from any page).
  async function act(button, method, url, body, done) {
    button.disabled = true;
    try {
      const response = await fetch(url, {
        method,
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
      let answer = null;
      try {
        answer = await response.json();
      } catch (error) {
        answer = null;
      }
      if (response.ok) {
        const waiting = answer && answer.restart_needed && answer.restart_needed.length
          ? ` (needs a restart: ${answer.restart_needed.join(", ")})` : "";
        say(`${done}${waiting}.`, false);
      } else {
        say(`Failed (${response.status}): ${answer?.error?.message ?? response.statusText}`, true);
      }
    } catch (error) {
      say("The bridge did not answer.", true);
    } finally {
      button.disabled = false;
    }
    await refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const reload = byId("reload");
    reload.addEventListener("click", () => act(reload, "POST", "admin/reload", {}, "Settings reloaded"));
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => last && (drawFirstTokens(last.minutes), drawRequests(last.minutes)), 100);
    });
    refresh();
  });
})();
