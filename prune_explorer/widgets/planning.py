"""The panel's plan: counts → plan → preview, the heatmap's cut, the coupling view, re-ranking and
sensitivity — what the user sees of a cut before Apply.

The slider path does only what the next frame needs: the per-layer cached plan, params and MACs from
widths, the heatmap's cut mask. Surgery (for the coupling view's shapes after and the PyTorch
latency) and the ONNX Runtime timing run on latest-only workers after it, so a drag never waits on
them, and a plan the sliders have left is dropped between their steps.
"""
from __future__ import annotations

from typing import Any

from .coupling import describe, members, shapes_after

LOADING = "the model is still loading"
# Surgery and timing hold the interpreter for a while; started at once they would slow the messages
# that carry this preview (and the next slider move) to the browser, so they wait until the sliders rest.
SETTLE_S = 0.3


class Planner:
    """Owns the panel's `counts` → `plan_channels` / `plan_summary` / `preview` / `coupling`."""

    def __init__(self, panel: Any):
        self.panel = panel
        self.previewed: tuple[dict[str, int], Any] | None = None  # (counts, the pruned model they give)

    @property
    def session(self):
        return self.panel.session

    def plan(self):
        """The current counts as a PrunePlan (`PrunePlan.from_counts`, one layer at a time)."""
        if self.session is None:
            raise ValueError(LOADING)
        return self.session.plan(self.panel.counts, round_to=self.panel.round_to)

    def set_counts(self, counts: dict[str, int]) -> None:
        """How many filters to cut per layer (the same as moving the sliders)."""
        unknown = [k for k in counts if k not in self.panel.table_editor.rows]
        if unknown:
            self.panel.error = f"layer {unknown[0]!r} is not a prunable group of this model"
            return
        self.panel.table_editor.set_counts(counts)

    def fill_lowest(self, n: int | None = None, scheme: str | None = None, keep_macs: float | None = None,
                    keep_latency: float | None = None) -> None:
        """Counts from the session's `plan_for`: the lowest N filters, or (fill_mode 'macs' / 'latency',
        or `keep_macs` / `keep_latency` given) the lowest-ranked filters until `keep_fraction` of the
        model's MACs or predicted latency is left. The latency table is measured on first use (on the
        "budget" worker; `wait()` waits for it)."""
        panel, t = self.panel, self.panel.table_editor
        for mode, value in (("filters", n), ("macs", keep_macs), ("latency", keep_latency)):
            if value is not None:
                t.fill_mode.value = mode
                (t.n_lowest if mode == "filters" else t.keep_fraction).value = value
        if scheme is not None:
            t.scheme.value = scheme
        session = self.session
        if session is None:
            panel.error = f"fill: {LOADING}"
            return
        measured = panel.fill_mode == "latency" and panel.latency_runtime != "pytorch"
        if measured:  # cut models timed in the runtime the model ships to: seconds, on the "budget" worker
            panel.status = f"measuring cuts in {panel.latency_runtime} until the model keeps {panel.keep_fraction:g} " \
                           "of its latency…"
            panel.workers.submit("budget", self._measured_fill, session, panel.keep_fraction, latest_only=True)
            return
        if panel.fill_mode == "latency" and not session.has_latency_table:
            panel.status = "measuring a per-layer latency table of this model (once)…"
            panel.workers.submit("budget", self._measure_latency_table_then_fill, session, latest_only=True)
            return
        target = {"filters": {"filters": panel.n_lowest}, "macs": {"macs": panel.keep_fraction},
                  "latency": {"latency": panel.keep_fraction}}[panel.fill_mode]
        try:
            plan = session.plan_for(scheme=panel.scheme, round_to=panel.round_to, **target)
        except ValueError as exc:
            panel.error = str(exc)
            return
        t.set_counts({layer: len(ix) for layer, ix in plan.channels.items()})

    def _measured_fill(self, session, fraction: float) -> None:
        """The latency fill in a deployment runtime: cut models measured there (model/runtime_budget.py)."""
        panel = self.panel
        try:
            plan = session.plan_for(latency=fraction, scheme=panel.scheme, round_to=panel.round_to,
                                    runtime=panel.latency_runtime)
        except ValueError as exc:
            panel.error = str(exc)
            return
        if session is self.session:
            panel.status = (f"{panel.latency_runtime}: {plan.budget['reached']:.3f} of the latency measured, "
                            f"{len(plan.budget['measurements'])} cuts timed")
            panel.table_editor.set_counts({layer: len(ix) for layer, ix in plan.channels.items()})

    def runtime_changed(self, change) -> None:
        """A model for ONNX Runtime keeps widths in multiples of ORT's block (model/runtimes.py); PyTorch any."""
        from ..model.runtimes import get_runtime

        block = get_runtime(change["new"]).block_size()
        self.panel.round_to = block if block > 1 else 0

    def _measure_latency_table_then_fill(self, session) -> None:
        table = session.latency_table()
        if session is self.session:  # not re-based meanwhile
            self.panel.status = f"latency table measured: {table.predict(session.costs):.2f} ms predicted for this model"
            self.fill_lowest()

    def changed(self) -> None:
        """The counts moved: the plan, its params and MACs, the heatmap's cut, then the latency worker."""
        panel, session = self.panel, self.session
        if session is None:
            panel.preview = {"filters_removed": sum(int(v) for v in panel.counts.values())}
            return
        try:
            plan = session.plan(panel.counts, round_to=panel.round_to)
            numbers = session.preview(plan)
        except ValueError as exc:
            panel.error = f"plan refused: {exc}"
            return
        if panel.error.startswith("plan refused"):
            panel.error = ""
        panel.plan_channels = {k: list(v) for k, v in plan.channels.items()}
        panel.plan_summary = plan.summary()
        removed = numbers["filters_removed"]
        numbers = {**panel.preview, **numbers, "latency_ms_after": None}
        if panel.onnxruntime_latency:  # a plan seen before shows its ONNX Runtime numbers at once
            before = numbers.get("ort_latency_ms_before")
            ort = session.cached_onnxruntime_latency(plan) or (before, None if removed else before)
            if ort[0] is None and not removed:  # nothing timed yet and nothing to time: no row
                numbers.pop("ort_latency_ms_before", None)
                numbers.pop("ort_latency_ms_after", None)
            else:
                numbers.update(ort_latency_ms_before=ort[0], ort_latency_ms_after=ort[1])
        if not removed:
            numbers["latency_ms_after"] = numbers.get("latency_ms_before")
        panel.preview = numbers
        panel.heatmap.mark(panel.plan_channels)
        if not removed:
            self.previewed = (dict(panel.counts), session.model)
            self.show_coupling()
            return
        # the coupling view (its shapes after need the surgery) follows on the worker, off the slider path
        panel.workers.submit("latency", self._measure_latency, session, plan, dict(panel.counts), latest_only=True)

    def _measure_latency(self, session, plan, counts: dict[str, int]) -> None:
        """Prune for the plan (the coupling view's shapes after come from this model), then time the base
        model and the pruned one in alternation, so both numbers see the same machine load."""
        panel = self.panel
        if panel.closed.wait(SETTLE_S) or counts != panel.counts:  # let the preview reach the browser first
            return
        self.show_coupling()  # the count now, the shapes after pending
        pruned = session.pruned(plan)
        if counts != panel.counts or session is not self.session:
            return
        self.previewed = (counts, pruned)
        self.show_coupling()
        timed = session.latency(pruned, wanted=lambda: counts == panel.counts and not panel.closed.is_set())
        if timed is None:
            return
        if counts == panel.counts:
            panel.preview = {**panel.preview, "latency_ms_before": timed[0], "latency_ms_after": timed[1]}
        if panel.onnxruntime_latency and session.cached_onnxruntime_latency(plan) is None:
            panel.workers.submit("ort-latency", self._measure_ort_latency, session, plan, pruned, counts, latest_only=True)

    def _measure_ort_latency(self, session, plan, pruned, counts: dict[str, int]) -> None:
        ort = session.onnxruntime_latency(plan, pruned, wanted=lambda: counts == self.panel.counts)
        if ort is not None and counts == self.panel.counts and session is self.session:
            self.panel.preview = {**self.panel.preview, "ort_latency_ms_before": ort[0], "ort_latency_ms_after": ort[1]}

    def measure_base_latency(self, session) -> None:
        ms = session.base_latency()
        if session is self.session:
            self.panel.preview = {**self.panel.preview, "latency_ms_before": ms,
                                  **({"latency_ms_after": ms} if not self.panel.counts else {})}

    # --- selection and coupling ----------------------------------------------------------------
    def select_layer(self, layer: str | None) -> None:
        """Select a layer (a heatmap row click or a table name click): highlighted in both, its
        channel group's members shown in the coupling view."""
        panel = self.panel
        if layer is not None and layer not in panel.table_editor.rows:
            panel.error = f"layer {layer!r} is not a prunable group of this model"
            return
        panel.selected_layer = layer
        panel.heatmap.select(layer)
        panel.table_editor.select(layer)
        self.show_coupling()

    def show_coupling(self) -> None:
        panel, session, layer = self.panel, self.session, self.panel.selected_layer
        if layer is None or session is None:
            panel.coupling = {}
            return
        group = session.graph.group(layer)
        found = members(session.model, group)
        previewed = self.previewed
        after = shapes_after(previewed[1], [m.module for m in found]) \
            if previewed is not None and previewed[0] == panel.counts else None
        panel.coupling = describe(group, found, after, int(panel.counts.get(layer, 0)))

    # --- ranks and sensitivity -----------------------------------------------------------------
    def rerank(self, criterion: str) -> None:
        panel, session = self.panel, self.session
        norm = None if panel.normalization == "auto" else panel.normalization
        panel.busy, panel.status = True, f"ranking by {criterion}…"
        try:
            table = session.rank(criterion, norm)
            if session is not self.session:
                return
            panel.show_view(session.view())
            panel.error = ""
            panel.status = f"{len(table)} filters ranked by {criterion} ({table['normalization'].iloc[0]})" \
                if len(table) else f"no filters ranked by {criterion}"
        except ValueError as exc:
            panel.error = str(exc)
        finally:
            panel.busy = False

    def compute_sensitivity(self, layer: str | None = None) -> None:
        """Accuracy vs fraction cut of one layer (or every layer) alone, on the first validation images."""
        if self.session is None:
            self.panel.error = f"sensitivity: {LOADING}"
            return
        for name in [layer] if layer else list(self.panel.table_editor.rows):
            self.panel.workers.submit("sensitivity", self._sensitivity_of, self.session, name)

    def _sensitivity_of(self, session, layer: str) -> None:
        points = session.sensitivity(layer)
        if session is self.session:
            self.panel.sensitivity = {**self.panel.sensitivity, layer: points}
            self.panel.table_editor.set_sensitivity(layer, points)
