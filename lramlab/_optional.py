"""Optional dependencies: import them where used, fail with the pip extra to install."""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
from types import ModuleType

#: top-level module -> the extra of `pip install -e ".[extra]"` that provides it
EXTRA_OF: dict[str, str] = {
    "xlstm": "models",
    "gymnasium": "envs",
    "ale_py": "envs",
    "cv2": "envs",
    "mujoco": "envs",
    "dm_control": "envs",
    "shimmy": "envs",
    "metaworld": "envs",
    "robosuite": "envs",
    "procgen": "envs",
    "gym": "envs",
    "gym3": "envs",
    "stable_baselines3": "rl",
    "minari": "data",
    "umap": "analysis",
    "sklearn": "analysis",
    "plotly": "analysis",
    "kaleido": "analysis",
    "tensorboard": "analysis",
    "papermill": "notebooks",
    "ipywidgets": "notebooks",
    "anywidget": "notebooks",
    "nbformat": "notebooks",
    "mamba_ssm": "gpu",
    "causal_conv1d": "gpu",
    "triton": "gpu",
    "transformers": "dev",
    "playwright": "dev",
}


#: modules whose import prints legacy gym's "Gym has been unmaintained" banner to stderr (procgen2
#: needs gym 0.26); the banner is dropped, anything else the import prints is passed on
_GYM_BANNER_MODULES = ("gym", "gym3", "procgen")


def _import(module: str) -> ModuleType:
    if module.split(".")[0] not in _GYM_BANNER_MODULES or "gym" in sys.modules:
        return importlib.import_module(module)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return importlib.import_module(module)
    finally:
        text = buf.getvalue()
        try:
            from gym_notices.notices import notices  # the banner's text, as gym prints it
        except Exception:  # noqa: BLE001 - no notices package: nothing to drop
            notices = {}
        for notice in set(notices.values()):
            text = text.replace(notice + "\n", "")
        if text:
            sys.stderr.write(text)


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise an ImportError that names the pip extra providing it."""
    try:
        return _import(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRA_OF.get(top, "all")
        what = f" (needed for {purpose})" if purpose else ""
        raise ImportError(
            f"lramlab: optional package '{top}' is not installed{what}. "
            f'Install it with: pip install -e ".[{extra}]"  (original error: {err})'
        ) from err


def available(module: str) -> tuple[bool, str]:
    """(True, "") if `module` imports, else (False, reason)."""
    try:
        _import(module)
        return True, ""
    except Exception as err:  # noqa: BLE001 - any import failure makes it unavailable
        return False, f"{type(err).__name__}: {err}"
