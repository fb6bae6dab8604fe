/* Tailor dashboard: a job's loss chart, drawn as SVG, and the poll that keeps the job page live.
 *
 * Written for this project (no third-party code, nothing fetched from a CDN). The page embeds the curve
 * so far as JSON (#job-chart-data: metricsUrl, status, terminal, train, valid, cursor); every two
 * seconds the script asks metricsUrl?after=<cursor> for the points stored since, merges them by step
 * (a later attempt's point replaces an earlier one's at the same step), redraws, and updates the status,
 * progress, throughput and ETA. It stops polling once the job has ended.
 */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var POLL_MS = 2000;
  var W = 760, H = 300, PAD = { left: 56, right: 16, top: 14, bottom: 36 };

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* Round tick values: 1, 2 or 5 times a power of ten. */
  function ticks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    var raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; });
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function label(v) {
    if (Math.abs(v) >= 1000) return v.toLocaleString();
    return String(+v.toPrecision(4));
  }

  function sorted(map) {
    return Array.from(map.entries()).sort(function (a, b) { return a[0] - b[0]; });
  }

  function draw(svg, train, valid) {
    var t = sorted(train), v = sorted(valid);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("data-train-points", t.length);
    svg.setAttribute("data-valid-points", v.length);
    var all = t.concat(v);
    if (!all.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No loss reported yet"));
      return;
    }
    var xs = all.map(function (p) { return p[0]; }), ys = all.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; }
    var margin = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 0.1;
    y0 = Math.max(0, y0 - margin); y1 = y1 + margin;
    var sx = function (x) { return PAD.left + (x - x0) / (x1 - x0) * (W - PAD.left - PAD.right); };
    var sy = function (y) { return H - PAD.bottom - (y - y0) / (y1 - y0) * (H - PAD.top - PAD.bottom); };

    var grid = el("g", { class: "grid" });
    ticks(y0, y1, 5).forEach(function (y) {
      if (y < y0 || y > y1) return;
      grid.appendChild(el("line", { x1: PAD.left, x2: W - PAD.right, y1: sy(y), y2: sy(y) }));
      grid.appendChild(el("text", { x: PAD.left - 8, y: sy(y) + 4, "text-anchor": "end" }, label(y)));
    });
    ticks(x0, x1, 8).forEach(function (x) {
      if (x < x0 || x > x1 || Math.round(x) !== x) return;
      grid.appendChild(el("line", { x1: sx(x), x2: sx(x), y1: PAD.top, y2: H - PAD.bottom, class: "v" }));
      grid.appendChild(el("text", { x: sx(x), y: H - PAD.bottom + 16, "text-anchor": "middle" }, label(x)));
    });
    grid.appendChild(el("text", { x: (PAD.left + W - PAD.right) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, "step"));
    grid.appendChild(el("text", { x: 12, y: (PAD.top + H - PAD.bottom) / 2, "text-anchor": "middle", class: "axis",
      transform: "rotate(-90 12 " + (PAD.top + H - PAD.bottom) / 2 + ")" }, "loss"));
    svg.appendChild(grid);

    function line(points, cls) {
      if (!points.length) return;
      var d = points.map(function (p, i) { return (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join("");
      svg.appendChild(el("path", { d: d, class: "line " + cls }));
      if (points.length <= 60 || cls === "valid") {
        var dots = el("g", { class: "dots " + cls });
        points.forEach(function (p) {
          var c = el("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: cls === "valid" ? 3.5 : 2.5 });
          c.appendChild(el("title", {}, "step " + p[0] + ": " + p[1].toFixed(4)));
          dots.appendChild(c);
        });
        svg.appendChild(dots);
      }
    }
    line(t, "train");
    line(v, "valid");
  }

  function duration(seconds) {
    if (typeof seconds !== "number" || seconds < 0) return "–";
    seconds = Math.round(seconds);
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min";
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }

  function setText(id, text) {
    var node = document.getElementById(id);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function update(state) {
    var badge = document.getElementById("job-status");
    if (badge && badge.textContent !== state.status) {
      badge.textContent = state.status;
      badge.className = "status status-" + state.status;
      document.querySelectorAll("#job-actions form[data-statuses]").forEach(function (form) {
        form.hidden = form.dataset.statuses.split(" ").indexOf(state.status) < 0;
      });
    }
    var progress = document.getElementById("job-progress");
    if (progress && state.total_steps) {
      var step = state.step || 0, pct = Math.max(0, Math.min(100, Math.floor(step * 100 / state.total_steps)));
      progress.querySelector(".bar").style.width = pct + "%";
      progress.querySelector(".label").textContent = step + " / " + state.total_steps + " steps · " + pct + "%";
      progress.title = "step " + step + " of " + state.total_steps;
    }
    if (typeof state.tokens_per_second === "number") {
      setText("job-throughput", Math.round(state.tokens_per_second).toLocaleString("en-US") + " tokens/s");
    }
    setText("job-eta", state.eta_seconds === null || state.eta_seconds === undefined ? "–" : duration(state.eta_seconds));
  }

  function start(dataNode) {
    var svg = document.getElementById("loss-chart");
    if (!dataNode || !svg) return;
    var data = JSON.parse(dataNode.textContent);
    var train = new Map(), valid = new Map(), cursor = data.cursor || 0;
    var merge = function (points, map) { (points || []).forEach(function (p) { map.set(p[0], p[1]); }); };
    merge(data.train, train);
    merge(data.valid, valid);
    draw(svg, train, valid);
    if (data.terminal.indexOf(data.status) >= 0) return;

    var busy = false;
    var timer = window.setInterval(function () {
      if (busy) return;
      busy = true;
      fetch(data.metricsUrl + "?after=" + cursor, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (state) {
          cursor = state.cursor;
          if ((state.train && state.train.length) || (state.valid && state.valid.length)) {
            merge(state.train, train);
            merge(state.valid, valid);
            draw(svg, train, valid);
          }
          update(state);
          setText("chart-note", "");
          if (state.finished) window.clearInterval(timer);
        })
        .catch(function (error) { setText("chart-note", "(updates paused: " + error.message + ")"); })
        .finally(function () { busy = false; });
    }, POLL_MS);
  }

  window.TailorJobPage = { start: start, draw: draw };
  start(document.getElementById("job-chart-data"));
})();
