"""From the walk's channel ids and couplings to channel groups, member slices and taps.

Channels coupled together form one *class* (removed as one: a group's channel index); producers
whose classes are tied form one *group*. A group's channels are numbered in its first producer's
filter order, so a rank table's `filter` is that producer's filter index.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..kinds import KINDS
from .analysis import Analysis
from .channels import Layout
from .ops import ACTIVATION_MODULES


@dataclass(frozen=True)
class Tap:
    """Where a group's tensor can be observed with a forward hook (channels along `axis`)."""

    module: str
    call: int
    axis: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together (a producer's outputs and everything they feed)."""

    id: int
    layers: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    size: int
    prunable: bool
    reason: str | None
    kind: str
    taps: tuple[Tap, ...]
    name: str
    blocks: tuple[tuple[int, ...], ...] = ()   # remove the same number of channels from each block
    rule: str | None = None                    # why the blocks exist (names the grouped conv)


@dataclass(frozen=True, eq=False)
class ModuleSlices:
    """How one member's tensors map onto channel groups; what surgery slices.

    Per position along the tensors' output dim (`out_*`) and input dim (`in_*`): the group id
    (-1: no group) and the channel index within it. `in_factor`: features per channel of a
    linear fed by a flatten. `params`: role -> attribute of `module` ("weight", "bias", ...).
    """

    name: str
    module: str
    kind: str
    params: dict
    out_group: np.ndarray | None
    out_channel: np.ndarray | None
    in_group: np.ndarray | None
    in_channel: np.ndarray | None
    in_factor: int = 1
    out_factor: int = 1
    in_axis: int = 1
    groups: int = 1
    param_dim: int = 0
    out_touches: frozenset = field(default_factory=frozenset)
    in_touches: frozenset = field(default_factory=frozenset)
    extra: dict = field(default_factory=dict)     # kind-specific (a channel norm's axis, groups, width)

    @property
    def out(self) -> tuple[tuple[int, int], ...] | None:
        return _runs(self.out_group)

    @property
    def inputs(self) -> tuple[tuple[int, int], ...] | None:
        return _runs(self.in_group)

    def kept(self, side: str, removed: dict[int, np.ndarray]) -> torch.Tensor | None:
        """Kept positions along one dim (expanded by its factor), or None when nothing there is cut."""
        touches = self.out_touches if side == "out" else self.in_touches
        if not touches & removed.keys():
            return None
        groups = self.out_group if side == "out" else self.in_group
        channels = self.out_channel if side == "out" else self.in_channel
        mask = np.ones(groups.size, dtype=bool)
        for g in touches & removed.keys():
            at = groups == g
            mask[at] = ~removed[g][channels[at]]
        index = np.flatnonzero(mask)
        factor = self.out_factor if side == "out" else self.in_factor
        if factor > 1:
            index = (index[:, None] * factor + np.arange(factor)).reshape(-1)
        return torch.from_numpy(index)

    def positions(self, side: str, removed: dict[int, list[int]]) -> np.ndarray:
        """Positions along one dim (expanded by its factor) that carry removed channels."""
        groups = self.out_group if side == "out" else self.in_group
        channels = self.out_channel if side == "out" else self.in_channel
        if groups is None:
            return np.zeros(0, dtype=np.int64)
        hit = np.zeros(groups.size, dtype=bool)
        for g, ix in removed.items():
            at = groups == g
            hit[at] = np.isin(channels[at], ix)
        index = np.flatnonzero(hit)
        factor = self.out_factor if side == "out" else self.in_factor
        if factor > 1:
            index = (index[:, None] * factor + np.arange(factor)).reshape(-1)
        return index


def _runs(groups: np.ndarray | None) -> tuple[tuple[int, int], ...] | None:
    if groups is None:
        return None
    runs: list[list[int]] = []
    for g in groups.tolist():
        if runs and runs[-1][0] == g:
            runs[-1][1] += 1
        else:
            runs.append([g, 1])
    return tuple((g, n) for g, n in runs)


@dataclass
class Built:
    groups: list[ChannelGroup]
    slices: dict[str, ModuleSlices]
    by_layer: dict[str, int]
    ambiguous: dict[str, tuple[int, ...]]
    keep: list["KeepOne"] = field(default_factory=list)


@dataclass(frozen=True)
class KeepOne:
    """Channels of which a plan must keep at least one (a part of a split or slice the code names:
    an empty part would leave a layer without inputs). `channels`: group id -> channel indices."""

    label: str
    channels: dict

    def emptied(self, removed: dict[int, list[int]]) -> bool:
        return all(g in removed and set(ix) <= set(removed[g]) for g, ix in self.channels.items())


def build(an: Analysis) -> Built:
    ch = an.channels
    order = {name: i for i, name in enumerate(an.modules)}
    labels = ch.components()
    n_atoms = len(ch.atoms)
    atom_of_id = np.repeat(np.arange(n_atoms), [a.size for a in ch.atoms]) if n_atoms else np.zeros(0, np.int64)
    # atoms tied through any channel form one group
    if ch.total:
        edges = coo_matrix((np.ones(ch.total, np.int8), (atom_of_id, n_atoms + labels)),
                           shape=(n_atoms + ch.total, n_atoms + ch.total))
        _, comp = connected_components(edges, directed=False)
        atom_comp = comp[:n_atoms]
    else:
        atom_comp = np.zeros(0, np.int64)

    def producer_order(atom) -> int:
        member = an.members.get(atom.producer)
        return order.get(member.module, len(order)) if member else len(order)

    by_comp: dict[int, list[int]] = {}
    for i, atom in enumerate(ch.atoms):
        by_comp.setdefault(int(atom_comp[i]), []).append(i)
    with_producer = [c for c, atoms in by_comp.items() if any(ch.atoms[a].producer for a in atoms)]
    with_producer.sort(key=lambda c: min(producer_order(ch.atoms[a]) for a in by_comp[c] if ch.atoms[a].producer))

    label_gid = np.full(max(ch.total, 1), -1, dtype=np.int64)
    label_cls = np.full(max(ch.total, 1), -1, dtype=np.int64)
    sizes: list[int] = []
    for gid, comp_id in enumerate(with_producer):
        atoms = sorted(by_comp[comp_id], key=lambda a: (ch.atoms[a].producer is None, producer_order(ch.atoms[a]), a))
        ids = np.concatenate([np.arange(ch.atoms[a].start, ch.atoms[a].start + ch.atoms[a].size) for a in atoms])
        seq = labels[ids]
        _, first = np.unique(seq, return_index=True)
        ordered = seq[np.sort(first)]
        label_gid[ordered] = gid
        label_cls[ordered] = np.arange(ordered.size)
        sizes.append(int(ordered.size))

    def gid_of(ids: np.ndarray) -> np.ndarray:
        return label_gid[labels[ids]]

    seen_ids: dict[int, tuple[np.ndarray, list[int]]] = {}

    def groups_in(ids: np.ndarray) -> list[int]:
        """The groups (>= 0) some of `ids` belong to (cached per array: layouts share them)."""
        hit = seen_ids.get(id(ids))
        if hit is not None and hit[0] is ids:
            return hit[1]
        found = _groups_in(ids)
        seen_ids[id(ids)] = (ids, found)
        return found

    def _groups_in(ids: np.ndarray) -> list[int]:
        gids = gid_of(ids)
        if not gids.size:
            return []
        if (gids == gids[0]).all():
            return [int(gids[0])] if gids[0] >= 0 else []
        return [g for g in np.unique(gids).tolist() if g >= 0]

    def cls_of(ids: np.ndarray) -> np.ndarray:
        return label_cls[labels[ids]]

    n_groups = len(with_producer)
    reasons: list[list[str]] = [[] for _ in range(n_groups)]
    for ids, reason in ch.reasons:
        for g in groups_in(ids):
            if reason not in reasons[g]:
                reasons[g].append(reason)
    output = [False] * n_groups
    for ids in ch.output:
        for g in groups_in(ids):
            output[g] = True
    residual = [False] * n_groups
    for ids in ch.residual:
        for g in groups_in(ids):
            residual[g] = True
    blocks, rules = _balance(ch, gid_of, cls_of, reasons, n_groups)

    slices: dict[str, ModuleSlices] = {}
    producers: list[set[str]] = [set() for _ in range(n_groups)]
    consumers: list[set[str]] = [set() for _ in range(n_groups)]
    members: list[set[str]] = [set() for _ in range(n_groups)]
    for name, m in an.members.items():
        og = gid_of(m.out) if m.out is not None else None
        ig = gid_of(m.inp) if m.inp is not None else None
        extra = dict(m.extra)
        if "through" in extra:     # a Linear over another dim: the channels it passes through, per group
            gids, classes = gid_of(extra["through"]), cls_of(extra["through"])
            extra["through_full"] = int(gids.size)
            extra["through"] = {int(g): int((gids == g).sum()) for g in np.unique(gids).tolist() if g >= 0}
            extra["through_classes"] = {g: classes[gids == g] for g in extra["through"]}
        sl = ModuleSlices(
            name, m.module, m.kind, dict(m.params), og, cls_of(m.out) if m.out is not None else None,
            ig, cls_of(m.inp) if m.inp is not None else None, m.in_factor, m.out_factor, m.in_axis, m.groups,
            m.param_dim, frozenset(groups_in(m.out)) if og is not None else frozenset(),
            frozenset(groups_in(m.inp)) if ig is not None else frozenset(), extra)
        slices[name] = sl
        label = m.module or m.name            # a root module's parameter: its own name
        for g in sl.out_touches:
            if KINDS[m.kind].produces:
                producers[g].add(label)
            members[g].add(label)
        for g in sl.in_touches:
            consumers[g].add(label)
            members[g].add(label)
    for module, id_lists in an.touched.items():
        for ids in id_lists.values():
            for g in groups_in(ids):
                members[g].add(module)

    by_layer: dict[str, int] = {}
    ambiguous: dict[str, tuple[int, ...]] = {}
    for name, sl in slices.items():
        out_groups = sorted(sl.out_touches)
        if KINDS[sl.kind].has_filters and out_groups:
            if sl.module:
                by_layer.setdefault(sl.module, out_groups[0])
            by_layer.setdefault(name, out_groups[0])
    for name, sl in slices.items():
        for key in (sl.module, name) if sl.module else (name,):
            if key in by_layer or key in ambiguous:
                continue
            out_groups = sorted(sl.out_touches)
            if len(out_groups) == 1:
                by_layer[key] = out_groups[0]
            elif out_groups:
                ambiguous[key] = tuple(out_groups)
    groups_of: dict[str, list[int]] = {}
    for g, names in enumerate(members):
        for name in names:
            groups_of.setdefault(name, []).append(g)
    for name, found in groups_of.items():
        if name not in by_layer and name not in ambiguous:
            if len(found) == 1:
                by_layer[name] = found[0]
            else:
                ambiguous[name] = tuple(sorted(found))

    taps = _taps(an, gid_of, cls_of, sizes)
    filters_of: list[list[ModuleSlices]] = [[] for _ in range(n_groups)]
    for sl in slices.values():
        if KINDS[sl.kind].has_filters:
            for g in sl.out_touches:
                filters_of[g].append(sl)
    groups: list[ChannelGroup] = []
    for g in range(n_groups):
        why = list(reasons[g])
        if sizes[g] == 1:
            channels = sum(int((sl.out_group == g).sum()) for sl in filters_of[g])
            if channels > 1:
                why.append(f"channel shuffles and equal chunks tie all its {channels} channels into one")
        if output[g]:
            why.insert(0, "carries the model output")
        kind = "output" if output[g] else "residual" if residual[g] else "internal"
        producer_names = sorted(producers[g], key=lambda n: order.get(n, len(order)))
        filters = [sl.module or sl.name for sl in filters_of[g]]
        named = sorted(set(filters), key=lambda n: order.get(n, len(order))) or producer_names or [
            ch.atoms[a].producer for a in by_comp[with_producer[g]] if ch.atoms[a].producer]
        groups.append(ChannelGroup(
            id=g,
            layers=tuple(sorted(members[g] | producers[g] | consumers[g], key=lambda n: order.get(n, len(order)))),
            producers=tuple(producer_names),
            consumers=tuple(sorted(consumers[g], key=lambda n: order.get(n, len(order)))),
            size=sizes[g],
            prunable=not why,
            reason="; ".join(why[:3]) if why else None,
            kind=kind,
            taps=taps.get(g, ()),
            name=named[0] if named else f"group{g}",
            blocks=blocks.get(g, ()),
            rule=rules.get(g),
        ))
    tensors = {name: m for name, m in an.members.items() if KINDS[m.kind].produces}
    sides = [(m.out, f"the outputs of {name}") for name, m in tensors.items() if m.out is not None] + \
        [(m.inp, f"the inputs of {name}") for name, m in tensors.items() if m.inp is not None]
    keep = _keep(ch.keep + sides, gid_of, cls_of, groups)
    return Built(groups, slices, by_layer, ambiguous, keep)


def _keep(parts, gid_of, cls_of, groups: list[ChannelGroup]) -> list[KeepOne]:
    """The keep-one constraints a plan can break: parts of splits and slices, and a layer's inputs or
    outputs that hold only some channels of their groups (a conv cannot lose all its filters). A part
    with a position no plan removes, or holding every channel of a group, never empties."""
    found, seen = [], set()
    for ids, label in parts:
        ids = np.asarray(ids).reshape(-1)
        gids = gid_of(ids)
        if not gids.size or (gids < 0).any():
            continue
        classes = cls_of(ids)
        channels = {}
        for g in np.unique(gids).tolist():
            held = set(classes[gids == g].tolist())
            if not groups[g].prunable or len(held) == groups[g].size:
                channels = None
                break
            channels[int(g)] = tuple(sorted(held))
        key = None if channels is None else tuple(sorted(channels.items()))
        if channels and key not in seen:
            seen.add(key)
            found.append(KeepOne(label, channels))
    return found


def _balance(ch, gid_of, cls_of, reasons, n_groups):
    """Equal-count blocks per group from the grouped convolutions; refusals where they cannot hold."""
    blocks: dict[int, tuple[tuple[int, ...], ...]] = {}
    rules: dict[int, str] = {}
    for ids, n_blocks, rule in ch.balanced:
        gids = gid_of(ids)
        found = [g for g in np.unique(gids).tolist() if g >= 0]
        if not found:
            continue
        cls = cls_of(ids)
        if len(found) > 1 or (gids < 0).any():
            for g in found:
                reasons[g].append(f"{rule}, but they hold channels of several channel groups")
            continue
        g = found[0]
        parts = cls.reshape(n_blocks, -1)
        if len(np.unique(cls)) != cls.size:
            reasons[g].append(f"{rule}, but a channel shuffle ties channels across them")
            continue
        partition = tuple(tuple(sorted(p.tolist())) for p in parts)
        if g in blocks and blocks[g] != partition:
            reasons[g].append(f"{rule}, and {rules[g]} splits them differently")
            continue
        blocks[g], rules[g] = partition, rule
    return blocks, rules


def _taps(an: Analysis, gid_of, cls_of, sizes: list[int]) -> dict[int, tuple[Tap, ...]]:
    """For each path into a consumer, the last activation on it (else the last module) whose output
    carries exactly one group, channel i at position i."""
    outputs = an.traced.module_outputs

    cache: dict = {}

    def clean(node) -> tuple[int, int] | None:
        if node not in cache:
            cache[node] = _clean(node)
        return cache[node]

    def _clean(node) -> tuple[int, int] | None:
        layout = an.layout.get(node)
        if not isinstance(layout, Layout) or len(layout.axes) != 1 or layout.factor != 1:
            return None
        gids = gid_of(layout.ids)
        g = int(gids[0]) if gids.size else -1
        if g < 0 or not (gids == g).all() or layout.ids.size != sizes[g]:
            return None
        if not (cls_of(layout.ids) == np.arange(sizes[g])).all():
            return None
        return g, layout.axis

    def activation(calls):
        for module, call in calls:
            if isinstance(an.modules.get(module), ACTIVATION_MODULES):
                return module, call
        return None

    def walk_back(node):
        last = None
        while isinstance(node, torch.fx.Node):
            if clean(node) is None:
                return last
            calls = outputs.get(node)
            if calls:
                act = activation(calls)
                if act is not None:
                    return node, act
                if last is None:
                    last = (node, calls[0])
            node = an.link.get(node)
        return last

    found: dict[int, dict[Tap, None]] = {}
    for node in an.consumer_inputs:
        hit = walk_back(node)
        if hit is not None:
            g, axis = clean(hit[0])
            found.setdefault(g, {})[Tap(hit[1][0], hit[1][1], axis)] = None
    last_output: dict[int, Tap] = {}
    for node in an.traced.graph.nodes:
        calls = outputs.get(node)
        if calls and (c := clean(node)) is not None:
            last_output[c[0]] = Tap(calls[0][0], calls[0][1], c[1])
    for g, tap in last_output.items():
        found.setdefault(g, {tap: None})
    return {g: tuple(chosen) for g, chosen in found.items()}
