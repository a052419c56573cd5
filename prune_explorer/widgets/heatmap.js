// Rank heatmap drawn on a canvas: one row per prunable channel group, one column per filter.
// Hover and the cut lines are computed here from the arrays the Python side sends, so a hover
// never waits on the kernel; a row click sets `selected`, which the panel turns into a selection.
const ROW = 14;
const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                 [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
const EMPTY = [243, 243, 243];
const CUT = [228, 0, 43];

function typed(model, name, Type) {
  const dv = model.get(name);
  if (!dv || !dv.byteLength) return new Type(0);
  return new Type(dv.buffer.slice(dv.byteOffset, dv.byteOffset + dv.byteLength));
}

function colour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}

function number(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}

function element(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function render({ model, el }) {
  el.classList.add("pe-heatmap-view");
  const legend = element("div", "pe-heatmap-legend", el);
  const body = element("div", "pe-heatmap-body", el);
  const labels = element("div", "pe-heatmap-labels", body);
  const plot = element("div", "pe-heatmap-plot", body);
  const canvas = element("canvas", "pe-heatmap-canvas", plot);
  const tip = element("div", "pe-heatmap-tip", plot);
  const axis = element("div", "pe-heatmap-axis", el);
  el.dataset.draws = "0";
  let data = null, pending = false, draws = 0;

  function load() {
    const layers = model.get("layers"), columns = model.get("columns");
    data = {
      layers, columns, widths: model.get("widths"), cutline: model.get("cutline"),
      order: model.get("order"), selected: model.get("selected"),
      vmin: model.get("vmin"), vmax: model.get("vmax"),
      matrix: typed(model, "matrix", Float32Array), filters: typed(model, "filters", Int32Array),
      scores: typed(model, "scores", Float32Array), ranks: typed(model, "ranks", Int32Array),
      cut: typed(model, "cut", Uint8Array),
    };
  }

  function drawLegend() {
    const stops = VIRIDIS.map((c, i) => `rgb(${c}) ${(100 * i / (VIRIDIS.length - 1)).toFixed(0)}%`).join(",");
    legend.innerHTML = "";
    element("span", "pe-heatmap-legend-label", legend).textContent = "normalised rank";
    element("span", "pe-heatmap-legend-min", legend).textContent = number(data.vmin) + " (cut first)";
    const bar = element("span", "pe-heatmap-legend-bar", legend);
    bar.style.background = `linear-gradient(to right, ${stops})`;
    element("span", "pe-heatmap-legend-max", legend).textContent = number(data.vmax) + " (keep)";
    const cut = element("span", "pe-heatmap-legend-cut", legend);
    cut.textContent = "cut";
    element("span", "pe-heatmap-legend-note", legend).textContent =
      data.order === "sorted" ? "│ each row's cut line" : "";
  }

  function drawLabels() {
    if (labels.childElementCount !== data.layers.length ||
        [...labels.children].some((c, i) => c.textContent !== data.layers[i])) {
      labels.innerHTML = "";
      data.layers.forEach((name, r) => {
        const label = element("div", "pe-heatmap-label", labels);
        label.textContent = name;
        label.title = `${name}: ${data.widths[r]} filters (click to select)`;
        label.dataset.row = String(r);
        label.style.height = `${ROW}px`;
      });
    }
    [...labels.children].forEach((label, r) =>
      label.classList.toggle("pe-heatmap-label-selected", data.layers[r] === data.selected));
  }

  function draw() {
    pending = false;
    load();
    const rows = data.layers.length, cols = Math.max(data.columns, 1);
    drawLegend();
    drawLabels();
    axis.textContent = data.order === "sorted" ? `filter, sorted by rank within its layer (0 … ${cols - 1})`
                                               : `filter index (0 … ${cols - 1})`;
    const off = document.createElement("canvas");
    off.width = cols; off.height = Math.max(rows, 1);
    const octx = off.getContext("2d");
    const image = octx.createImageData(cols, Math.max(rows, 1));
    const span = data.vmax - data.vmin || 1;
    for (let i = 0; i < rows * cols; i++) {
      const v = data.matrix[i];
      let c = Number.isNaN(v) || v === undefined ? EMPTY : colour((v - data.vmin) / span);
      if (data.cut[i]) c = [0.25 * c[0] + 0.75 * CUT[0], 0.25 * c[1] + 0.75 * CUT[1], 0.25 * c[2] + 0.75 * CUT[2]];
      image.data[4 * i] = c[0]; image.data[4 * i + 1] = c[1]; image.data[4 * i + 2] = c[2]; image.data[4 * i + 3] = 255;
    }
    octx.putImageData(image, 0, 0);
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(plot.clientWidth, 200), height = rows * ROW;
    canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
    canvas.width = Math.round(width * dpr); canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, cols, rows, 0, 0, width, height);
    if (data.order === "sorted") {
      ctx.strokeStyle = "#e4002b"; ctx.lineWidth = 2;
      data.cutline.forEach((k, r) => {
        if (k <= 0) return;
        const x = Math.round(k / cols * width) + 0.5;
        ctx.beginPath(); ctx.moveTo(x, r * ROW); ctx.lineTo(x, (r + 1) * ROW); ctx.stroke();
      });
    }
    const sel = data.layers.indexOf(data.selected);
    if (sel >= 0) {
      ctx.strokeStyle = "#111"; ctx.lineWidth = 2;
      ctx.strokeRect(1, sel * ROW + 1, width - 2, ROW - 2);
    }
    draws += 1;
    el.dataset.columns = String(cols);
    el.dataset.draws = String(draws);
    if (!reported) requestAnimationFrame(report);
  }

  // Tell the kernel once the ranks are on screen: the panel loads the model only after its first view
  // is painted, so torch's imports never compete with sending it.
  let reported = false;
  function report() {
    if (reported || !el.isConnected || !data.layers.length) return;
    reported = true;
    model.send({ event: "drawn", draws });
  }

  function schedule() {
    if (!pending) { pending = true; requestAnimationFrame(draw); }
  }

  function cellAt(event) {
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left, y = event.clientY - box.top;
    if (!data || x < 0 || y < 0 || x >= box.width || y >= box.height) return null;
    const row = Math.floor(y / ROW), col = Math.floor(x / box.width * Math.max(data.columns, 1));
    if (row >= data.layers.length) return null;
    return { row, col, x, y };
  }

  function describe(row, col) {
    if (col >= data.widths[row]) return `${data.layers[row]}: ${data.widths[row]} filters (no filter here)`;
    const i = row * data.columns + col;
    return `${data.layers[row]} · filter ${data.filters[i]} · score ${number(data.scores[i])}` +
           ` · rank ${data.ranks[i]} of ${data.widths[row]} (1 = cut first) · ${data.cut[i] ? "cut" : "kept"}`;
  }

  canvas.addEventListener("mousemove", (event) => {
    const at = cellAt(event);
    if (!at) { tip.style.display = "none"; return; }
    tip.textContent = describe(at.row, at.col);
    tip.dataset.row = String(at.row); tip.dataset.col = String(at.col);
    tip.style.display = "block";
    const right = at.x > canvas.clientWidth * 0.6;
    tip.style.left = right ? "" : `${at.x + 12}px`;
    tip.style.right = right ? `${canvas.clientWidth - at.x + 12}px` : "";
    tip.style.top = `${at.y + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });

  function select(row) {
    if (row === null || row < 0 || row >= data.layers.length) return;
    model.set("selected", data.layers[row]);
    model.save_changes();
  }
  canvas.addEventListener("click", (event) => { const at = cellAt(event); if (at) select(at.row); });
  labels.addEventListener("click", (event) => {
    const label = event.target.closest(".pe-heatmap-label");
    if (label) select(Number(label.dataset.row));
  });

  const traits = ["layers", "columns", "widths", "cutline", "order", "selected", "vmin", "vmax",
                  "matrix", "filters", "scores", "ranks", "cut"];
  traits.forEach((name) => model.on(`change:${name}`, schedule));
  const resize = new ResizeObserver(schedule);
  resize.observe(plot);
  draw();
  return () => { resize.disconnect(); };
}

export default { render };
