// The waiting page, live: the wake's state arrives over server-sent events (no polling); a local
// one-second timer only advances the elapsed times between events. When the service is ready the
// page reloads the URL it was served at: the one the visitor asked for, path and query included.
"use strict";
(function () {
  const body = document.body;
  let state = JSON.parse(body.dataset.state);
  let skew = Date.now() / 1000 - state.now; // this clock minus the daemon's
  const marks = { up: "\u2713", starting: "\u2026", failed: "\u2717" };
  const byId = (id) => document.getElementById(id);

  function words(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 90) return Math.round(seconds) + " s";
    const minutes = Math.floor(seconds / 60);
    return minutes + " min " + String(Math.round(seconds % 60)).padStart(2, "0") + " s";
  }

  function layerTime(layer, now) {
    if (layer.state === "up") return layer.took != null ? "up · took " + words(layer.took) : "up";
    if (layer.state === "starting") return "starting · " + words(now - layer.since);
    if (layer.state === "failed") return "failed";
    if (layer.state === "asleep") return "asleep";
    if (layer.state === "unknown") return "unknown";
    return "waiting";
  }

  function render() {
    const now = Date.now() / 1000 - skew;
    const list = byId("layers");
    list.replaceChildren(
      ...state.layers.map((layer) => {
        const item = document.createElement("li");
        item.className = "state-" + layer.state;
        item.dataset.key = layer.key;
        item.dataset.state = layer.state;
        const parts = [
          ["mark", marks[layer.state] || "\u00b7"],
          ["title", layer.title],
          ["elapsed", layerTime(layer, now)],
          ["detail", layer.detail || ""],
        ];
        for (const [name, text] of parts) {
          const span = document.createElement("span");
          span.className = name;
          span.textContent = text;
          item.append(span);
        }
        return item;
      })
    );
    byId("total").textContent = words(now - state.started);
    byId("estimate").textContent = state.estimate_words || "";
    byId("status").textContent = state.state === "ready" ? "Ready: continuing\u2026" : state.message || "";
    const error = byId("error");
    error.hidden = !state.error;
    byId("error-text").textContent = state.error || "";
    body.dataset.wake = state.state;
  }

  function go() {
    location.replace(location.href);
  }

  byId("retry").addEventListener("click", (event) => {
    event.preventDefault();
    location.reload();
  });

  render();
  const ticker = setInterval(() => state.state !== "ready" && render(), 1000);
  const events = new EventSource(body.dataset.events);
  events.addEventListener("state", (message) => {
    const next = JSON.parse(message.data);
    skew = Date.now() / 1000 - next.now;
    state = next.layers.length ? next : Object.assign({}, state, next, { layers: state.layers });
    if (state.state === "ready") {
      state.layers = state.layers.map((layer) => Object.assign({}, layer, { state: "up" }));
      events.close();
      clearInterval(ticker);
      render();
      go();
      return;
    }
    render();
  });
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CLOSED) setTimeout(go, 3000); // the stream is gone for good: reload
    else byId("status").textContent = "Connection lost, reconnecting\u2026";
  });
})();
