"""Knowledge distillation for a fine-tuning job: a frozen teacher and Hinton's loss.

Pruning past half the compute recovers better when the cut model learns from an unpruned one
(NVIDIA Model Optimizer's prune → distill recipe). The job contract (`JobContext.teacher()`,
`JobContext.distill_loss(...)`) hands a job its teacher — the workspace's baseline or the parent
iteration, a saved model directory (`--teacher`, or SageMaker's `teacher` channel) — loaded here
frozen: eval mode, no parameter requires grad, every forward under `torch.no_grad`, so neither its
weights nor its batch-norm statistics move. The time spent in its forwards is counted, so a job
reports what the teacher cost (metrics.json `teacher`).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DISTILL_TEACHERS = ("baseline", "parent")  # which model of the workspace teaches (Workspace.teacher_dir)
DEFAULT_ALPHA = 0.9        # weight of the soft-target term; CRD's KD baseline (Tian et al. 2020), Hinton's
DEFAULT_TEMPERATURE = 4.0  # "considerably lower weight on the hard targets", at its usual T = 4


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 alpha: float = DEFAULT_ALPHA, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Hinton et al. 2015: (1 − alpha)·CE(s, y) + alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean.

    The T² keeps the soft term's gradients the size of the hard term's whatever T is. The teacher's
    logits carry no gradient."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distill_loss: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ (is the teacher a model of the same task?)")
    hard = F.cross_entropy(student_logits, targets)
    if alpha == 0.0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits.detach() / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature ** 2 * soft


def weights_digest(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, parameters and buffers): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


class Teacher:
    """A saved model loaded frozen for distillation; `logits(x)` runs it without gradients and keeps time."""

    def __init__(self, directory: str | Path, device: torch.device | str = "cpu", trust_code: Any = None):
        from ..model.store import load

        self.directory = Path(directory)
        if not (self.directory / "model.json").is_file():
            raise FileNotFoundError(f"teacher {self.directory}: not a saved model directory (no model.json in it)")
        self.model = load(self.directory, trust_code=trust_code).eval().requires_grad_(False).to(device)
        self.digest_before = weights_digest(self.model)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.calls = 0
        self.model.register_forward_pre_hook(self._start)
        self.model.register_forward_hook(self._stop)
        self._started: tuple[float, float] | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's output on a batch: eval mode, no gradients."""
        if self.model.training:  # a script that called .train() on everything does not move its statistics
            self.model.eval()
        with torch.no_grad():
            return self.model(x)

    def record(self) -> dict:
        """What metrics.json says about the teacher: where it came from, what it cost, that it did not change."""
        return {"model": str(self.directory), "calls": self.calls, "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3), "weights_sha256_before": self.digest_before,
                "weights_sha256_after": weights_digest(self.model)}

    def _start(self, module: nn.Module, args: tuple) -> None:
        self._started = (time.perf_counter(), time.process_time())

    def _stop(self, module: nn.Module, args: tuple, output) -> None:
        if self._started is not None:
            wall, cpu = self._started
            self.seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu
            self.calls += 1
            self._started = None


class Distilling:
    """The job contract's teacher (mixed into `JobContext`, which sets `spec`, `device`, `log` and
    `_teacher = None`): `distilling`, `teacher()`, `teacher_logits(x)`, `distill_loss(...)`."""

    spec: Any
    device: Any
    _teacher: Teacher | None

    @property
    def distilling(self) -> bool:
        """Whether this job has a teacher (--teacher, or SageMaker's teacher channel)."""
        return self.spec.teacher is not None

    def teacher(self) -> nn.Module:
        """The teacher model, loaded once, frozen (eval, no parameter requires grad) on the job's device.

        Its forwards are timed (metrics.json `teacher`: calls, seconds, and its weights' digest before
        and after, which must be equal). `teacher_logits(x)` runs it without gradients."""
        if self._teacher is None:
            if self.spec.teacher is None:
                raise ValueError("this job has no teacher: pass --teacher (a saved model directory) to distill")
            self._teacher = Teacher(self.spec.teacher, self.device, trust_code=self.spec.trust_model_code)
            self.log(f"teacher {self.spec.teacher} ({self.spec.distill or 'given'}), frozen; "
                     f"alpha={self.spec.distill_alpha} T={self.spec.distill_temperature}")
        return self._teacher.model

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on a batch (eval mode, no gradients)."""
        self.teacher()
        return self._teacher.logits(x)

    def distill_loss(self, student_logits: torch.Tensor, teacher_logits_or_inputs: torch.Tensor,
                     targets: torch.Tensor, *, inputs: bool | None = None) -> torch.Tensor:
        """(1 − alpha)·CE + alpha·T²·KL(teacher ‖ student) at this job's --distill-alpha and
        --distill-temperature (`jobs.distill.distill_loss`).

        The second argument is the teacher's logits when it has the student logits' shape, else the
        batch the teacher is run on; `inputs=True` says it is the batch whatever its shape."""
        given = teacher_logits_or_inputs
        as_inputs = inputs if inputs is not None else given.shape != student_logits.shape
        teacher_logits = self.teacher_logits(given) if as_inputs else given
        return distill_loss(student_logits, teacher_logits, targets, self.spec.distill_alpha,
                            self.spec.distill_temperature)

    def teacher_record(self) -> dict:
        """metrics.json's `teacher` entry: where it came from, what it cost, that it did not change."""
        if self._teacher is None:
            return {}
        return {"teacher": {**self._teacher.record(), "distill": self.spec.distill, "alpha": self.spec.distill_alpha,
                            "temperature": self.spec.distill_temperature}}
