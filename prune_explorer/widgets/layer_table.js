// The layer table's rows drawn from the groups and the counts the kernel sends: name (click selects
// the layer), kind, width, a slider and a number for the filters to cut, what is left, the params
// and MACs the group's channels pass through, a sensitivity button and its sparkline. A changed
// count is sent back as `counts`; a name click as `selected`.
const HEAD = ["layer", "kind", "width", "cut", "", "left", "params", "MACs", "", "sensitivity"];

function human(n) {
  for (const [unit, scale] of [["G", 1e9], ["M", 1e6], ["k", 1e3]]) if (Math.abs(n) >= scale) return (n / scale).toFixed(2) + unit;
  return String(Math.round(n));
}

function cell(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}

function sparkline(points) {
  const w = 110, h = 28;
  const xy = points.map(([x, y]) => [2 + (w - 4) * Math.min(Math.max(x, 0), 1), h - 2 - (h - 4) * Math.min(Math.max(y, 0), 1)]);
  const dots = xy.map(([x, y], i) => `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="2.5" fill="#1f77b4"><title>cut ` +
    `${Math.round(100 * points[i][0])}%: accuracy ${points[i][1].toFixed(3)}</title></circle>`).join("");
  return `<svg class="pe-sparkline" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><polyline points="` +
    `${xy.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" ")}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>${dots}</svg>`;
}

function render({ model, el }) {
  el.classList.add("pe-layer-rows-view");
  const table = cell("div", "pe-layer-list", el);
  let rows = {};

  function setCount(name, value, size) {
    const k = Math.max(0, Math.min(Math.round(Number(value) || 0), size - 1));
    const counts = { ...model.get("counts") };
    if (k) counts[name] = k; else delete counts[name];
    model.set("counts", counts);
    model.save_changes();
    return k;
  }

  function build() {
    table.replaceChildren();
    rows = {};
    const head = cell("div", "pe-layer-head", table);
    HEAD.forEach((h) => cell("b", "", head, h));
    for (const r of model.get("rows")) {
      const row = cell("div", "pe-layer-row", table);
      row.dataset.layer = r.name;
      const name = cell("button", "pe-layer-name", row, r.name);
      name.title = `select ${r.name}: its coupled modules show beside the preview`;
      name.addEventListener("click", () => { model.set("selected", r.name); model.save_changes(); });
      cell("span", "pe-layer-kind", row, r.kind);
      cell("span", "pe-layer-width", row, String(r.size));
      const slider = cell("input", "pe-count-slider", row);
      Object.assign(slider, { type: "range", min: 0, max: Math.max(r.size - 1, 0), step: 1, value: 0 });
      const box = cell("span", "pe-count", row);
      const count = cell("input", "", box);
      Object.assign(count, { type: "number", min: 0, max: Math.max(r.size - 1, 0), step: 1, value: 0 });
      const left = cell("span", "pe-layer-left", row, String(r.size));
      cell("span", "pe-layer-params", row, human(r.params));
      cell("span", "pe-layer-macs", row, human(r.macs));
      const probe = cell("button", "pe-sensitivity", row);
      probe.innerHTML = '<svg width="18" height="14" viewBox="0 0 18 14"><polyline points="1,2 6,4 11,8 17,13" ' +
        'fill="none" stroke="#1f77b4" stroke-width="2"/></svg>';  // a falling accuracy curve, no icon font needed
      probe.title = `sensitivity of ${r.name}: accuracy with only this layer cut`;
      probe.addEventListener("click", () => model.send({ event: "sensitivity", layer: r.name }));
      const curve = cell("span", "pe-layer-curve", row);
      slider.addEventListener("input", () => { count.value = slider.value; left.textContent = String(r.size - slider.value); });
      slider.addEventListener("change", () => { count.value = setCount(r.name, slider.value, r.size); });
      count.addEventListener("change", () => { slider.value = count.value = setCount(r.name, count.value, r.size); });
      count.addEventListener("keydown", (event) => { if (event.key === "Enter") count.dispatchEvent(new Event("change")); });
      rows[r.name] = { row, slider, count, left, curve, size: r.size };
    }
  }

  function update() {
    const counts = model.get("counts"), selected = model.get("selected"), curves = model.get("curves");
    for (const [name, r] of Object.entries(rows)) {
      const k = counts[name] || 0;
      if (Number(r.count.value) !== k || document.activeElement !== r.count) r.count.value = k;
      r.slider.value = k;
      r.left.textContent = String(r.size - k);
      r.row.classList.toggle("pe-selected", name === selected);
      const shown = curves[name] ? sparkline(curves[name]) : "";
      if (r.curve.innerHTML !== shown) r.curve.innerHTML = shown;
    }
  }

  model.on("change:rows", () => { build(); update(); });
  model.on("change:counts", update);
  model.on("change:selected", update);
  model.on("change:curves", update);
  build();
  update();
}

export default { render };
