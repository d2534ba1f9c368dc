"""Put the robotics suites that are not on the package registries on a venv's path.

    python -m lramlab.envs.suites [--vendor ../shared/vendor] [--no-git]

Composuite, Mimicgen and the robosuite task zoo (which Mimicgen's HammerCleanup / Kitchen import)
are published only as source repositories. For each one this copies the folder from `--vendor`
(../shared/vendor beside the checkout; read-only there, so it is copied) into `<venv>/vendor/<name>`,
or, when no vendor copy is there, clones the upstream repository at the commit below; then it
writes `<site-packages>/lramlab-vendor.pth` listing the folders, so `import composuite` and
`import mimicgen.envs.robosuite` work. Why not pip: a CompoSuite wheel lacks its subpackages (no
`__init__.py`), the task zoo declares mujoco-py, Mimicgen's setup.py pulls dataset downloaders.

Idempotent: a copy is redone only when its source changed (a fingerprint of relative paths, sizes
and mtimes is kept beside it). A suite that can be got neither way is left out with one line
saying so; the install never fails for it (`lramlab tasks` then names the domain unavailable).
Exit status 0 unless the arguments are wrong (2).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

#: folder name -> (upstream repository, commit) - the commits of ../shared/vendor/README.md
SUITES: dict[str, tuple[str, str]] = {
    "CompoSuite": ("https://github.com/Lifelong-ML/CompoSuite",
                   "1fa36f67f31aeccc9ef75748bfc797960e044a86"),
    "mimicgen": ("https://github.com/NVlabs/mimicgen", "72bd767c255545f462e7ccfb2731f2e5d4c1d9bb"),
    "robosuite-task-zoo": ("https://github.com/ARISE-Initiative/robosuite-task-zoo",
                           "74eab7f88214c21ca1ae8617c2b2f8d19718a9ed"),
}
#: the package each folder provides (checked after copying)
PACKAGE = {"CompoSuite": "composuite", "mimicgen": "mimicgen", "robosuite-task-zoo": "robosuite_task_zoo"}
PTH_NAME = "lramlab-vendor.pth"
STAMP = ".lramlab-source"
GIT_TIMEOUT_S = 120


def fingerprint(folder: Path) -> str:
    """Hash of every file's relative path, size and mtime (changes when the copy should be redone)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__"))
        for name in sorted(files):
            p = Path(root, name)
            st = p.stat()
            h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def _replace_dir(tmp: Path, dest: Path) -> None:
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def copy_from_vendor(src: Path, dest: Path) -> str:
    """Copy src to dest unless dest already holds this very source; returns what happened."""
    want = f"vendor {src.resolve()} {fingerprint(src)}"
    stamp = dest / STAMP
    if dest.is_dir() and stamp.is_file() and stamp.read_text() == want:
        return "up to date"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))
    tmp.chmod(tmp.stat().st_mode | 0o200)  # the source may be read-only; the copy must not be
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | 0o200)
    (tmp / STAMP).write_text(want)
    _replace_dir(tmp, dest)
    return "copied"


def clone_upstream(name: str, dest: Path) -> str:
    """git clone + checkout the pinned commit into dest; raises RuntimeError (one line) if it cannot."""
    url, commit = SUITES[name]
    want = f"git {url} {commit}"
    stamp = dest / STAMP
    if dest.is_dir() and stamp.is_file() and stamp.read_text() == want:
        return "up to date"
    if shutil.which("git") is None:
        raise RuntimeError("git is not installed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        for cmd in (["git", "clone", "-q", url, str(tmp)], ["git", "-C", str(tmp), "checkout", "-q", commit]):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env=env)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["no message"])[-1]
                raise RuntimeError(f"{' '.join(cmd[:2])} failed: {last}")
    except subprocess.TimeoutExpired as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"git timed out after {GIT_TIMEOUT_S} s") from err
    except RuntimeError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / STAMP).write_text(want)
    _replace_dir(tmp, dest)
    return f"cloned {url} @ {commit[:12]}"


def write_pth(site: Path, folders: list[Path]) -> Path:
    """`<site>/lramlab-vendor.pth` listing `folders` (atomic); removed when there are none."""
    pth = site / PTH_NAME
    if not folders:
        pth.unlink(missing_ok=True)
        return pth
    tmp = pth.with_name(pth.name + ".tmp")
    tmp.write_text("".join(f"{f.resolve()}\n" for f in folders))
    tmp.replace(pth)
    return pth


def install(vendor: Path | None, prefix: Path, site: Path, use_git: bool = True,
            log=print) -> dict[str, str]:
    """Each suite into prefix/vendor/<name> (vendor copy, else git), then the .pth; name -> outcome."""
    outcome: dict[str, str] = {}
    folders: list[Path] = []
    for name in SUITES:
        dest = prefix / "vendor" / name
        src = vendor / name if vendor is not None else None
        try:
            if src is not None and (src / PACKAGE[name]).is_dir():
                what = copy_from_vendor(src, dest)
            elif use_git:
                what = clone_upstream(name, dest)
            else:
                raise RuntimeError("no vendor copy and --no-git")
        except (OSError, RuntimeError) as err:
            what = f"unavailable ({err})"
            if dest.is_dir() and (dest / STAMP).is_file():  # an earlier good copy still serves
                what += "; keeping the earlier copy"
        if (dest / PACKAGE[name]).is_dir():
            folders.append(dest)
        outcome[name] = what
        log(f"suites: {name}: {what}")
    pth = write_pth(site, folders)
    log(f"suites: {pth} lists {len(folders)} of {len(SUITES)} folders")
    return outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lramlab.envs.suites", description=__doc__.splitlines()[0])
    p.add_argument("--vendor", type=Path, default=None,
                   help="folder holding CompoSuite/, mimicgen/, robosuite-task-zoo/ (used when it exists)")
    p.add_argument("--no-git", action="store_true", help="do not try the upstream repositories")
    p.add_argument("--prefix", type=Path, default=Path(sys.prefix), help="venv root (default: this Python's)")
    p.add_argument("--site", type=Path, default=None, help="site-packages for the .pth (default: this Python's)")
    a = p.parse_args(argv)
    site = a.site or Path(sysconfig.get_paths()["purelib"])
    if not site.is_dir():
        print(f"suites: --site {site}: not a directory, expected the venv's site-packages", file=sys.stderr)
        return 2
    vendor = a.vendor if a.vendor is not None and a.vendor.is_dir() else None
    if a.vendor is not None and vendor is None:
        print(f"suites: no vendor folder at {a.vendor}; trying the upstream repositories")
    install(vendor, a.prefix, site, use_git=not a.no_git)
    return 0


if __name__ == "__main__":
    sys.exit(main())
