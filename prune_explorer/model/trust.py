"""Which code a file may make this package run: the one gate every model spec read from disk passes.

A `model.json` (or a trial's `prune_explorer.json`, or a job's `--model`) names the architecture its
model is rebuilt from. A torchvision name only selects one of torchvision's builders. A
`"package.module:Class"` names arbitrary code: importing the module runs its top-level code, and
calling the attribute runs whatever it is (`subprocess:run`, `os:system`, `builtins:eval`). So a
name from a file is followed only when

- it is in the registry the user's own code fills (`register_model(MyNet)`: no import at all), or
  one of `BUILTIN` (the pretrained model this package ships a demo of), or
- its module is one the user trusted for this call (`trust_code=["mypkg"]`, CLI
  `--trust-model-code mypkg`; a name trusts that module and the modules under it), as Hugging
  Face's `trust_remote_code` does;

and, in every case, the attribute is a `torch.nn.Module` subclass (or a classmethod of one, such as
`EfficientNet.from_name`), checked before anything is called. An untrusted module is never
imported (trusting "a.b" imports package "a" too: that is what importing "a.b" means). Refusals are `UntrustedCode` (a ValueError) naming the field at fault and how to allow it.
"""
from __future__ import annotations

import importlib
import inspect
import re
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # torch is imported when a class is checked: the workspace and the CLI stay torch-free
    from torch import nn

TRUST_FLAG = "--trust-model-code"
BUILTIN = frozenset({  # prune_explorer.demo.PRETRAINED_ARCH: the pretrained extra's EfficientNet-Lite0
    "efficientnet_lite_pytorch:EfficientNet.from_name",
})
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UntrustedCode(ValueError):
    """A file named code this package will not run: an untrusted module, or something not a Module class."""


def trusted_modules(trust_code: str | Iterable[str] | None) -> tuple[str, ...]:
    """`trust_code` as a tuple of module names: None, "a,b" (as on a command line) or an iterable of names."""
    if trust_code is None:
        return ()
    if isinstance(trust_code, bool):
        raise ValueError("trust_code names the modules to trust (e.g. ['mypkg']), not True/False")
    items = trust_code.split(",") if isinstance(trust_code, str) else list(trust_code)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"trust_code: expected module names, got {item!r}")
        name = item.strip()
        if not name:
            continue
        if not _DOTTED.fullmatch(name):
            raise ValueError(f"trust_code: {name!r} is not a module name (e.g. 'mypkg' or 'mypkg.models')")
        if name not in names:
            names.append(name)
    return tuple(names)


def is_trusted(module: str, trust_code: str | Iterable[str] | None) -> bool:
    """Whether `module` is one of the trusted names or a module under one of them."""
    return any(module == name or module.startswith(name + ".") for name in trusted_modules(trust_code))


def module_of(arch: str) -> str | None:
    """The module a "package.module:Class" architecture imports; None for a torchvision name or a path."""
    if not isinstance(arch, str) or ":" not in arch:
        return None
    module = arch.partition(":")[0]
    return module if _DOTTED.fullmatch(module) else None


# --- the registry the user's code fills ----------------------------------------------------------
def register_model(constructor: Callable[..., nn.Module], name: str | None = None) -> str:
    """Let model files name `constructor` (an nn.Module subclass, or a classmethod of one).

    Registered under `name`, by default "module:QualName" — the name `build_model` records — so a
    model directory saved from it loads without `trust_code`. Returns the name.
    """
    _check_constructor(constructor, f"register_model({constructor!r})")
    if name is None:
        owner = constructor.__self__ if inspect.ismethod(constructor) else constructor
        qualname = f"{owner.__qualname__}.{constructor.__name__}" if inspect.ismethod(constructor) else owner.__qualname__
        name = f"{owner.__module__}:{qualname}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = constructor
    return name


def unregister_model(name: str) -> None:
    """Forget a registered name (KeyError when it is not registered)."""
    del _REGISTRY[name]


def registered(name: str) -> Callable[..., nn.Module] | None:
    return _REGISTRY.get(name)


# --- the gate ---------------------------------------------------------------------------------
def user_constructor(arch: str, *, trust_code: str | Iterable[str] | None, where: str,
                     caller_named: bool = False) -> Callable[..., nn.Module]:
    """The nn.Module class (or classmethod) `arch` names, found without calling anything.

    `where` names the source for messages ("DIR/model.json: field 'base.arch'"). `caller_named`:
    the name comes from the caller's own code (`build_model("mypkg:Net")`), so its module may be
    imported; the class check still applies.
    """
    found = registered(arch)
    if found is not None:
        return found
    module_name, _, qualname = arch.partition(":")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(qualname):
        raise UntrustedCode(f"{where}: {arch!r} is neither a torchvision architecture nor 'package.module:ClassName'")
    if not (caller_named or arch in BUILTIN or is_trusted(module_name, trust_code)):
        raise UntrustedCode(
            f"{where} names {arch!r}: code in module {module_name!r}, which prune_explorer neither imports nor "
            f"runs for a file unless you trust it (a model directory, trial or job from someone else could "
            f"name any code). If you trust {module_name!r}: pass trust_code=[{module_name!r}] "
            f"(CLI: {TRUST_FLAG} {module_name}), or register the class from your code with "
            f"prune_explorer.register_model({qualname.split('.')[0]})")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where}: user model {arch!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in qualname.split("."):
        try:  # a class's attribute is read statically: no metaclass or descriptor code runs
            found = inspect.getattr_static(target, part) if inspect.isclass(target) else getattr(target, part)
        except AttributeError:
            raise ValueError(f"{where}: user model {arch!r}: module {module_name!r} has no attribute "
                             f"{qualname!r}") from None
        target = found.__get__(None, target) if isinstance(found, classmethod) else found
    _check_constructor(target, f"{where} names {arch!r}, which")
    return target


def _check_constructor(target: Any, what: str) -> None:
    """An nn.Module subclass, or a classmethod bound to one; anything else is refused uncalled."""
    from torch import nn

    if inspect.isclass(target):
        if issubclass(target, nn.Module):
            return
        raise UntrustedCode(f"{what} is the class {target.__module__}.{target.__qualname__}, not a torch.nn.Module "
                            "subclass; nothing was called")
    owner = getattr(target, "__self__", None)
    if inspect.ismethod(target) and inspect.isclass(owner) and issubclass(owner, nn.Module):
        return
    raise UntrustedCode(f"{what} is a {type(target).__name__}, not a torch.nn.Module subclass (or a classmethod "
                        "of one); nothing was called")
