// report.html's script: draws the page from the JSON data in #report-data. Nothing is fetched; pictures
// are the files beside the page (report_files/ thumbnails, panels/).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const CARD = { width: 148, height: 200, gap: 10 };
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

  // ------------------------------------------------------------------ small helpers
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else if (key === "cls") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function num(x, digits) {
    if (x === null || x === undefined) return "-";
    if (x === Infinity) return "\u221e";
    return Number(x).toPrecision(digits || 4);
  }
  function section(id, title, ...children) {
    return el("section", { id: id }, el("h2", { text: title }), ...children);
  }
  function table(spec) {
    const head = el("tr", {}, ...spec.header.map((h) => el("th", { text: h })));
    const body = spec.rows.map((row) => el("tr", {}, ...row.map((c) => el("td", { text: String(c) }))));
    return el("div", { cls: "table" }, el("h3", { text: spec.title }),
      el("table", {}, el("thead", {}, head), el("tbody", {}, ...body)),
      spec.note ? el("p", { cls: "note", text: spec.note }) : null);
  }
  function details(items) {
    return items.map((item) => el("details", { open: item.text ? null : "" }, el("summary", { text: item.title }),
      item.text ? el("pre", { text: item.text })
        : el("table", { cls: "pairs" }, ...item.pairs.map(([k, v]) => el("tr", {}, el("th", { text: k }),
          el("td", { text: v }))))));
  }
  function header() {
    const kinds = { run: "training / test run", predict: "cfa predict output", benchmark: "benchmark" };
    document.title = DATA.title + " \u2013 CFA report";
    document.getElementById("top").append(el("h1", { text: DATA.title }),
      el("p", { cls: "meta", text: `${kinds[DATA.kind]} \u00b7 ${DATA.folder} \u00b7 cfa-anomaly ${DATA.version}`
        + ` \u00b7 report made ${DATA.generated}` }));
  }

  // ------------------------------------------------------------------ the images and the threshold
  function rowsOf(columns) {
    const names = Object.keys(columns);
    return columns.path.map((_, i) => {
      const row = { i: i };
      for (const name of names) row[name] = columns[name][i];
      return row;
    });
  }

  function thresholdModel(rows, heldOut) {
    const scores = rows.filter((r) => r.score !== null).map((r) => r.score);
    const values = Array.from(new Set(heldOut === null ? scores : scores.concat([heldOut])));
    values.sort((a, b) => a - b);
    values.push(Infinity); // nothing flagged
    const held = heldOut === null ? -1 : values.indexOf(heldOut);
    return { values: values, held: held, index: held >= 0 ? held : values.length - 1 };
  }

  // At the held-out threshold the stored decisions (scores.csv) count, so the counts equal metrics.json's.
  function decided(row, model) {
    if (row.score === null) return null;
    if (model.index === model.held && row.decision) return row.decision === "defective";
    return row.score >= model.values[model.index];
  }

  function outcome(row, model) {
    const flag = decided(row, model);
    if (flag === null) return "unreadable";
    if (row.label === null) return flag ? "flagged" : "passed";
    if (row.label === 1) return flag ? "caught" : "miss";
    return flag ? "false-alarm" : "correct-pass";
  }
  const OUTCOME_TEXT = { "unreadable": "unreadable", "flagged": "flagged", "passed": "passed",
    "caught": "defect found", "miss": "miss", "false-alarm": "false alarm", "correct-pass": "good, passed" };

  function counts(rows, model) {
    const c = { tp: 0, fn: 0, fp: 0, tn: 0, flagged: 0, scored: 0, unreadable: 0, kinds: {} };
    for (const row of rows) {
      const o = outcome(row, model);
      if (o === "unreadable") { c.unreadable++; continue; }
      const flag = o === "caught" || o === "false-alarm" || o === "flagged";
      c.scored++; if (flag) c.flagged++;
      if (o === "caught") c.tp++; else if (o === "miss") c.fn++;
      else if (o === "false-alarm") c.fp++; else if (o === "correct-pass") c.tn++;
      const k = c.kinds[row.kind] || (c.kinds[row.kind] = { images: 0, flagged: 0 });
      k.images++; if (flag) k.flagged++;
    }
    return c;
  }

  // ------------------------------------------------------------------ charts (inline SVG)
  const BOX = { w: 420, h: 300, left: 48, right: 14, top: 14, bottom: 40 };
  function frame(id, xLabel, yLabel) {
    const root = svg("svg", { id: id, viewBox: `0 0 ${BOX.w} ${BOX.h}`, role: "img", class: "chart" });
    const plotW = BOX.w - BOX.left - BOX.right, plotH = BOX.h - BOX.top - BOX.bottom;
    root.append(svg("rect", { x: BOX.left, y: BOX.top, width: plotW, height: plotH, class: "plot" }),
      svg("text", { x: BOX.left + plotW / 2, y: BOX.h - 6, class: "axis-label" }, xLabel),
      svg("text", { x: 12, y: BOX.top + plotH / 2, class: "axis-label",
        transform: `rotate(-90 12 ${BOX.top + plotH / 2})` }, yLabel));
    const x = (v) => BOX.left + v * plotW, y = (v) => BOX.top + (1 - v) * plotH;
    return { root: root, x: x, y: y, plotW: plotW, plotH: plotH };
  }
  function ticks(f, axis, values, labels) {
    values.forEach((v, i) => {
      if (axis === "x") f.root.append(svg("text", { x: f.x(v), y: BOX.h - BOX.bottom + 16, class: "tick" }, labels[i]));
      else f.root.append(svg("text", { x: BOX.left - 6, y: f.y(v) + 4, class: "tick end" }, labels[i]));
    });
  }

  function rocPoints(scores, labels) {
    const order = scores.map((s, i) => i).sort((a, b) => scores[b] - scores[a]);
    const pos = labels.filter((l) => l === 1).length, neg = labels.length - pos;
    const points = [[0, 0]];
    let tp = 0, fp = 0, area = 0;
    order.forEach((i, k) => {
      if (labels[i] === 1) tp++; else fp++;
      if (k + 1 === order.length || scores[order[k + 1]] !== scores[i]) {
        const last = points[points.length - 1], next = [fp / Math.max(neg, 1), tp / Math.max(pos, 1)];
        area += (next[0] - last[0]) * (next[1] + last[1]) / 2;
        points.push(next);
      }
    });
    return { points: points, area: pos && neg ? area : null };
  }

  function rocChart(id, curves, markers) {
    const f = frame(id, "false-positive rate (good decided defective)", "true-positive rate");
    ticks(f, "x", [0, 0.5, 1], ["0", "0.5", "1"]); ticks(f, "y", [0, 0.5, 1], ["0", "0.5", "1"]);
    f.root.append(svg("line", { x1: f.x(0), y1: f.y(0), x2: f.x(1), y2: f.y(1), class: "diagonal" }));
    curves.forEach((c, k) => {
      const pts = c.points.map(([a, b]) => `${f.x(a).toFixed(1)},${f.y(b).toFixed(1)}`).join(" ");
      f.root.append(svg("polyline", { points: pts, class: "curve", stroke: COLOURS[k % COLOURS.length] }));
      f.root.append(svg("text", { x: f.x(0.98), y: f.y(0.05 + 0.07 * k), class: "tick end",
        style: `fill: ${COLOURS[k % COLOURS.length]}` }, `${c.name} (AUROC ${num(c.area, 3)})`));
    });
    for (const m of markers || []) {
      f.root.append(svg("circle", { cx: f.x(m.fpr), cy: f.y(m.tpr), r: 5, class: m.cls }));
    }
    return f.root;
  }

  function histogram(rows, model, labelled) {
    const f = frame("histogram-chart", "image score", "images");
    const scores = rows.filter((r) => r.score !== null).map((r) => r.score);
    if (!scores.length) return f.root;
    let lo = Math.min(...scores), hi = Math.max(...scores);
    const held = model.held >= 0 ? model.values[model.held] : null;
    if (held !== null) { lo = Math.min(lo, held); hi = Math.max(hi, held); }
    if (hi === lo) { hi = lo + 1; }
    const bins = 30, series = labelled ? [["good", 0, "good"], ["defective", 1, "defective"]] : [["images", null, "all"]];
    const tallies = series.map(([, label]) => {
      const t = new Array(bins).fill(0);
      for (const r of rows) if (r.score !== null && (label === null || r.label === label)) {
        t[Math.min(bins - 1, Math.floor((r.score - lo) / (hi - lo) * bins))]++;
      }
      return t;
    });
    const top = Math.max(1, ...tallies.flat()), xs = (v) => f.x((v - lo) / (hi - lo));
    series.forEach(([name, , cls], k) => tallies[k].forEach((n, b) => {
      if (!n) return;
      f.root.append(svg("rect", { x: f.x(b / bins) + 0.5, y: f.y(n / top), width: f.plotW / bins - 1,
        height: f.plotH * n / top, class: `bar ${cls}` }, undefined));
    }));
    ticks(f, "x", [0, 0.5, 1], [num(lo, 3), num((lo + hi) / 2, 3), num(hi, 3)]);
    ticks(f, "y", [0, 1], ["0", String(top)]);
    if (held !== null) f.root.append(svg("line", { x1: xs(held), x2: xs(held), y1: f.y(0), y2: f.y(1), class: "held-line" }));
    const t = model.values[model.index];
    if (t !== Infinity) f.root.append(svg("line", { x1: xs(t), x2: xs(t), y1: f.y(0), y2: f.y(1), class: "now-line" }));
    series.forEach(([name, , cls], k) => f.root.append(svg("text", { x: f.x(0.02), y: f.y(0.95 - 0.07 * k),
      class: `legend ${cls}` }, `\u25a0 ${name}`)));
    return f.root;
  }

  // ------------------------------------------------------------------ the run page
  function runPage() {
    const rows = rowsOf(DATA.images);
    const labelled = DATA.labelled;
    const model = thresholdModel(rows, DATA.threshold.value);
    const state = { sort: labelled ? "mistakes" : "score-desc", kind: "", outcome: "", list: [] };
    const main = document.getElementById("main");
    if (DATA.tables.length) main.append(section("results", "Results", ...DATA.tables.map(table)));
    if (!rows.length) { // trained without a test (cfa train --no-test): its training alone
      main.append(section("images", "Images", el("p", { cls: "note", text: "No scored images in this folder "
        + "(no scores file): a run trained with cfa train --no-test has none; cfa test --checkpoint "
        + "<run>/checkpoint.pt scores its test split." })),
      section("details", "Run details", ...details(DATA.details)));
      return;
    }
    const threshold = thresholdSection(rows, model, labelled);
    main.append(threshold.node);
    const charts = el("div", { cls: "charts" });
    main.append(section("charts", "Scores", charts));
    const gallery = gallerySection(rows, model, state, labelled);
    main.append(gallery.node);
    main.append(section("details", "Run details", ...details(DATA.details), DATA.gif
      ? el("details", {}, el("summary", { text: "Animation" }), el("img", { src: DATA.gif, loading: "lazy", alt: "" }))
      : null));
    const roc = labelled ? rocPoints(rows.filter((r) => r.score !== null && r.label !== null).map((r) => r.score),
      rows.filter((r) => r.score !== null && r.label !== null).map((r) => r.label)) : null;
    let pending = false;
    function update() {
      const c = counts(rows, model);
      threshold.show(c);
      const markers = [];
      if (roc) {
        const at = (cc) => ({ fpr: cc.fp / Math.max(cc.fp + cc.tn, 1), tpr: cc.tp / Math.max(cc.tp + cc.fn, 1) });
        if (model.held >= 0) {
          const now = model.index; model.index = model.held;
          markers.push({ ...at(counts(rows, model)), cls: "held-dot" }); model.index = now;
        }
        markers.push({ ...at(c), cls: "now-dot" });
      }
      charts.replaceChildren(...(roc ? [rocChart("roc-chart", [{ name: "image", ...roc }], markers)] : []),
        histogram(rows, model, labelled));
      gallery.refresh();
    }
    threshold.onChange(() => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; update(); }); } });
    update();
  }

  function thresholdSection(rows, model, labelled) {
    const slider = el("input", { type: "range", id: "threshold-slider", min: 0, max: model.values.length - 1,
      step: 1, value: model.index, list: "threshold-marks", "aria-label": "decision threshold" });
    const marks = el("datalist", { id: "threshold-marks" }, model.held >= 0 ? el("option", { value: model.held }) : null);
    const value = el("span", { id: "threshold-value" });
    const where = el("span", { id: "threshold-where" });
    const back = el("button", { type: "button", id: "held-out-button", text: "back to the run's threshold" });
    const mark = model.held >= 0 ? el("span", { id: "held-out-mark", text: "\u25b2 run's threshold",
      style: `--at: ${model.held / Math.max(model.values.length - 1, 1)}` }) : null;
    const counts = el("div", { id: "counts" });
    const held = DATA.threshold;
    const info = el("p", { cls: "note" }, held.value === null ? `No threshold recorded: ${held.source || "none"}.`
      : `The run decided at ${num(held.value, 6)}: ${held.source}.`, held.statement ? el("br") : null, held.statement);
    const node = section("threshold", "Decision threshold",
      el("div", { cls: "slider-row" }, el("label", { for: "threshold-slider", text: "image score \u2265 " }), value,
        el("div", { cls: "slider-wrap" }, slider, mark), marks, back), where, info, counts);
    back.disabled = model.held < 0;
    let listener = () => {};
    function set(index) {
      model.index = Math.max(0, Math.min(model.values.length - 1, index));
      slider.value = model.index;
      listener();
    }
    slider.addEventListener("input", () => set(Number(slider.value)));
    back.addEventListener("click", () => set(model.held));
    function show(c) {
      const t = model.values[model.index];
      value.textContent = num(t, 6);
      value.dataset.threshold = String(t);
      where.textContent = model.index === model.held ? "at the run's threshold: the run's own decisions"
        : (t === Infinity ? "above every score: nothing flagged" : "moved from the run's threshold");
      counts.replaceChildren(...countsView(c, labelled));
    }
    return { node: node, show: show, onChange: (f) => { listener = f; } };
  }

  function countsView(c, labelled) {
    const line = (id, label, text) => el("div", { cls: "count" }, el("span", { cls: "count-label", text: label }),
      el("strong", { id: id, text: text }));
    const parts = [line("count-flagged", "flagged defective", `${c.flagged} of ${c.scored}`)];
    if (c.unreadable) parts.push(line("count-unreadable", "unreadable", String(c.unreadable)));
    if (labelled) {
      parts.push(line("count-defective-flagged", "defective flagged", `${c.tp}/${c.tp + c.fn}`),
        line("count-good-flagged", "good flagged (false alarms)", `${c.fp}/${c.fp + c.tn}`),
        line("count-accuracy", "accuracy", c.scored ? ((c.tp + c.tn) / c.scored).toFixed(3) : "-"));
      const cell = (id, n, cls) => el("td", { id: id, cls: cls, text: String(n) });
      parts.push(el("table", { id: "confusion", cls: "confusion" },
        el("tr", {}, el("th", { text: "truth \\ decision" }), el("th", { text: "defective" }), el("th", { text: "good" })),
        el("tr", {}, el("th", { text: "defective" }), cell("cm-tp", c.tp, "ok"), cell("cm-fn", c.fn, "bad")),
        el("tr", {}, el("th", { text: "good" }), cell("cm-fp", c.fp, "bad"), cell("cm-tn", c.tn, "ok"))));
    }
    const kinds = Object.keys(c.kinds).sort();
    if (kinds.length > 1) {
      parts.push(el("table", { id: "kind-counts", cls: "confusion" },
        el("tr", {}, el("th", { text: "kind" }), el("th", { text: "images" }), el("th", { text: "flagged" })),
        ...kinds.map((k) => el("tr", {}, el("th", { text: k }), el("td", { text: String(c.kinds[k].images) }),
          el("td", { text: String(c.kinds[k].flagged) })))));
    }
    return parts;
  }

  // ------------------------------------------------------------------ the gallery (virtualised)
  const SORTS = {
    "mistakes": ["false alarms and misses first, then score", null],
    "score-desc": ["score, highest first", (a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity)],
    "score-asc": ["score, lowest first", (a, b) => (a.score ?? Infinity) - (b.score ?? Infinity)],
    "path": ["file path", (a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)],
  };
  const OUTCOME_FILTERS = {
    labelled: [["", "all outcomes"], ["mistakes", "false alarms and misses"], ["false-alarm", "false alarms"],
      ["miss", "misses"], ["caught", "defects found"], ["correct-pass", "good, passed"], ["flagged", "flagged"],
      ["passed", "passed"], ["unreadable", "unreadable"]],
    unlabelled: [["", "all outcomes"], ["flagged", "flagged"], ["passed", "passed"], ["unreadable", "unreadable"]],
  };
  function matches(o, filter) {
    if (!filter) return true;
    if (filter === "mistakes") return o === "false-alarm" || o === "miss";
    if (filter === "flagged") return o === "flagged" || o === "caught" || o === "false-alarm";
    if (filter === "passed") return o === "passed" || o === "miss" || o === "correct-pass";
    return o === filter;
  }

  function gallerySection(rows, model, state, labelled) {
    const select = (id, options, value) => el("select", { id: id }, ...options.map(([v, text]) =>
      el("option", { value: v, text: text, selected: v === value ? "" : null })));
    const sort = select("sort", Object.entries(SORTS).filter(([k]) => labelled || k !== "mistakes")
      .map(([k, [text]]) => [k, text]), state.sort);
    const kinds = Array.from(new Set(rows.map((r) => r.kind))).sort();
    const kind = select("filter-kind", [["", "all kinds"], ...kinds.map((k) => [k, k])], "");
    const filter = select("filter-outcome", OUTCOME_FILTERS[labelled ? "labelled" : "unlabelled"], "");
    const shown = el("span", { id: "shown-count" });
    const grid = el("div", { id: "gallery" });
    const node = section("images", "Images", el("div", { cls: "controls" },
      el("label", {}, "sort ", sort), el("label", {}, "kind ", kind), el("label", {}, "outcome ", filter), shown), grid);
    const view = virtualGrid(grid, (row) => card(row, model, () => openOverlay(state.list, state.list.indexOf(row), model)));
    function refresh() {
      state.sort = sort.value; state.kind = kind.value; state.outcome = filter.value;
      const rank = { "false-alarm": 0, "miss": 1 };
      let list = rows.filter((r) => (!state.kind || r.kind === state.kind) && matches(outcome(r, model), state.outcome));
      const byScore = SORTS["score-desc"][1];
      if (state.sort === "mistakes") {
        list = list.map((r) => [rank[outcome(r, model)] ?? 2, r]).sort((a, b) => a[0] - b[0] || byScore(a[1], b[1]))
          .map(([, r]) => r);
      } else list.sort(SORTS[state.sort][1]);
      state.list = list;
      shown.textContent = `${list.length} of ${rows.length} images`;
      view.show(list);
    }
    for (const control of [sort, kind, filter]) control.addEventListener("change", refresh);
    return { node: node, refresh: refresh };
  }

  function card(row, model, open) {
    const o = outcome(row, model);
    const picture = row.thumb ? el("img", { "data-src": row.thumb, loading: "lazy", decoding: "async", width: 128,
      height: 128, alt: row.path }) : el("div", { cls: "placeholder", text: row.error ? "unreadable" : "no picture" });
    return el("button", { type: "button", cls: `card ${o}`, "data-index": row.i, "data-score": row.score,
      title: row.error ? `${row.path}: ${row.error}` : row.path, onclick: open }, picture,
      el("span", { cls: "score", text: row.score === null ? "no score" : num(row.score) }),
      el("span", { cls: "badge", text: OUTCOME_TEXT[o] }), el("span", { cls: "kind", text: row.kind }));
  }

  // Only the rows of cards near the window are in the page; scrolling swaps them. Their thumbnails are
  // asked for a few per frame, so that a fast scroll past thousands of cards never waits on their decoding.
  const PICTURES_PER_FRAME = 16;
  function picturePump() {
    const queue = [];
    let running = false;
    function pump() {
      let started = 0;
      while (queue.length && started < PICTURES_PER_FRAME) {
        const img = queue.shift();
        if (img.isConnected) { img.src = img.dataset.src; img.removeAttribute("data-src"); started++; }
      }
      running = queue.length > 0;
      if (running) requestAnimationFrame(pump);
    }
    return (node) => {
      const img = node.querySelector("img[data-src]");
      if (!img) return;
      queue.push(img);
      if (!running) { running = true; requestAnimationFrame(pump); }
    };
  }

  function virtualGrid(grid, make) {
    let list = [], columns = 1, drawn = new Map();
    const pitch = CARD.height + CARD.gap, picture = picturePump();
    function draw() {
      const top = grid.getBoundingClientRect().top, rowsCount = Math.ceil(list.length / columns);
      const first = Math.max(0, Math.floor(-top / pitch) - 2);
      const last = Math.min(rowsCount - 1, Math.ceil((window.innerHeight - top) / pitch) + 2);
      const wanted = new Set();
      for (let r = first; r <= last; r++) for (let c = 0; c < columns; c++) {
        const k = r * columns + c;
        if (k < list.length) wanted.add(k);
      }
      for (const [k, node] of drawn) if (!wanted.has(k)) { node.remove(); drawn.delete(k); }
      for (const k of wanted) if (!drawn.has(k)) {
        const node = make(list[k]);
        node.style.left = `${(k % columns) * (CARD.width + CARD.gap)}px`;
        node.style.top = `${Math.floor(k / columns) * pitch}px`;
        grid.append(node); drawn.set(k, node); picture(node);
      }
    }
    function layout() {
      columns = Math.max(1, Math.floor((grid.clientWidth + CARD.gap) / (CARD.width + CARD.gap)));
      grid.style.height = `${Math.ceil(list.length / columns) * pitch}px`;
      for (const node of drawn.values()) node.remove();
      drawn = new Map();
      draw();
    }
    let pending = false;
    const schedule = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } };
    window.addEventListener("scroll", schedule, { passive: true });
    window.addEventListener("resize", layout);
    return { show: (items) => { list = items; layout(); } };
  }

  // ------------------------------------------------------------------ the overlay
  const overlay = { list: [], at: 0, model: null };
  function openOverlay(list, at, model) {
    overlay.list = list; overlay.at = at; overlay.model = model;
    showOverlay();
    document.getElementById("overlay").hidden = false;
  }
  function showOverlay() {
    const row = overlay.list[overlay.at];
    const img = document.getElementById("overlay-img");
    const source = row.panel || row.input || row.thumb;
    img.hidden = !source;
    if (source) img.src = source;
    const label = row.label === null ? "" : ` \u00b7 truth ${row.label === 1 ? "defective" : "good"}`;
    document.getElementById("overlay-caption").textContent = `${overlay.at + 1}/${overlay.list.length} \u00b7 `
      + `${row.kind} \u00b7 score ${num(row.score)} \u00b7 ${OUTCOME_TEXT[outcome(row, overlay.model)]}${label}`;
    const what = row.panel ? "panel: input | anomaly map | predicted outline | truth"
      : (row.input ? "no panel was drawn for this image: the input image" : "no picture of this image");
    document.getElementById("overlay-note").textContent = `${row.path}${row.error ? ": " + row.error : ""} (${what})`;
  }
  function closeOverlay() { document.getElementById("overlay").hidden = true; }
  function step(by) {
    if (!overlay.list.length) return;
    overlay.at = (overlay.at + by + overlay.list.length) % overlay.list.length;
    showOverlay();
  }
  function overlayEvents() {
    const box = document.getElementById("overlay");
    box.addEventListener("click", (e) => { if (e.target === box) closeOverlay(); });
    document.getElementById("overlay-close").addEventListener("click", closeOverlay);
    document.getElementById("overlay-prev").addEventListener("click", () => step(-1));
    document.getElementById("overlay-next").addEventListener("click", () => step(1));
    document.addEventListener("keydown", (e) => {
      if (box.hidden) return;
      if (e.key === "Escape") closeOverlay();
      else if (e.key === "ArrowLeft") step(-1);
      else if (e.key === "ArrowRight") step(1);
    });
  }

  // ------------------------------------------------------------------ the benchmark page
  function benchmarkPage() {
    const main = document.getElementById("main");
    main.append(section("results", "Results", ...DATA.tables.map(table)));
    const rows = DATA.cells.map((c) => el("tr", {}, el("td", { text: c.key }), el("td", { text: c.status }),
      el("td", { text: c.seconds ? `${c.seconds}` : "-" }),
      el("td", { text: c.at_threshold ? c.at_threshold.defective_flagged : "-" }),
      el("td", { text: c.at_threshold ? c.at_threshold.good_flagged : "-" }),
      el("td", {}, c.report ? el("a", { href: c.report, text: "open" }) : "-"),
      el("td", { text: c.problem || "" })));
    main.append(section("cells", "Cells", el("table", { id: "cells-table" }, el("thead", {}, el("tr", {},
      ...["cell", "status", "seconds", "defective flagged", "good flagged", "report", "problem"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows)), el("p", { cls: "note", text: "flagged: at each cell's own held-out threshold "
      + "(metrics.json at_threshold). Each cell's report has its images, slider and details." })));
    const curves = DATA.cells.filter((c) => c.labels.length).map((c) => ({ name: c.key, ...rocPoints(c.scores, c.labels) }));
    if (curves.length) main.append(section("charts", "Image ROC", el("div", { cls: "charts" }, rocChart("roc-chart", curves, []))));
    main.append(section("details", "Run details", ...details(DATA.details)));
  }

  header();
  overlayEvents();
  if (DATA.kind === "benchmark") benchmarkPage(); else runPage();
  document.body.dataset.ready = "1";
  document.body.dataset.readyMs = String(Math.round(performance.now())); // for benchmarks/report_page.py
})();
