"""Faults injected into a real fine-tuning job (tests/test_faults.py): on PYTHONPATH, Python imports
this file at the start of every process; it acts only in a `prune_explorer.jobs.train` process whose
--out-dir contains $FAULT_JOB_OUT.

- FAULT_PAUSE_MARK=PATH: in the job's second optimizer step (mid-epoch), create PATH, then wait until
  $FAULT_RELEASE exists (unset: forever), so a test acts on a job that is certainly mid-epoch.
- FAULT_ENOSPC=1: every model save fails as safetensors fails on a full disk (its Rust writer's
  SafetensorError quoting "os error 28"), the error a 64 KiB tmpfs gives.

The patches go in when the modules they patch are imported (an import hook), never by timing.
"""
import importlib.abc
import importlib.util
import os
import sys
import time


def _targeted() -> bool:
    argv = list(getattr(sys, "orig_argv", sys.argv))
    out = os.environ.get("FAULT_JOB_OUT")
    return bool(out) and "prune_explorer.jobs.train" in argv and any(out in a for a in argv)


def _pause_in_step(sgd_module) -> None:
    original = sgd_module.SGD.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            open(os.environ["FAULT_PAUSE_MARK"], "w").close()
            release = os.environ.get("FAULT_RELEASE")
            while not (release and os.path.exists(release)):
                time.sleep(0.05)
        return original(self, *args, **kwargs)

    sgd_module.SGD.step = step


def _full_disk(st_module) -> None:
    import safetensors

    def save_file(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    st_module.save_file = save_file


PATCHES, LOADERS = {}, {}
if _targeted():
    if os.environ.get("FAULT_PAUSE_MARK"):
        PATCHES["torch.optim.sgd"] = _pause_in_step
    if os.environ.get("FAULT_ENOSPC"):
        PATCHES["safetensors.torch"] = _full_disk


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import the named modules as usual, then patch them before anyone else sees them."""

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        LOADERS[name] = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return LOADERS[spec.name].create_module(spec)

    def exec_module(self, module):
        LOADERS.pop(module.__name__).exec_module(module)
        PATCHES.pop(module.__name__)(module)


if PATCHES:
    sys.meta_path.insert(0, _PatchOnImport())
