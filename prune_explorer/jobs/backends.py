"""Where fine-tuning jobs run: the backend registry (name → factory and its options), like the trackers'.

`BACKENDS` is the one place a backend is named. `JobQueue(backend=name)` builds one with
`make_backend`; `prune-explorer run --backend` takes its choices and each backend's option flags
from here, the loop its `LoopConfig.backend` / `.backend_options`, and the panel its backend list.
A new backend is one module with a `Backend` class and one entry below (or, from outside the
package, `BACKENDS[name] = BackendEntry(MyBackend)`).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from .base import Backend


@dataclass(frozen=True)
class Option:
    """One setting of a backend: its factory's keyword, a `LoopConfig.backend_options` key, and a CLI flag
    (`--name-with-dashes` unless `flag` says otherwise)."""

    name: str
    type: Callable[[str], Any] = str
    help: str = ""
    switch: bool = False  # on/off: --flag / --no-flag
    flag: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or f"--{self.name.replace('_', '-')}"


@dataclass(frozen=True)
class BackendEntry:
    """How to build a backend: `factory(**options)`, the options a user sets, and what a headless run
    adds (`for_run(config, options) -> options`, e.g. SageMaker's rule threshold and data channel).
    Both may be "module:attribute", imported on first use: the registry names backends without
    importing them."""

    factory: "Callable[..., Backend] | str"
    options: tuple[Option, ...] = ()
    description: str = ""
    for_run: "Callable[[Any, dict[str, Any]], dict[str, Any]] | str | None" = None
    reads_s3: bool = False  # an s3:// data_dir reaches its jobs (as their train channel)


def _resolved(ref: "Callable | str") -> Callable:
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


SAGEMAKER_OPTIONS = (
    Option("role_arn", flag="--role", help="execution role ARN (default $PRUNE_EXPLORER_SAGEMAKER_ROLE, else the "
                                           "SageMaker session's role)"),
    Option("bucket", help="S3 bucket for code and results (default $PRUNE_EXPLORER_SAGEMAKER_BUCKET, else the "
                          "SageMaker session's default bucket)"),
    Option("instance_type", help="training instance type (default ml.g4dn.xlarge)"),
    Option("instance_count", type=int, help="instances per job (more than one: torchrun across them)"),
    Option("debugger", switch=True, help="also run the accuracy rule as a SageMaker Debugger rule (default on; the "
                                         "rule always runs inside the job too)"),
)

BACKENDS: dict[str, BackendEntry] = {
    "local": BackendEntry("prune_explorer.jobs.local:LocalBackend", description="local processes (default)"),
    "sagemaker": BackendEntry("prune_explorer.jobs.sagemaker:SageMakerBackend", SAGEMAKER_OPTIONS,
                              "SageMaker training jobs", for_run="prune_explorer.jobs.sagemaker:run_options",
                              reads_s3=True),
}


def entry(name: str) -> BackendEntry:
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown name {name!r}; choose from {', '.join(BACKENDS)} (or pass a Backend)")
    return BACKENDS[name]


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` less those left None; ValueError naming any the backend does not declare."""
    known = {o.name for o in entry(name).options}
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - known)
    if foreign:
        takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
        raise ValueError(f"backend {name!r} does not take {', '.join(foreign)} ({takes})")
    return given


def make_backend(backend: "str | Backend", **options: Any) -> Backend:
    """A backend by name, built with `options` (None values left out; one its factory does not take is
    refused by name); a Backend instance is returned as it is."""
    if not isinstance(backend, str):
        return backend
    factory = _resolved(entry(backend).factory)
    given = {k: v for k, v in options.items() if v is not None}
    parameters = inspect.signature(factory).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        foreign = sorted(set(given) - {p.name for p in parameters})
        if foreign:
            raise ValueError(f"backend {backend!r} does not take {', '.join(foreign)}")
    return factory(**given)


def backend_for_run(config: Any) -> Backend:
    """The backend a headless run names (`config.backend`, `config.backend_options`), with what the run adds."""
    chosen = entry(config.backend)
    options = check_options(config.backend, dict(config.backend_options))
    if chosen.for_run is not None:
        options = _resolved(chosen.for_run)(config, options)
    return make_backend(config.backend, **options)
