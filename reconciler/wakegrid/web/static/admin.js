// The admin dashboard, live. The pages are rendered by the daemon; this script only
// - follows the daemon's event stream (/api/events, server-sent events, no polling) and updates the
//   elements keyed by name (data-node, data-service, data-stat), re-reading the JSON API after a
//   burst of events so that what is shown is the daemon's state, not a guess;
// - sends the buttons' actions to the JSON API with the session's CSRF token (X-CSRF-Token).
// No framework, no build step: the file is served as it is written.
"use strict";
(function () {
  const body = document.body;
  const tokenMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = tokenMeta ? tokenMeta.content : null;
  const notice = document.getElementById("notice");
  const byId = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ small helpers

  function say(text, kind) {
    notice.textContent = text;
    notice.dataset.kind = kind || "info";
    clearTimeout(say.timer);
    say.timer = setTimeout(() => (notice.textContent = ""), kind === "error" ? 12000 : 6000);
  }

  function words(seconds) {
    if (seconds == null) return "\u2014";
    seconds = Math.max(0, seconds);
    if (seconds < 90) return Math.max(1, Math.round(seconds)) + " s";
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return minutes + " min";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  // Elements whose data-<key> equals a name: compared as strings, never built into a selector (a name
  // may hold any character).
  function keyed(key, name, root) {
    return Array.from((root || document).querySelectorAll("[data-" + key + "]")).filter(
      (el) => el.dataset[key] === name
    );
  }

  function fields(el, name) {
    return Array.from(el.querySelectorAll('[data-field="' + name + '"]'));
  }

  function setBadge(el, state, text) {
    el.textContent = text || state;
    el.className = "state state-" + state;
  }

  async function api(method, path, payload) {
    const headers = { Accept: "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    const init = { method, headers, credentials: "same-origin" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      return { status: 0, ok: false, data: { detail: "the daemon did not answer: " + error.message } };
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = { detail: text.slice(0, 200) };
    }
    if (response.status === 401) {
      say("Your session has ended: log in again.", "error");
      setTimeout(() => location.assign("/admin/login?next=" + encodeURIComponent(location.pathname)), 1500);
    }
    return { status: response.status, ok: response.ok, data };
  }

  function problem(result) {
    const data = result.data || {};
    return data.detail || data.title || "HTTP " + result.status;
  }

  const seg = encodeURIComponent;

  // ------------------------------------------------------------------ the live state

  function setPower(name, power, detail) {
    for (const el of keyed("node", name)) {
      el.dataset.power = power;
      for (const badge of fields(el, "power")) setBadge(badge, power);
      if (detail !== undefined) for (const line of fields(el, "power-detail")) line.textContent = detail;
    }
  }

  // What a run is doing to a node now ("starting: …"); data-busy holds the operation (start, stop).
  function setActivity(name, text, operation) {
    for (const el of keyed("node", name)) {
      for (const line of fields(el, "activity")) line.textContent = text;
      if (text) el.dataset.busy = operation || "1";
      else delete el.dataset.busy;
    }
  }

  // A node seen where its run was taking it: that run's words are no longer news.
  function settled(name, power) {
    for (const el of keyed("node", name)) {
      const operation = el.dataset.busy;
      if ((operation === "start" && power === "up") || (operation === "stop" && power === "down")) {
        setActivity(name, "");
      }
    }
  }

  function renderLayers(list, wake) {
    list.replaceChildren(
      ...((wake && wake.layers) || []).map((layer) => {
        const item = document.createElement("li");
        item.append(layer.label + ": ");
        const badge = document.createElement("span");
        setBadge(badge, layer.state);
        item.append(badge);
        if (layer.detail) {
          const detail = document.createElement("span");
          detail.className = "detail";
          detail.textContent = " " + layer.detail;
          item.append(detail);
        }
        return item;
      })
    );
  }

  function setService(status) {
    for (const el of keyed("service", status.name)) {
      el.dataset.wanted = JSON.stringify(status.wanted);
      const wanted = status.wanted == null ? "unknown" : status.wanted ? "yes" : "no";
      const word = status.wanted == null ? "unknown" : status.wanted ? "wanted" : "not wanted";
      for (const badge of fields(el, "wanted")) setBadge(badge, wanted, word);
      for (const why of fields(el, "why")) why.textContent = status.why;
      const up = status.backends.filter((backend) => backend.health === "up").length;
      // A service tile is as healthy as its best backend (the page's border colour; words say the rest).
      if (el.classList.contains("tile")) {
        const unknown = status.backends.some((backend) => backend.health === "unknown");
        el.dataset.power = up ? "up" : unknown ? "unknown" : "down";
      }
      for (const count of fields(el, "backends-up")) count.textContent = up + "/" + status.backends.length + " backends up";
      for (const flight of fields(el, "in-flight")) flight.textContent = status.in_flight == null ? "unknown" : status.in_flight;
      for (const row of el.querySelectorAll("[data-backend]")) {
        const backend = status.backends.find((b) => String(b.index) === row.dataset.backend);
        if (!backend) continue;
        for (const badge of fields(row, "health")) setBadge(badge, backend.health);
        for (const detail of fields(row, "health-detail")) detail.textContent = backend.detail || "";
      }
      for (const list of fields(el, "wake")) renderLayers(list, status.wake);
      for (const none of fields(el, "wake-none")) none.hidden = Boolean(status.wake);
    }
  }

  function setStats(stats) {
    for (const el of document.querySelectorAll("[data-stat]")) {
      const value = stats[el.dataset.stat];
      if (value === undefined) continue;
      el.textContent = el.dataset.stat === "mean_wake_seconds_today" ? words(value) : String(value);
    }
  }

  // What the page shows is re-read from the API after events (debounced): the events say *that*
  // something changed and move the obvious parts at once; the API says what the state now is.
  let refreshTimer = null;
  function refreshSoon(delay) {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, delay == null ? 400 : delay);
  }

  async function refresh() {
    const jobs = [];
    if (document.querySelector("[data-node]")) {
      jobs.push(
        api("GET", "/api/nodes").then((r) => {
          if (!r.ok) return;
          for (const node of r.data) {
            setPower(node.name, node.power, node.power_detail);
            settled(node.name, node.power);
          }
        })
      );
    }
    if (document.querySelector("[data-service]")) {
      jobs.push(
        api("GET", "/api/status").then((r) => {
          if (r.ok) for (const status of r.data) setService(status);
        })
      );
    }
    if (document.querySelector("[data-stat]")) {
      jobs.push(api("GET", "/api/stats").then((r) => r.ok && setStats(r.data)));
    }
    await Promise.all(jobs);
  }

  const STEP_WORDS = { start: "starting", stop: "stopping" };
  const actionNodes = new Map(); // action id -> the nodes its steps showed as busy

  function busy(event, text) {
    setActivity(event.node, text, event.operation);
    if (event.action_id == null) return;
    if (!actionNodes.has(event.action_id)) actionNodes.set(event.action_id, new Set());
    actionNodes.get(event.action_id).add(event.node);
  }

  function onEvent(message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    const topics = event.topics || [event.topic || ""];
    const kind = event.kind;
    if (kind === "power") {
      for (const topic of topics) {
        if (!topic.startsWith("node:")) continue;
        setPower(topic.slice(5), event.power, event.detail || "");
        settled(topic.slice(5), event.power);
      }
    } else if (event.operation && event.node) {
      const doing = STEP_WORDS[event.operation] || event.operation;
      if (kind === "step_started") busy(event, doing + ": " + (event.line || event.title || ""));
      else if (kind === "booting") busy(event, doing + ": " + (event.step || "booting"));
      else if (kind === "step_done") setActivity(event.node, "");
    }
    if (kind === "finished" || kind === "failed") {
      const target = event.target || event.node || "";
      const nodes = actionNodes.get(event.action_id) || new Set();
      if (target) nodes.add(target);
      for (const node of nodes) setActivity(node, "");
      actionNodes.delete(event.action_id);
      const what = (event.operation || "action") + " " + target;
      if (kind === "failed" || event.state === "failed") {
        say(what + " failed: " + (event.message || event.failure || event.error || "see the history"), "error");
      } else if (event.state) say(what + ": " + event.state);
    }
    refreshSoon();
  }

  function follow() {
    const url = body.dataset.events;
    if (!url || typeof EventSource === "undefined") return;
    const conn = byId("conn");
    const events = new EventSource(url);
    const mark = (state, text) => {
      if (!conn) return;
      conn.dataset.conn = state;
      conn.textContent = text;
    };
    events.addEventListener("open", () => {
      mark("live", "live");
      refreshSoon(0); // what changed while the stream was down
    });
    events.addEventListener("error", () => mark("lost", "reconnecting\u2026"));
    // /api/events names each event by its kind (the bus's and the actuator's), or by its topic.
    const kinds = ["power", "queued", "joined", "running", "playbook_started", "plan", "step_started", "booting"];
    kinds.push("step_done", "report", "failed", "finished", "wake_requested", "ready", "decision", "dropped");
    for (const name of ["message", ...kinds]) events.addEventListener(name, onEvent);
  }

  // ------------------------------------------------------------------ the buttons

  async function pin(button, kind, name, on) {
    button.disabled = true;
    const result = await api(on ? "PUT" : "DELETE", "/api/pins/" + seg(kind) + "/" + seg(name));
    button.disabled = false;
    if (!result.ok) {
      say("Could not " + (on ? "pin " : "unpin ") + name + ": " + problem(result), "error");
      return;
    }
    if (body.dataset.page === "front") {
      location.reload(); // the tiles are the server's to lay out
      return;
    }
    button.dataset.action = on ? "unpin" : "pin";
    button.textContent = on ? "Unpin" : "Pin";
    button.setAttribute("aria-label", (on ? "Unpin " : "Pin ") + kind + " " + name + (on ? " from" : " to") + " the front page");
    say(name + (on ? " is pinned to the front page" : " is no longer on the front page"));
  }

  async function start(button, name) {
    button.disabled = true;
    const result = await api("POST", "/api/nodes/" + seg(name) + "/start");
    button.disabled = false;
    if (result.status === 202) {
      setActivity(name, "start requested", "start");
      say("Starting " + name + " (action " + result.data.action_id + ")");
    } else say("Could not start " + name + ": " + problem(result), "error");
  }

  async function wake(button, name) {
    button.disabled = true;
    const result = await api("POST", "/api/wake/" + seg(name));
    button.disabled = false;
    if (result.status === 202) say("Waking " + name);
    else say("Could not wake " + name + ": " + problem(result), "error");
    refreshSoon();
  }

  // Stopping asks first: the nodes it hosts go with it (from the tree), then what the API proposes
  // (dependencies whose confirm_shutdown is on) are offered one by one, unticked.
  function ask(title, build) {
    const dialog = byId("stop-dialog");
    byId("stop-title").textContent = title;
    const content = byId("stop-body");
    content.replaceChildren();
    build(content);
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      byId("stop-cancel").focus();
    });
  }

  function paragraph(text) {
    const p = document.createElement("p");
    p.textContent = text;
    return p;
  }

  function list(items) {
    const ul = document.createElement("ul");
    for (const text of items) {
      const li = document.createElement("li");
      li.textContent = text;
      ul.append(li);
    }
    return ul;
  }

  function named(item) {
    if (typeof item === "string") return { node: item, reason: "" };
    return { node: item.node || item.name || String(item), reason: item.reason || "" };
  }

  async function stop(button, name) {
    const hosted = (button.dataset.hosted || "").split(",").filter(Boolean);
    const first = await ask("Stop " + name + "?", (content) => {
      if (hosted.length) {
        content.append(paragraph("This also stops what " + name + " hosts, deepest first:"), list(hosted));
      } else content.append(paragraph(name + " hosts nothing: only it stops."));
    });
    if (!first) return;
    // Without `confirm`, the API answers 409 with the cascade when it would also stop dependencies.
    let result = await api("POST", "/api/nodes/" + seg(name) + "/stop", {});
    if (result.status === 409) {
      const data = result.data || {};
      const cascade = (data.cascade || []).map((item) => named(item).node);
      const proposed = (data.proposed || []).map(named);
      const boxes = [];
      const second = await ask("Confirm the stop of " + name, (content) => {
        if (data.detail) content.append(paragraph(data.detail));
        if (cascade.length) content.append(paragraph("Stops, in this order:"), list(cascade));
        if (proposed.length) {
          const set = document.createElement("fieldset");
          const legend = document.createElement("legend");
          legend.textContent = "Also stop these dependencies (nothing else uses them):";
          set.append(legend);
          for (const item of proposed) {
            const label = document.createElement("label");
            const box = document.createElement("input");
            box.type = "checkbox";
            box.value = item.node;
            boxes.push(box);
            label.append(box, " " + item.node + (item.reason ? " \u2014 " + item.reason : ""));
            const line = document.createElement("div");
            line.append(label);
            set.append(line);
          }
          content.append(set);
        }
      });
      if (!second) return;
      const confirm = boxes.filter((box) => box.checked).map((box) => box.value);
      result = await api("POST", "/api/nodes/" + seg(name) + "/stop", { confirm });
    }
    if (result.status === 202) {
      setActivity(name, "stop requested", "stop");
      say("Stopping " + name + " (action " + result.data.action_id + ")");
    } else say("Could not stop " + name + ": " + problem(result), "error");
  }

  async function copy(button) {
    const source = byId(button.dataset.target);
    if (!source) return;
    const text = source.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (error) {
      // No clipboard API (plain http): select the text so that the person copies it.
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      say("Selected: press Ctrl+C (or \u2318C) to copy");
      return;
    }
    say("Copied the entry of " + source.closest("[data-discovered]").dataset.discovered);
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    const name = button.dataset.name;
    const action = button.dataset.action;
    if (action === "pin" || action === "unpin") pin(button, button.dataset.kind, name, action === "pin");
    else if (action === "start") start(button, name);
    else if (action === "stop") stop(button, name);
    else if (action === "wake") wake(button, name);
    else if (action === "copy") copy(button);
    else return;
    event.preventDefault();
  });

  const pinForm = byId("pin-form");
  if (pinForm) {
    pinForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = pinForm.elements.what.value;
      const slash = value.indexOf("/");
      pin(pinForm.querySelector("button"), value.slice(0, slash), value.slice(slash + 1), true);
    });
  }

  follow();
})();
