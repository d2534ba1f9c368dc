"""Runs print what matters: no legacy-gym deprecation banner from `lramlab tasks --domain procgen`
(the kernel's TCP warning: tests/test_notebooks.py, the failing-cell test)."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_tasks_procgen_without_gyms_banner():
    pytest.importorskip("procgen")
    out = subprocess.run([sys.executable, "-c", "import sys; from lramlab.cli import main; "
                          "sys.exit(main(['tasks', '--domain', 'procgen']))"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "procgen/coinrun" in out.stdout and "yes" in out.stdout  # the simulator did import
    assert "unmaintained" not in out.stderr and "Gymnasium" not in out.stderr, out.stderr


def test_the_banner_filter_passes_other_stderr_on(capsys, monkeypatch):
    """Only gym's notice is dropped: another module's stderr output during the import stays."""
    import types

    from lramlab import _optional

    monkeypatch.delitem(sys.modules, "gym", raising=False)
    fake = types.ModuleType("procgen_fake_loader")

    def noisy(name):
        print("a real warning", file=sys.stderr)
        return fake
    monkeypatch.setattr(_optional.importlib, "import_module", noisy)
    assert _optional._import("procgen") is fake
    assert "a real warning" in capsys.readouterr().err
