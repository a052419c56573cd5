"""PrunePlan: which channels of which channel group to remove, validated against a ChannelGraph."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pandas is only needed by the builders
    import pandas as pd

    from .costs import CostModel
    from .graph import ChannelGraph
    from .latency import LatencyTable


class PrunePlan:
    """Channel indices to remove, keyed by any member layer name or group id.

    The plan is only checked against a graph in `resolve`, so it can be built before tracing
    and stored as JSON (`summary`, `channels`).
    """

    def __init__(self, channels: dict[str | int, Iterable[int]], layers: Iterable[str] = ()):
        if not isinstance(channels, Mapping):
            raise ValueError(f"a plan maps layer names (or group ids) to channel indices, got {type(channels).__name__}")
        self.channels: dict[str | int, list[int]] = {key: _indices(key, ix) for key, ix in channels.items()}
        self.layers: tuple[str, ...] = tuple(layers)
        self.budget: dict | None = None   # set by `lowest`: what it aimed at and where it landed

    def __repr__(self) -> str:
        return f"PrunePlan({self.summary()})"

    def __len__(self) -> int:
        return sum(len(ix) for ix in self.channels.values())

    def resolve(self, graph: "ChannelGraph") -> dict[int, list[int]]:
        """{group id: sorted unique indices}; ValueError naming the layer for any bad entry."""
        resolved: dict[int, list[int]] = {}
        named_by: dict[int, str | int] = {}
        for key, indices in self.channels.items():
            group = graph.group(key)
            label = f"layer {key!r}" if isinstance(key, str) else f"group {key} ({group.name})"
            if not indices:
                continue
            if not group.prunable:
                raise ValueError(f"{label}: channel group {group.name!r} is not prunable: {group.reason}")
            if any(isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__") for i in indices):
                raise ValueError(f"{label}: channel indices must be integers, got {indices!r}")
            ints = [int(i) for i in indices]
            if len(set(ints)) != len(ints):
                dup = sorted({i for i in ints if ints.count(i) > 1})
                raise ValueError(f"{label}: duplicate channel indices {dup}")
            bad = [i for i in ints if not 0 <= i < group.size]
            if bad:
                raise ValueError(f"{label}: channel indices {bad} out of range 0..{group.size - 1}")
            if len(ints) >= group.size:
                raise ValueError(f"{label}: removing all {group.size} channels would empty group {group.name!r}")
            ints.sort()
            _check_blocks(group, ints, label)
            if group.id in resolved and resolved[group.id] != ints:
                raise ValueError(
                    f"{label} and {named_by[group.id]!r} name the same channel group {group.name!r} "
                    "with different channel indices"
                )
            resolved[group.id] = ints
            named_by[group.id] = key
        for keep in getattr(graph, "keep", ()):
            if keep.emptied(resolved):
                names = ", ".join(repr(graph.groups[g].name) for g in keep.channels)
                raise ValueError(f"layer {names}: this plan removes every channel of {keep.label}; a part the "
                                 "code splits or slices off must keep at least one")
        return dict(sorted(resolved.items()))

    def summary(self) -> dict:
        """JSON-able {layer: number of channels removed}."""
        return {str(key): len(set(ix)) for key, ix in self.channels.items() if ix}

    @classmethod
    def lowest(cls, table: "pd.DataFrame", graph: "ChannelGraph", n: int | None = None, scheme: str = "all",
               min_keep: int = 1, round_to: int | None = None, *, target_macs: float | None = None,
               target_latency_ms: float | None = None, costs: "CostModel | None" = None,
               latency: "LatencyTable | None" = None) -> "PrunePlan":
        """Remove the lowest-`normalized` channels over all eligible groups: `n` of them (200 when
        no target is given), or as many as it takes to bring the model down to `target_macs` MACs
        (`costs`: a CostModel of this model) or `target_latency_ms` (`latency`: a LatencyTable, with
        `costs`).

        No group drops below `min_keep` channels; with `round_to` every touched group keeps a
        multiple of it, so fewer than `n` may be removed. A target is met to within one removal
        step's cost (one filter; a grouped conv's group loses one per conv group at a time):
        `plan.budget` records target, reached value and that step. A target that cutting every
        eligible group to its minimum does not reach is a ValueError naming the limit.
        """
        if scheme not in ("all", "internal"):
            raise ValueError(f"scheme must be 'all' or 'internal', got {scheme!r}")
        if min_keep < 1:
            raise ValueError(f"min_keep must be at least 1, got {min_keep}")
        _check_round_to(round_to)
        budget = _budget(n, target_macs, target_latency_ms, costs, latency)
        eligible = {g.id: g for g in graph.prunable("internal" if scheme == "internal" else None)}
        rows = _ordered(table, graph)
        rows = rows[rows["group"].isin(list(eligible))]
        step = round_to or 1
        keeps = _keeps_by_group(graph)
        pending: dict[int, list[int]] = {g: [] for g in eligible}
        chosen: dict[int, list[int]] = {g: [] for g in eligible}
        full: set[int] = set()
        for g, filters in _units(rows, eligible):
            if budget.reached():
                break
            if g in full:
                continue
            group = eligible[g]
            pending[g].extend(filters)
            removed = len(chosen[g]) + len(pending[g])
            remaining = group.size - removed
            if remaining < max(min_keep, 1):
                full.add(g)
                continue
            if remaining % step:
                continue
            if not budget.allows(len(pending[g])):
                full.add(g)
                continue
            if _would_empty(keeps.get(g, ()), chosen, g, pending[g]):
                pending[g] = []
                continue
            budget.take(g, len(pending[g]))
            chosen[g].extend(pending[g])
            pending[g] = []
        if not budget.reached() and budget.is_target:
            raise ValueError(budget.unreachable(scheme, min_keep, round_to))
        channels = {eligible[g].name: sorted(ix) for g, ix in chosen.items() if ix}
        plan = cls(channels, layers=channels)
        plan.budget = budget.record()
        return plan

    @classmethod
    def from_counts(cls, table: "pd.DataFrame", graph: "ChannelGraph", counts: dict[str, int],
                    round_to: int | None = None) -> "PrunePlan":
        """Remove the `k` lowest-`normalized` channels of each named layer's group."""
        _check_round_to(round_to)
        rows = _ordered(table, graph)
        channels: dict[str, list[int]] = {}
        for layer, k in counts.items():
            group = graph.group(layer)
            k = int(k)
            if k < 0:
                raise ValueError(f"layer {layer!r}: cannot remove a negative number of channels ({k})")
            if round_to and k:
                keep = max(round_to, round((group.size - k) / round_to) * round_to)
                k = max(0, group.size - keep)
            if k >= group.size:
                raise ValueError(f"layer {layer!r}: removing {k} of {group.size} channels would empty group {group.name!r}")
            if k == 0:
                continue
            ranked = rows[rows["group"] == group.id]["filter"].tolist()
            if len(ranked) < k:
                raise ValueError(f"layer {layer!r}: the rank table has {len(ranked)} rows for group {group.name!r}, need {k}")
            if group.blocks:
                channels[layer] = _lowest_per_block(group, ranked, k, layer)
            else:
                channels[layer] = _lowest_keeping(_keeps_by_group(graph).get(group.id, ()), group.id, ranked, k)
        return cls(channels, layers=counts)


