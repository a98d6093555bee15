"""llama-cpp-python's ctypes bindings, loaded without the rest of its package.

``import llama_cpp`` also imports the high-level ``Llama`` class with its chat templates
(Jinja2) and caches, which costs a cold command more than loading the library itself; the
runner calls llama.cpp through the bindings alone.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any

__all__ = ["is_llama", "llama_cpp"]

_lock = threading.Lock()


def llama_cpp() -> Any:
    """The module ``llama_cpp.llama_cpp`` (every ``llama_*`` function and constant). A later
    ``import llama_cpp`` runs the package as usual and finds these bindings loaded."""
    found = sys.modules.get("llama_cpp.llama_cpp")
    if found is not None:
        return found
    with _lock:
        if "llama_cpp" in sys.modules or "llama_cpp.llama_cpp" in sys.modules:
            return importlib.import_module("llama_cpp.llama_cpp")
        from importlib.util import find_spec, module_from_spec

        spec = find_spec("llama_cpp")
        if spec is None or spec.submodule_search_locations is None:
            return importlib.import_module("llama_cpp.llama_cpp")  # the usual ImportError
        # The package, registered without running its __init__ while its bindings load.
        package: ModuleType = module_from_spec(spec)
        sys.modules["llama_cpp"] = package
        try:
            return importlib.import_module("llama_cpp.llama_cpp")
        finally:
            del sys.modules["llama_cpp"]


def is_llama(model: object) -> bool:
    """Whether ``model`` is a ``llama_cpp.Llama`` (only possible once that class is loaded)."""
    high_level = sys.modules.get("llama_cpp.llama")
    return high_level is not None and isinstance(model, high_level.Llama)
