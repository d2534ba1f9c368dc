"""Issue 20, a full disk: "No space left on device" naming the path, exit 2, what was complete kept.

HDF5 crashed the process (rc 139) on a write that failed mid-file and torch reports ENOSPC as
"unexpected pos"; lramlab now checks the free space before an HDF5 write and turns a failed write on
a full disk into an OSError(ENOSPC) naming the file. In process, the full disk is simulated by a
`statvfs` that reports little free space; where this process may mount a small tmpfs (root on
Linux), the same commands run as subprocesses on a real full filesystem.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lramlab.cli import main

TASK = "darkroom/goal-2-0"
REPO = Path(__file__).resolve().parents[1]


def _line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _fill_after(monkeypatch, root: Path, n_ok: int):
    """statvfs reports a full disk under `root` after `n_ok` calls there."""
    import lramlab._io as io

    real, calls = os.statvfs, []

    def statvfs(path):
        st = real(path)
        if str(Path(path).resolve()).startswith(str(root.resolve())):
            calls.append(path)
            if len(calls) > n_ok:
                return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, st.f_files, st.f_ffree,
                                          st.f_favail, st.f_flag, st.f_namemax))
        return st

    monkeypatch.setattr(io.os, "statvfs", statvfs)


def test_generate_on_a_full_disk_names_the_file_and_keeps_the_episodes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "gen"
    _fill_after(monkeypatch, out, 3)
    rc = main(["data", "generate", "--task", TASK, "--episodes", "8", "--out", str(out), "--no-progress",
               "--policy", "random"])
    line = _line(capsys.readouterr().err, "lramlab data generate")
    assert rc == 2 and "No space left on device" in line and "episode_000003.hdf5" in line
    monkeypatch.undo()
    assert len(sorted((out / TASK).glob("episode_*.hdf5"))) == 3
    assert not list((out / TASK).glob(".*.tmp"))
    assert main(["data", "check", str(out)]) == 0


def test_failed_torch_write_on_a_full_disk_is_enospc(tmp_path, monkeypatch):
    import torch

    import lramlab._io as io

    io.atomic_torch_save({"x": torch.zeros(3)}, tmp_path / "m.pt")

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", broken_save)
    monkeypatch.setattr(io, "free_bytes", lambda d: 0)
    with pytest.raises(OSError) as exc:
        io.atomic_torch_save({"x": torch.ones(3)}, tmp_path / "m.pt")
    assert exc.value.strerror == "No space left on device" and exc.value.filename == str(tmp_path / "m.pt")
    monkeypatch.undo()
    assert torch.equal(torch.load(tmp_path / "m.pt")["x"], torch.zeros(3))  # the previous version kept
    assert not list(tmp_path.glob(".*.tmp"))


def test_import_overwrite_on_a_full_disk_keeps_the_old_task(tmp_path, capsys, monkeypatch):
    from lramlab.collect.generate import generate

    data = tmp_path / "data"
    generate(TASK, 4, policy="random", out=data, progress=False)
    out = tmp_path / "imp"
    assert main(["data", "import", "native", str(data / TASK), "--task", TASK, "--out", str(out),
                 "--no-progress"]) == 0
    before = sorted(p.name for p in (out / TASK).iterdir())
    _fill_after(monkeypatch, out, 2)
    rc = main(["data", "import", "native", str(data / TASK), "--task", TASK, "--out", str(out), "--no-progress",
               "--overwrite"])
    line = _line(capsys.readouterr().err, "lramlab data import")
    assert rc == 2 and "No space left on device" in line
    monkeypatch.undo()
    assert sorted(p.name for p in (out / TASK).iterdir()) == before
    assert not [p for p in (out / "darkroom").iterdir() if p.name.startswith(".")]  # no staging left


def _mount_tmpfs(path: Path, size: str) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_real_full_filesystem_generate_and_pack(tmp_path):
    """On a 400 KiB tmpfs: `data generate` and `data pack` exit 2 with "No space left on device"
    naming the file (they crashed with a segmentation fault, rc 139); the episodes written stay valid."""
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "400k"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        lram = [sys.executable, "-m", "lramlab.cli"]
        gen = subprocess.run([*lram, "data", "generate", "--task", TASK, "--episodes", "200", "--out",
                              str(full / "gen"), "--no-progress", "--policy", "random"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert gen.returncode == 2, gen.stderr[-2000:]
        assert "No space left on device" in gen.stderr and "episode_" in gen.stderr
        chk = subprocess.run([*lram, "data", "check", str(full / "gen")], capture_output=True, text=True, env=env,
                             timeout=300)
        assert chk.returncode == 0, chk.stdout + chk.stderr
        pack = subprocess.run([*lram, "data", "pack", str(full / "gen")], capture_output=True, text=True, env=env,
                              timeout=300)
        assert pack.returncode == 2 and "packed.hdf5: No space left on device" in pack.stderr, pack.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
