"""Import helpers for plugins that live outside a Python package (Ansible loads them by path)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[2]
# Modules import `ansible.module_utils.<name>`; Ansible finds those in plugins/module_utils
# (ansible.cfg), the tests through the package path.
if str(ROOT / "plugins" / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "plugins" / "module_utils"))


def load_plugin(relative: str | Path, name: str | None = None) -> ModuleType:
    """Load a Python file by path (relative to the repository), with or without a .py suffix
    (scripts such as roles/firewall/files/cluster-firewall have none)."""
    path = ROOT / relative
    name = name or path.stem.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