class _Count:
    """`n` channels at most."""

    is_target = False

    def __init__(self, n: int):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n, self.total = n, 0

    def reached(self) -> bool:
        return self.total >= self.n

    def allows(self, k: int) -> bool:
        return self.total + k <= self.n

    def take(self, group: int, k: int) -> None:
        self.total += k

    def record(self) -> dict:
        return {"unit": "filters", "target": self.n, "reached": self.total}


class _Target:
    """Cut until a cost (MACs, ms) is at or below the target; the last step may go past it."""

    is_target = True

    def __init__(self, unit: str, target: float, before: float, change):
        self.unit, self.target, self.before, self.value, self._change = unit, float(target), float(before), float(before), change
        self.removed: dict[int, int] = {}
        self.last_step = 0.0

    def reached(self) -> bool:
        return self.value <= self.target

    def allows(self, k: int) -> bool:
        return True

    def take(self, group: int, k: int) -> None:
        delta = float(self._change(self.removed, group, k))
        self.removed[group] = self.removed.get(group, 0) + k
        self.value += delta
        self.last_step = -delta

    def record(self) -> dict:
        return {"unit": self.unit, "target": self.target, "before": self.before, "reached": self.value,
                "last_step": self.last_step}

    def unreachable(self, scheme: str, min_keep: int, round_to: int | None) -> str:
        name = {"macs": "target_macs", "latency_ms": "target_latency_ms"}[self.unit]
        fmt = (lambda v: f"{v:,.0f} MACs") if self.unit == "macs" else (lambda v: f"{v:.3f} ms")
        limits = f"min_keep={min_keep}" + (f", round_to={round_to}" if round_to else "")
        return (f"{name}: {fmt(self.target)} cannot be reached: cutting every {'block-internal' if scheme == 'internal' else 'prunable'} "
                f"group (scheme {scheme!r}) down to {limits} leaves {fmt(self.value)} ({self.value / self.before:.1%} of "
                f"{fmt(self.before)}); the rest sits in layers no eligible group can shrink. Lower min_keep"
                f"{', use scheme all' if scheme == 'internal' else ''} or set a higher target")


