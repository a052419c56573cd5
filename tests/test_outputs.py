"""Which outputs keep their shape and values (`ChannelGraph.trace(..., outputs=)`): by default every
one; a selected-away output's channels are pruned like an inner tensor's (that output may change
shape), and everything kept stays exact — on every route, through `prune`, `check`, the
workspace, `prune-explorer rank` and `run`.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_explorer.cli import build_parser, loop_config, main
from prune_explorer.model.exactness import TOLERANCE, check, forward
from prune_explorer.model.graph import ROUTES, ChannelGraph, kept_outputs
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.workspace import Workspace


class WithFeatures(nn.Module):
    """A classifier that also returns the feature maps its head reads (as YOLO's eval output does)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.neck = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        feats = F.relu(self.neck(F.relu(self.stem(x))))
        return self.fc(feats.mean((2, 3))), {"feats": [feats], "logits_again": self.fc(feats.amax((2, 3)))}


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("route", ROUTES)
def test_every_output_is_kept_by_default_and_a_deselected_one_frees_its_channels(route):
    model = WithFeatures().eval()
    default = ChannelGraph.trace(model, X, route=route)
    assert default.outputs is None
    assert default.group("neck").kind == "output" and not default.group("neck").prunable
    assert "carries the model output" in default.group("neck").reason

    graph = ChannelGraph.trace(model, X, route=route, outputs="!1.feats")
    assert graph.outputs == "!1.feats" and graph.route == route
    assert graph.group("neck").prunable and graph.group("stem").prunable
    result = check(model, X, graph=graph)            # the graph's selection: only the kept outputs compared
    assert result.removed[graph.group("neck").id] and result.max_diff <= TOLERANCE, result.diffs
    with torch.no_grad():
        out = forward(result.pruned, X)
    kept = 12 - len(result.removed[graph.group("neck").id])
    assert out[1]["feats"][0].shape == (2, kept, 8, 8)   # allowed to change shape: it was selected away
    assert out[0].shape == (2, 5) and out[1]["logits_again"].shape == (2, 5)


@pytest.mark.parametrize("outputs", [["0", "1.logits_again"], "!1.feats.0", ["*.logits_again", "0"],
                                     lambda path: "feats" not in path])
def test_patterns_lists_wildcards_and_callables_say_the_same(outputs):
    graph = ChannelGraph.trace(WithFeatures().eval(), X, outputs=outputs)
    assert graph.group("neck").prunable
    assert set(kept_outputs(forward(WithFeatures(), X), outputs)) == {(0,), (1, "logits_again")}


def test_keeping_the_features_keeps_their_channels():
    graph = ChannelGraph.trace(WithFeatures().eval(), X, outputs=["1.feats"])   # only the features
    assert not graph.group("neck").prunable and graph.group("stem").prunable


@pytest.mark.parametrize("outputs, message", [
    ("2", r"'2' matches none of the model's outputs \(0, 1.feats.0, 1.logits_again\)"),
    (["0", "1.boxes"], "'1.boxes' matches none"),
    (["!0", "!1"], "keeps none of the model's outputs"),
    (lambda path: False, "keeps none"),
    (7, "give a path such as"),
    (["0", ""], "give a path such as"),
])
def test_a_selection_that_does_not_fit_the_outputs_is_refused_naming_them(outputs, message):
    model = WithFeatures().eval()
    with pytest.raises(ValueError, match=message):
        ChannelGraph.trace(model, X, outputs=outputs)


def test_prune_traces_with_the_selection_it_is_given():
    model = WithFeatures().eval()
    with pytest.raises(ValueError, match="neck"):
        prune(model, PrunePlan({"neck": [0]}), X)          # the features are an output: not prunable
    pruned = prune(model, PrunePlan({"neck": [0, 5]}), X, outputs="!1.feats")
    assert pruned.neck.out_channels == 10 and pruned.fc.in_features == 10


def test_the_workspace_and_the_loop_carry_the_selection(tmp_path):
    space = Workspace(tmp_path / "w", outputs=("!1.feats",))
    assert space.trace(WithFeatures().eval(), X).group("neck").prunable
    assert not Workspace(tmp_path / "w").trace(WithFeatures().eval(), X).group("neck").prunable

    config = loop_config(build_parser().parse_args(["run", "--outputs", "0, !1.feats"]))
    assert config.outputs == ("0", "!1.feats")
    assert loop_config(build_parser().parse_args(["run"])).outputs == ()
    with pytest.raises(ValueError, match="give a path"):
        loop_config(build_parser().parse_args(["run", "--outputs", "0,!"])).validate()


def test_cli_rank_takes_the_selection(tmp_path, capsys):
    from prune_explorer.model.zoo import build_model

    model = build_model(f"{__name__}:WithFeatures")
    with CaptureHook(model, tmp_path / "trial", save_every=1) as hook:
        hook.step()
        F.cross_entropy(model(X)[0], torch.tensor([0, 3])).backward()
    trial = str(tmp_path / "trial")
    assert main(["rank", trial, "--criterion", "l1", "--trust-model-code", __name__]) == 0
    assert "neck" not in capsys.readouterr().out.split("not in any channel group")[0]
    assert main(["rank", trial, "--criterion", "l1", "--trust-model-code", __name__, "--outputs", "!1.feats"]) == 0
    assert "neck" in capsys.readouterr().out
    assert main(["rank", trial, "--criterion", "l1", "--trust-model-code", __name__, "--outputs", "1.nope"]) == 2
    assert "'1.nope' matches none of the model's outputs" in capsys.readouterr().err
