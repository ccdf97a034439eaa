"""Backend registry: in-process `register()`, then entry points (group `unicompress.backends`), lazily."""
from __future__ import annotations

import difflib
import threading
from importlib import metadata
from typing import Any, Callable, Union

from ..errors import BackendNotFoundError, MissingFrameworkError, ModelNotSupportedError
from .adapter import Adapter

ENTRY_POINT_GROUP = "unicompress.backends"

_lock = threading.Lock()
_registered: dict[str, Union[Adapter, Callable[[], Adapter]]] = {}
_instances: dict[str, Adapter] = {}


def register(name: str, adapter: Union[Adapter, Callable[[], Adapter]], *, replace: bool = False) -> None:
    """Register a backend in this process (an instance or a zero-argument factory).

    Example: ``register("mine", MyAdapter)`` then ``get_backend("mine")``.
    """
    with _lock:
        if name in _registered and not replace:
            raise ValueError(f"backend {name!r} is already registered; pass replace=True to override it")
        _registered[name] = adapter
        _instances.pop(name, None)


def unregister(name: str) -> None:
    """Forget an in-process registration (entry points stay discoverable)."""
    with _lock:
        _registered.pop(name, None)
        _instances.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Names of every registered or installed backend, without importing any framework."""
    return sorted(set(_registered) | set(_entry_points()))


def get_backend(name: str) -> Adapter:
    """The adapter instance of that name, loading its entry point on first use.

    Example: ``get_backend("torch").capabilities()``.
    """
    with _lock:
        if name in _instances:
            return _instances[name]
    factory: Any = _registered.get(name)
    if factory is None:
        ep = _entry_points().get(name)
        if ep is None:
            known = available_backends()
            hint = difflib.get_close_matches(name, known, n=1)
            msg = f"no backend named {name!r}; installed: {', '.join(known) or 'none'}"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
            raise BackendNotFoundError(msg + ". Install one, e.g. pip install -e adapters/torch")
        try:
            factory = ep.load()
        except ImportError as exc:  # the adapter package itself imported a missing framework
            raise MissingFrameworkError(name, _requirements_of(ep), exc) from exc
    adapter = factory() if not isinstance(factory, Adapter) else factory
    with _lock:
        _instances[name] = adapter
    return adapter


def _requirements_of(ep: metadata.EntryPoint) -> list[str]:
    dist = getattr(ep, "dist", None)
    reqs = [r for r in (dist.requires or [])] if dist is not None else []
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r] or [f"unicompress-{ep.name}"]


def backend_for_model(model: Any) -> Adapter:
    """Pick the backend whose `is_model` accepts this object (``backend: auto``)."""
    tried = []
    for name in available_backends():
        try:
            adapter = get_backend(name)
        except Exception:  # an adapter that cannot load cannot own the model
            continue
        tried.append(name)
        if adapter.is_model(model):
            return adapter
    raise ModelNotSupportedError(
        f"no installed backend recognises a {type(model).__module__}.{type(model).__qualname__}; "
        f"tried: {', '.join(tried) or 'none'}. Name the backend explicitly or install its adapter.")


def resolve_backend(name: str, model: Any = None) -> Adapter:
    """`name` may be 'auto' (then the model's type decides)."""
    if name == "auto":
        if model is None:
            raise BackendNotFoundError("backend 'auto' needs a model to look at; name the backend instead")
        return backend_for_model(model)
    return get_backend(name)