def _budget(n, target_macs, target_latency_ms, costs, latency):
    targets = [t for t in (target_macs, target_latency_ms) if t is not None]
    if len(targets) > 1 or targets and n is not None:
        raise ValueError("give one of n, target_macs and target_latency_ms")
    if target_macs is not None:
        if costs is None:
            raise ValueError("target_macs needs costs= (a CostModel of the model the table ranks)")
        if target_macs < 1:
            raise ValueError(f"target_macs is a number of MACs (the model has {costs.before.macs:,}), got {target_macs}; "
                             "for a fraction pass costs.before.macs * fraction")
        return _Target("macs", target_macs, costs.before.macs, lambda r, g, k: costs.change(r, g, k).macs)
    if target_latency_ms is not None:
        if latency is None or costs is None:
            raise ValueError("target_latency_ms needs latency= (a LatencyTable) and costs= (a CostModel of the model)")
        if target_latency_ms <= 0:
            raise ValueError(f"target_latency_ms must be positive, got {target_latency_ms}")
        return _Target("latency_ms", target_latency_ms, latency.predict(costs),
                       lambda r, g, k: latency.change(costs, r, g, k))
    return _Count(200 if n is None else int(n))


def _check_blocks(group, ints: list[int], label: str) -> None:
    """Grouped convolutions keep `groups`: each conv group must lose as many channels as the others."""
    if not group.blocks:
        return
    chosen = set(ints)
    counts = [len(chosen.intersection(block)) for block in group.blocks]
    if len(set(counts)) > 1:
        shown = ", ".join(map(str, counts[:8])) + (", ..." if len(counts) > 8 else "")
        raise ValueError(f"{label}: {group.rule}; this plan removes {shown} channels from them")


def _units(rows: "pd.DataFrame", eligible: dict) -> list[tuple[int, list[int]]]:
    """Removal steps, lowest first: one channel, or for a grouped conv's group the k-th lowest
    channel of every conv group at once (scored by their mean)."""
    blocked = {g for g, group in eligible.items() if group.blocks}
    if not blocked:  # rows are sorted already
        return [(int(g), [int(f)]) for g, f in zip(rows["group"].tolist(), rows["filter"].tolist())]
    items: list[tuple[float, int, int, list[int]]] = []
    plain = rows[~rows["group"].isin(list(blocked))]
    for g, f, v in zip(plain["group"].tolist(), plain["filter"].tolist(), plain["normalized"].tolist()):
        items.append((float(v), int(g), int(f), [int(f)]))
    for g in sorted(blocked):
        group = eligible[g]
        sub = rows[rows["group"] == g]
        score = dict(zip(sub["filter"].tolist(), sub["normalized"].tolist()))
        order = {f: i for i, f in enumerate(sub["filter"].tolist())}
        per_block = [sorted((f for f in block if f in score), key=order.__getitem__) for block in group.blocks]
        depth = min(len(b) for b in per_block)
        covered = set().union(*map(set, group.blocks))
        for k in range(depth):
            unit = [b[k] for b in per_block]
            items.append((sum(score[f] for f in unit) / len(unit), g, min(unit), unit))
        for f in sub["filter"].tolist():
            if f not in covered:
                items.append((float(score[f]), g, int(f), [int(f)]))
    items.sort(key=lambda t: (t[0], t[1], t[2]))
    return [(g, unit) for _, g, _, unit in items]


