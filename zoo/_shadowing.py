"""Keep the zoo's own top-level packages importable when a user's file has the same name.

The zoo installs four top-level packages beside ``zoo`` (``neurons``, ``tasks``, ``weights``,
``benchmarks``: the repository's layout, kept so that a clone runs as it is). A user's ``tasks.py`` or
``neurons/`` folder in the working directory comes first on ``sys.path`` and would break ``import zoo``.
We chose to resolve the four names to the zoo's own folders (a finder placed before the path finder,
installed only when the plain lookup finds a foreign file) and to say so in one warning, rather than
renaming the packages under one namespace: renaming would change every import path users and the
papers' scripts know (``import neurons``, ``from tasks.detection import ...``). A foreign module of
that name that is already imported cannot be replaced: that is a one-line error.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import warnings
from pathlib import Path

from .errors import ZooError

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("neurons", "tasks", "weights", "benchmarks")


def _ours(name: str) -> Path:
    return ROOT / name / "__init__.py"


def _origin(spec) -> Path | None:
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


class _ZooPackages:
    """Meta path finder: the zoo's top-level package ``name`` from its install folder."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _ours(fullname),
                                                      submodule_search_locations=[str(ROOT / fullname)])


def _check() -> None:
    shadowed = []
    for name in NAMES:
        if not _ours(name).is_file():
            continue  # an install without this package (e.g. no benchmarks): nothing to protect
        loaded = sys.modules.get(name)
        if loaded is not None:
            where = getattr(loaded, "__file__", None)
            if where is None or Path(where).resolve() != _ours(name):
                raise ZooError(f"a module named {name!r} ({where or 'built in'}) was imported before the zoo and hides "
                               f"the zoo's package {name}; rename your {name}.py / {name}/ or import zoo first")
            continue
        found = _origin(importlib.machinery.PathFinder.find_spec(name))
        if found is not None and found != _ours(name):
            shadowed.append((name, found))
    if shadowed:
        sys.meta_path.insert(0, _ZooPackages(n for n, _ in shadowed))
        for name, found in shadowed:
            warnings.warn(f"{found} has the name of the zoo's package {name!r}; inside this process `import {name}` "
                          f"gives the zoo's (rename your file to import it)", stacklevel=3)


_check()
