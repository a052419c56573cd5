"""A team's own training script, run as prune_explorer's fine-tuning job.

Everything about training is this script's: its data pipeline (image files in class folders,
read with PIL into memory, split per class by seed), its augmentation (random shifts, brightness
and contrast jitter), its loss (cross-entropy with label smoothing), optimiser (AdamW with a cosine
schedule) and mixed precision on a GPU. What makes it a job is the job contract (`from prune_explorer import job`): it gets the
model to fine-tune (the baseline architecture, or the pruned model of an iteration), wraps the
loop with the capture hook (the trial the next ranking reads), reports each epoch (the stop rule
runs there) and, on leaving the `with` block, saves the best epoch's model and metrics.json. Given a
teacher (`--teacher`, which `prune-explorer run --distill baseline|parent` sends), its loss becomes
`run.distill_loss` against the frozen teacher's logits.

    python train.py --model resnet18 --data-dir digits/ --out-dir out/ --epochs 3 --label-smoothing 0.1
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prune_explorer import job

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # ImageNet's: what pretrained models expect
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def read_folder(root: Path, size: int, classes: list[str] | None = None):
    """Every image under root/<class>/ as uint8 (N, 3, size, size), its labels, and the class names."""
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
                images.append(torch.from_numpy(np.array(rgb)).permute(2, 0, 1))
                labels.append(label)
    if not images:
        raise FileNotFoundError(f"{root}: no images in class folders ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return torch.stack(images), torch.tensor(labels), classes


def split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices, `fraction` of each class held out, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[: max(1, round(len(members) * fraction))])
    val = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


class Images(Dataset):
    """In-memory images, normalised; training copies get a random shift (up to 1/8) and light colour jitter."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool):
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.images[index].float() / 255.0
        if self.augment:
            x = self.shift(x)
            x = ((x - 0.5) * (0.8 + 0.4 * torch.rand(1)) + 0.5 + 0.2 * (torch.rand(1) - 0.5)).clamp(0, 1)
        return (x - MEAN) / STD, self.labels[index]

    @staticmethod
    def shift(x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        pad = max(1, size // 8)
        padded = nn.functional.pad(x.unsqueeze(0), (pad, pad, pad, pad), mode="replicate")[0]
        top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        return padded[:, top: top + size, left: left + size]


def datasets(run: job.JobContext, size: int) -> tuple[Images, Images, list[str]]:
    """The train and validation sets: --val-dir (SageMaker's test channel) or a split of --data-dir."""
    if run.spec.data_dir is None:
        raise ValueError("--data-dir (or a SageMaker train channel) is needed: a folder of class folders")
    images, labels, classes = read_folder(Path(run.spec.data_dir), size)
    if run.spec.val_dir:
        val_images, val_labels, _ = read_folder(Path(run.spec.val_dir), size, classes)
        return Images(images, labels, augment=True), Images(val_images, val_labels, augment=False), classes
    train_idx, val_idx = split(labels, run.hyperparameter("val_fraction", 0.2), run.spec.seed)
    return (Images(images[train_idx], labels[train_idx], augment=True),
            Images(images[val_idx], labels[val_idx], augment=False), classes)


def main() -> None:
    with job.start() as run:
        size = run.spec.image_size or 32
        train_set, val_set, classes = datasets(run, size)
        model = run.load_model(num_classes=len(classes)).to(run.device)
        net = run.distribute(model)
        loader = DataLoader(train_set, batch_size=run.spec.batch_size, sampler=run.train_sampler(train_set),
                            num_workers=run.spec.workers)
        val_loader = DataLoader(val_set, batch_size=run.spec.batch_size, sampler=run.val_sampler(val_set),
                                num_workers=run.spec.workers)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=run.hyperparameter("label_smoothing", 0.1))
        optimizer = torch.optim.AdamW(model.parameters(), lr=run.spec.lr,
                                      weight_decay=run.hyperparameter("weight_decay", 0.01))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=run.spec.epochs * len(loader))
        cuda = run.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        hook = run.capture(model)
        for _ in run.epochs():
            net.train()
            total = seen = 0.0
            for x, y in loader:
                x, y = x.to(run.device), y.to(run.device)
                hook.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(run.device.type, enabled=cuda):
                    logits = net(x)
                    # with --teacher (`prune-explorer run --distill baseline`): Hinton's loss against the
                    # frozen teacher's logits on this batch; otherwise the script's own loss
                    loss = run.distill_loss(logits, x, y) if run.distilling else loss_fn(logits, y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                total, seen = total + float(loss.detach()) * len(y), seen + len(y)
            val_loss, accuracy = run.evaluate(net, val_loader)
            run.report(accuracy, train_loss=total / seen, val_loss=val_loss, lr=schedule.get_last_lr()[0])


if __name__ == "__main__":
    main()