def _lowest_per_block(group, ranked: list[int], k: int, layer: str) -> list[int]:
    """k rounded to a multiple of the conv groups, then the lowest of each conv group."""
    n = len(group.blocks)
    per = max(1, round(k / n))
    smallest = min(len(b) for b in group.blocks)
    if per >= smallest:
        raise ValueError(f"layer {layer!r}: removing {per} of {smallest} channels from each of the {n} groups of "
                         f"{group.rule.split(' (')[0] if group.rule else group.name} would empty them")
    order = {f: i for i, f in enumerate(ranked)}
    chosen: list[int] = []
    for block in group.blocks:
        chosen += sorted(block, key=lambda f: order.get(f, len(order)))[:per]
    return sorted(int(f) for f in chosen)


def _keeps_by_group(graph) -> dict[int, list]:
    found: dict[int, list] = {}
    for keep in getattr(graph, "keep", ()):
        for g in keep.channels:
            found.setdefault(g, []).append(keep)
    return found


def _would_empty(keeps, chosen: dict[int, list[int]], group: int, more: list[int]) -> bool:
    """Taking `more` channels of `group` on top of `chosen` would empty a part the code names."""
    if not keeps:
        return False
    after = {**chosen, group: list(chosen.get(group, ())) + list(more)}
    return any(keep.emptied(after) for keep in keeps)


def _lowest_keeping(keeps, group: int, ranked: list[int], k: int) -> list[int]:
    """The k lowest-ranked channels, passing over any that would empty a part the code names."""
    chosen: list[int] = []
    for f in ranked:
        if len(chosen) == k:
            break
        if not _would_empty(keeps, {group: chosen}, group, [int(f)]):
            chosen.append(int(f))
    return sorted(chosen)


def _indices(key: str | int, indices) -> list[int]:
    """The channel indices given for one layer, as a list; a count or any non-iterable is refused."""
    label = f"layer {key!r}" if isinstance(key, str) else f"group {key!r}"
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        hint = (f"; to remove the {indices} lowest-ranked channels use PrunePlan.from_counts(table, graph, "
                f"{{{key!r}: {indices}}})" if isinstance(indices, int) and not isinstance(indices, bool) else "")
        raise ValueError(f"{label}: expected a list of channel indices to remove, got {indices!r}{hint}")
    return list(indices)


def _check_round_to(round_to: int | None) -> None:
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to}")


def _ordered(table: "pd.DataFrame", graph: "ChannelGraph") -> "pd.DataFrame":
    """Rows lowest `normalized` first; ties keep group then filter order."""
    missing = {"group", "filter", "normalized"} - set(table.columns)
    if missing:
        raise ValueError(f"rank table lacks columns {sorted(missing)}")
    ids = set(table["group"].tolist())
    unknown = sorted(g for g in ids if not 0 <= int(g) < len(graph.groups))
    if unknown:
        layer = table.loc[table["group"] == unknown[0], "layer"].iloc[0] if "layer" in table else unknown[0]
        raise ValueError(f"rank table names group {unknown[0]} (layer {layer!r}) that the graph does not have")
    for g in ids:
        group = graph.groups[int(g)]
        filters = table.loc[table["group"] == g, "filter"]
        if len(filters) and (filters.min() < 0 or filters.max() >= group.size):
            raise ValueError(f"rank table rows for layer {group.name!r} have filters outside 0..{group.size - 1}")
    return table.sort_values(["normalized", "group", "filter"], kind="stable")
