"""Real-browser test: JupyterLab in Debian's Chromium, driven by Playwright.

Opens `tests/assets/widget_demo.ipynb` (a real Dark-Room history and a Meta-World episode in
`lramlab.widgets.RolloutViewer`), runs all cells through the menu, waits for the kernel by the status
bar text, checks that the viewers' plotly figures draw their traces (not empty axes), moves the
Dark-Room step slider with the keyboard and checks that the title and the step
table change, then finds the Meta-World arm as a rendered frame (an <img> holding a PNG of the scene,
re-rendered from the episode's seed). Screenshots go to `artifacts/browser/`.

Chromium is installed by CI (`.ci/run`: `apt-get install chromium`). Without it this test fails
with the fix in the message, unless LRAMLAB_SKIP_BROWSER=1 (then it is skipped with the reason).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lramlab import REPO_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ASSET = Path(__file__).parent / "assets" / "widget_demo.ipynb"
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    for cand in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and Path(cand).exists():
            return cand
    return None


def _need(what: str, fix: str):
    msg = f"real-browser test needs {what}: {fix} (or set LRAMLAB_SKIP_BROWSER=1 to skip this test)"
    if os.environ.get("LRAMLAB_SKIP_BROWSER") == "1":
        pytest.skip(msg)
    pytest.fail(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server of this interpreter on a free port, rooted at a temp dir holding the demo."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(ASSET, root / ASSET.name)
    settings = tmp_path / "settings"
    # no "Jupyter news" toast covering the page; no update checks (nothing outside is reachable)
    notif = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    port = _free_port()
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
         "--ServerApp.token=", "--ServerApp.password=", "--allow-root", f"--ServerApp.root_dir={root}",
         "--ServerApp.port_retries=0"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                log.flush()
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"jupyter lab did not answer on {url} within 120 s")
            time.sleep(0.5)
        yield url, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _status_text(page) -> str:
    return " ".join(page.locator(".jp-StatusBar-TextItem").all_inner_texts())


def _wait_idle(page, timeout_s: float) -> None:
    """The kernel is idle when the status bar says '| Idle' (the toolbar says idle too early)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        txt = _status_text(page)
        if re.search(r"\|\s*Idle", txt) and "No Kernel" not in txt:
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"kernel not idle after {timeout_s} s; status bar: {_status_text(page)!r}")


def _wait_text(locator, pattern: str, timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    txt = ""
    while time.time() < deadline:
        txt = " ".join(t or "" for t in locator.all_text_contents()) if locator.count() else ""
        if re.search(pattern, txt):
            return txt
        time.sleep(0.25)
    raise AssertionError(f"expected {pattern!r}, got {txt!r}")


def test_rollout_viewer_slider_drives_figure(jupyter_lab):
    chromium = _chromium()
    if chromium is None:
        _need("Debian's Chromium at /usr/bin/chromium", "apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the python 'playwright' package", 'pip install -e ".[dev]"')
    url, tmp = jupyter_lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/lab/tree/{ASSET.name}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook", timeout=180_000)
            _wait_idle(page, 180)
            # Run -> Run All Cells
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            page.wait_for_selector("text=LRAM-DEMO-READY", timeout=240_000)
            _wait_idle(page, 120)
            # the viewers' plotly FigureWidgets draw their data live (not empty axes)
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            drawn = 0
            deadline = time.time() + 60
            while not drawn and time.time() < deadline:
                drawn = page.locator(".js-plotly-plot g.trace, .js-plotly-plot .imagelayer image").count()
                page.wait_for_timeout(250)
            n_plots = page.locator(".js-plotly-plot").count()
            slider = page.locator(".widget-slider").first
            slider.wait_for(timeout=60_000)
            title = page.locator(".lram-frame-title").first  # the Dark-Room viewer's (the first)
            info = page.locator(".lram-step-info .lram-step")
            before_title = _wait_text(title, r"step 0\b", 60)
            before_info = _wait_text(info, r"^0 / \d+", 30)
            page.screenshot(path=str(ARTIFACTS / "widget_demo_before.png"))
            handle = page.locator(".widget-slider .noUi-handle").first
            handle.click()
            for _ in range(5):
                handle.press("ArrowRight")
            # each intermediate value re-runs the callback: wait for the final one
            after_title = _wait_text(title, r"step 5\b", 60)
            after_info = _wait_text(info, r"^5 / \d+", 30)
            page.screenshot(path=str(ARTIFACTS / "widget_demo.png"))
            # the Meta-World viewer shows the arm: a rendered frame (PNG in an <img>), not state bars
            arm_title = page.locator(".lram-frame-title", has_text="metaworld/reach-v2")
            arm_title.wait_for(timeout=120_000)
            arm = page.locator(".jp-OutputArea-output", has=arm_title).locator("img.widget-image").first
            arm.scroll_into_view_if_needed()
            page.wait_for_function("el => el.complete && el.naturalWidth > 100", arg=arm.element_handle(), timeout=60_000)
            frame_size = arm.evaluate("el => [el.naturalWidth, el.naturalHeight]")
            arm_note = page.locator(".jp-OutputArea-output", has=arm_title).inner_text()
            arm.screenshot(path=str(ARTIFACTS / "metaworld_frame.png"))
            page.screenshot(path=str(ARTIFACTS / "widget_demo_metaworld.png"))
        except Exception:
            try:
                page.screenshot(path=str(ARTIFACTS / "widget_demo_failure.png"))
            except Exception:  # noqa: BLE001 - the original failure matters more
                pass
            raise
        finally:
            browser.close()
    assert drawn > 0, f"{n_plots} plotly figures on the page, none with a drawn trace (empty axes)"
    assert before_title != after_title and "step 5" in after_title
    assert before_info != after_info
    assert (ARTIFACTS / "widget_demo.png").stat().st_size > 10_000
    assert frame_size[0] > 100 and frame_size[1] > 100, frame_size
    assert "matches the stored states" in arm_note, arm_note  # replayed from the seed, checked
    assert (ARTIFACTS / "metaworld_frame.png").stat().st_size > 20_000  # a scene, not a blank image

