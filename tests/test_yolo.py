"""ultralytics YOLOv8n and YOLO11n, built from yaml and never run before the trace: fx cannot take
their Detect head (anchors cached on a shape change), so a recorded forward does; random plans
are exact on every output, the pruned model is exact at another input size too, and every conv
is prunable but those that carry an output and (YOLO11n) those tied to C2PSA's attention.

In float64: the decoded boxes are pixel coordinates, where float32's rounding alone comes near
the 1e-4 of the exactness contract; in float64 a wrong slice still shows as a large difference.

Eval outputs: `(decoded, {"boxes", "scores", "feats"})`, where `feats` are Detect's inputs (the neck's
three feature maps, the loss's inputs), so with every output kept those convs carry a model output
(YOLOv8n 84.6 % of conv filters prunable); traced with `outputs="!1.feats"` (they may change shape)
or with `Detect.export = True` (ultralytics' own switch for deployment: the decoded predictions
only), every conv but the heads' last and C2PSA's attention is prunable (YOLOv8n 92.4 %, YOLO11n 85.2 %).
"""
from __future__ import annotations

import pytest
import torch

from prune_explorer.model.exactness import TOLERANCE, check, conv_filters, difference, forward, reference_output
from prune_explorer.model.graph import kept_outputs
from ultralytics_models import yolo

X = torch.randn(1, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
OTHER = torch.randn(1, 3, 160, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _head(model) -> tuple[str, set[str]]:
    """Detect's name and its convs that produce outputs (box distribution, classes, DFL)."""
    index = len(model.model) - 1
    detect = model.model[-1]
    name = f"model.{index}"
    outputs = {f"{name}.{branch}.{i}.2" for branch in ("cv2", "cv3") for i in range(detect.nl)}
    return name, outputs | {f"{name}.dfl.conv"}


def _attention(model) -> str | None:
    found = [name for name, m in model.named_modules() if type(m).__name__ == "C2PSA"]
    return found[0] if found else None


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_yolo_never_run_prunes_exactly_on_every_output_and_at_another_size(name):
    model = yolo(name).double()
    result = check(model, X)
    assert result.graph.route == "record" and result.input_unchanged
    assert result.removed and result.max_diff <= TOLERANCE, result.diffs
    with torch.no_grad():
        at_other_size = forward(result.pruned, OTHER)
    assert difference(at_other_size, reference_output(model, result.graph, result.removed, OTHER)) <= TOLERANCE
    head, outputs = _head(model)
    attention = _attention(model)
    for group in result.graph.groups:
        if group.prunable:
            continue
        assert group.reason, group.name
        assert group.kind == "output" or group.name in outputs or (attention and group.name.startswith(attention)), \
            (group.name, group.reason)


FEATS = "!1.feats"     # the default eval output but the neck's feature maps


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_yolo_in_default_eval_without_the_neck_feats_is_exact_on_the_rest_at_any_size(name):
    model = yolo(name).double()
    result = check(model, X, outputs=FEATS)
    graph = result.graph
    assert graph.route == "record" and graph.outputs == FEATS and result.input_unchanged
    assert result.removed and result.max_diff <= TOLERANCE, result.diffs
    with torch.no_grad():
        at_other_size = forward(result.pruned, OTHER)
    expected = reference_output(model, graph, result.removed, OTHER)
    assert difference(kept_outputs(at_other_size, FEATS), kept_outputs(expected, FEATS)) <= TOLERANCE
    assert set(kept_outputs(at_other_size, FEATS)) == {(0,), (1, "boxes"), (1, "scores")}
    _every_conv_prunable_but_the_heads_and_c2psa(model, graph, name)


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_yolo_deployment_outputs_leave_every_conv_prunable_but_the_heads_and_c2psa(name):
    model = yolo(name).double()
    model.model[-1].export = True               # ultralytics' switch: the decoded predictions only
    result = check(model, X)
    assert result.max_diff <= TOLERANCE, result.diffs
    _every_conv_prunable_but_the_heads_and_c2psa(model, result.graph, name)


def _every_conv_prunable_but_the_heads_and_c2psa(model, graph, name: str) -> None:
    head, outputs = _head(model)
    attention = _attention(model)
    refused = {sl.module for sl in graph.slices.values() if sl.kind == "conv" and sl.out_group is not None
               and not all(graph.groups[g].prunable for g in set(sl.out_group.tolist()))}
    assert refused - outputs - {m for m in refused if attention and m.startswith(attention + ".")} == set()
    prunable, total = conv_filters(graph)
    assert prunable / total >= (0.85 if name == "yolov8n" else 0.80), (prunable, total)
    if attention:
        reasons = " ".join(graph.group(m).reason for m in refused if m.startswith(attention + "."))
        assert "split" in reasons and "view" in reasons     # C2PSA's fixed split and the attention's heads


def test_the_package_never_imports_ultralytics():
    import re
    from pathlib import Path

    import prune_explorer

    root = Path(prune_explorer.__file__).parent
    pattern = re.compile(r"^\s*(import|from)\s+ultralytics|import_module\([\"']ultralytics", re.M)
    importing = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert importing == []                       # AGPL-3.0: tests and benchmarks only
