// History scatter drawn as SVG from what the Python side computed (rows, domains, tick values and
// labels): a hollow mark right after each cut, a dot after its fine-tune, a line between them, the
// Pareto frontier of the dots, the base ringed. A dot click sets `picked`.
const NS = "http://www.w3.org/2000/svg";
const M = { left: 84, right: 14, top: 10, bottom: 44 };  // room for "12.55%" ticks beside the axis label

function svg(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function render({ model, el }) {
  el.classList.add("pe-scatter-view");
  const root = svg("svg", { class: "pe-scatter-svg" }, el);
  el.dataset.draws = "0";
  let draws = 0, pending = false;

  function draw() {
    pending = false;
    const width = Math.max(el.clientWidth || 0, 240), height = Math.max(el.clientHeight || 0, 200);
    root.setAttribute("width", width);
    root.setAttribute("height", height);
    root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    root.replaceChildren();
    const [x0, x1] = model.get("x_domain"), [y0, y1] = model.get("y_domain"), log = model.get("x_log");
    const w = width - M.left - M.right, h = height - M.top - M.bottom;
    const sx = (v) => M.left + w * (log ? (Math.log(v) - Math.log(x0)) / (Math.log(x1) - Math.log(x0)) : (v - x0) / (x1 - x0));
    const sy = (v) => M.top + h - h * (v - y0) / (y1 - y0);
    const colours = model.get("colours"), points = model.get("points"), base = model.get("base");

    const xAxis = svg("g", { class: "axis pe-x-axis" }, root);
    svg("line", { x1: M.left, x2: M.left + w, y1: M.top + h, y2: M.top + h, class: "domain" }, xAxis);
    for (const [v, label] of model.get("x_ticks")) {
      const t = svg("g", { class: "tick", transform: `translate(${sx(v)},${M.top + h})` }, xAxis);
      svg("line", { y2: 5 }, t);
      svg("line", { y2: -h, class: "grid" }, t);
      svg("text", { y: 18, "text-anchor": "middle" }, t).textContent = label;
    }
    svg("text", { class: "axislabel", x: M.left + w / 2, y: height - 6, "text-anchor": "middle" }, xAxis)
      .textContent = model.get("x_label");
    const yAxis = svg("g", { class: "axis pe-y-axis" }, root);
    svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: M.top + h, class: "domain" }, yAxis);
    for (const [v, label] of model.get("y_ticks")) {
      const t = svg("g", { class: "tick", transform: `translate(${M.left},${sy(v)})` }, yAxis);
      svg("line", { x2: -5 }, t);
      svg("line", { x2: w, class: "grid" }, t);
      svg("text", { x: -8, dy: "0.32em", "text-anchor": "end" }, t).textContent = label;
    }
    svg("text", { class: "axislabel", transform: `translate(14,${M.top + h / 2}) rotate(-90)`, "text-anchor": "middle" },
        yAxis).textContent = model.get("y_label");

    const front = model.get("frontier").map((i) => points[i]);
    if (front.length > 1) {
      let d = "";
      front.forEach((p, i) => { d += (i ? ` H${sx(p.x)} V${sy(p.y)}` : `M${sx(p.x)},${sy(p.y)}`); });
      svg("path", { d, class: "pe-frontier" }, root);
    }
    const marks = svg("g", { class: "pe-marks" }, root);
    for (const p of points) {
      if (p.cut !== null && p.y !== null) {
        const link = svg("line", { class: "pe-recovery", x1: sx(p.x), x2: sx(p.x), y1: sy(p.cut), y2: sy(p.y),
                                   "data-iteration": p.iteration }, marks);
        svg("title", {}, link).textContent = `${p.iteration}: fine-tune recovered ${(100 * (p.y - p.cut)).toFixed(1)} points`;
      }
    }
    for (const p of points) {
      if (p.cut === null) continue;
      const m = svg("circle", { class: "pe-cut-mark", cx: sx(p.x), cy: sy(p.cut), r: 5, "data-iteration": p.iteration }, marks);
      svg("title", {}, m).textContent = `${p.iteration} right after the cut: ${(100 * p.cut).toFixed(1)}%`;
    }
    for (const p of points) {
      if (p.y === null) continue;
      const dot = svg("circle", { class: "dot", cx: sx(p.x), cy: sy(p.y), r: 6, fill: colours[p.status] || "#2ca02c",
                                  "data-iteration": p.iteration, "data-status": p.status }, marks);
      svg("title", {}, dot).textContent = `${p.iteration} after its fine-tune: ${(100 * p.y).toFixed(1)}% (${p.status})`;
      dot.addEventListener("click", () => { model.set("picked", p.iteration); model.save_changes(); });
      if (p.iteration === base) svg("circle", { class: "pe-base-ring", cx: sx(p.x), cy: sy(p.y), r: 11 }, marks);
    }
    el.dataset.draws = String(++draws);
  }

  function later() {
    if (!pending) { pending = true; requestAnimationFrame(draw); }
  }
  model.on("change", later);
  new ResizeObserver(later).observe(el);
  draw();
}

export default { render };
