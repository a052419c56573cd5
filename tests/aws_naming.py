"""Write a trial the way the AWS pruning example's custom smdebug hook names its tensors.

Activations ``{module}_{call}_output_0``; output gradients ``gradient/{module}_{Class}_output``
with the SAME name for every call of a reused module (the example's trap: the second write of a
step wins in smdebug's reader); parameters ``{Model}_{param}``; batch-norm statistics
``{bn}.running_mean_output_0``. Written with smdebug's own FileWriter, one event file per step.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

import prune_explorer.signals.smdebug_compat  # noqa: F401
from smdebug.core.access_layer.utils import training_has_ended
from smdebug.core.collection_manager import CollectionManager
from smdebug.core.writer import FileWriter


def write_aws_trial(model: nn.Module, out_dir: str, batches, loss_fn=nn.functional.cross_entropy,
                    watch=(nn.ReLU, nn.BatchNorm2d), lr: float = 0.0) -> None:
    """Run one training step per (x, y) in `batches`, saving every step like the example."""
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = defaultdict(int)
    state: dict[str, FileWriter] = {}
    model_cls = model._get_name()

    def write(name, tensor):
        state["writer"].write_tensor(tdata=tensor.detach().cpu().numpy(), tname=name)

    def forward_hook(module, inputs, output):
        name = names[module]
        call = calls[name]
        calls[name] += 1
        write(f"{name}_{call}_output_0", output)
        if output.requires_grad:
            output.register_hook(lambda g, tag=f"gradient/{name}_{module._get_name()}_output": write(tag, g))
        if isinstance(module, nn.BatchNorm2d):
            write(f"{name}.running_mean_output_0", module.running_mean)
            write(f"{name}.running_var_output_0", module.running_var)

    handles = [m.register_forward_hook(forward_hook) for m in model.modules() if isinstance(m, watch)]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr) if lr else None
    try:
        for step, (x, y) in enumerate(batches):
            state["writer"] = FileWriter(trial_dir=out_dir, step=step, worker="worker_0")
            calls.clear()
            for pname, param in model.named_parameters():
                write(f"{model_cls}_{pname}", param)
            model.zero_grad()
            loss_fn(model(x), y).backward()
            if optimizer is not None:
                optimizer.step()
            state.pop("writer").close()
    finally:
        for h in handles:
            h.remove()
    CollectionManager().export(out_dir, "worker_0_collections.json")
    training_has_ended(out_dir)


class TinyResNet(nn.Module):
    """A resnet-shaped net small enough for unit tests: stem, two BasicBlocks (one downsampling), fc."""

    def __init__(self, num_classes: int = 3, width: int = 8):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, 2 * width, stride=2, downsample=down))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def relu_outputs_and_grads(model, x, y):
    """Activations and output gradients of every ReLU call, computed without any capture hook.

    Keys are (module name, call index), as the graph's taps name them.
    """
    names = {m: n for n, m in model.named_modules()}
    calls, found = {}, {}

    def hook(module, inputs, output):
        key = (names[module], calls.get(names[module], 0))
        calls[key[0]] = key[1] + 1
        found[key] = [output.detach().clone(), None]
        output.register_hook(lambda g: found[key].__setitem__(1, g.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    return found
