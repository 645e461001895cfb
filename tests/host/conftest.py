"""The host tier: one real ComfyUI server (0.3.75, `main.py --cpu`) per test session.

The `comfy` fixture lays out a throwaway ComfyUI base folder:

    <tmp>/base/custom_nodes/ComfyUI-MIGM-Shortcut -> the repository root (the real pack)
    <tmp>/base/custom_nodes/migm_harness_pack/      copy of tests/host/harness_pack/
    <tmp>/base/custom_nodes/migm_harness_broken_*/  two packs that fail on purpose
    <tmp>/base/extra_model_paths.yaml               migm, migm_shortcut -> <models>/…
    <tmp>/output/                                   --output-directory
    <models>/migm/, <models>/migm_shortcut/         $MIGM_HOST_MODELS_DIR or <tmp>/models

starts tests/host/launcher.py on a free 127.0.0.1 port with the log in <tmp>/comfyui.log,
and yields a ComfyClient. The ComfyUI tree comes from scripts/setup_comfyui.sh; without it
every host test fails (never skips) and says so.

Environment: MIGM_COMFYUI_DIR (ComfyUI tree), MIGM_HOST_MODELS_DIR (model root to use
instead of an empty temporary one), MIGM_COMFY_ARGS (extra main.py arguments, e.g.
"--verbose DEBUG"), MIGM_COMFY_START_TIMEOUT (seconds, default 120).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from comfy_client import HARNESS_PACK_NAME, PACK_NAME, ComfyClient
from launcher import REPO_ROOT, comfyui_dir

HOST_DIR = Path(__file__).resolve().parent
# Two deliberately broken packs, so that a test can prove import_failures() sees both
# ways a V3 pack fails: an exception at import, and one inside comfy_entrypoint().
BROKEN_PACKS = {
    "migm_harness_broken_import": 'raise ImportError("harness: broken on purpose")\n',
    "migm_harness_broken_entrypoint": (
        "async def comfy_entrypoint():\n"
        '    raise RuntimeError("harness: entrypoint broken on purpose")\n'),
}
MODEL_FOLDERS = ("migm", "migm_shortcut")
_started_key = pytest.StashKey[dict]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HOST_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.host)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keeps each phase's report on the test (item.rep_setup, rep_call), so that a fixture can
    tell in its teardown whether the test failed (test_browser.py then saves a screenshot)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    started = config.stash.get(_started_key, None)
    if started:
        terminalreporter.write_line(
            f"ComfyUI host: ready in {started['ready_s']:.1f} s on port {started['port']} "
            f"(log: {started['log']})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_python() -> str:
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def _write_extra_model_paths(path: Path, models_root: Path) -> None:
    """The format users put next to ComfyUI's main.py; relative folders join base_path."""
    lines = ["migm_shortcut_host_tests:", f"    base_path: {models_root}"]
    lines += [f"    {name}: {name}/" for name in MODEL_FOLDERS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _stop(process: subprocess.Popen) -> None:
    """Ctrl-C first (ComfyUI then stops its server cleanly), then harder."""
    if process.poll() is not None:
        return
    for send, wait_s in ((lambda: process.send_signal(signal.SIGINT), 15),
                         (process.terminate, 5), (process.kill, 5)):
        send()
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def comfy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyClient]:
    root = comfyui_dir()
    if not (root / "main.py").is_file():
        pytest.fail(f"ComfyUI is not set up (no {root / 'main.py'}): run scripts/setup_comfyui.sh",
                    pytrace=False)

    work = tmp_path_factory.mktemp("comfyui")
    base, output = work / "base", work / "output"
    custom_nodes = base / "custom_nodes"
    for folder in (custom_nodes, base / "models", base / "input", base / "user", output):
        folder.mkdir(parents=True)
    (custom_nodes / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    shutil.copytree(HOST_DIR / "harness_pack", custom_nodes / HARNESS_PACK_NAME,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name, source in BROKEN_PACKS.items():
        (custom_nodes / name).mkdir()
        (custom_nodes / name / "__init__.py").write_text(source, encoding="utf-8")

    models_root = Path(os.environ.get("MIGM_HOST_MODELS_DIR") or work / "models").resolve()
    for name in MODEL_FOLDERS:
        (models_root / name).mkdir(parents=True, exist_ok=True)
    extra_model_paths = base / "extra_model_paths.yaml"
    _write_extra_model_paths(extra_model_paths, models_root)

    port = _free_port()
    command = [
        _server_python(), str(HOST_DIR / "launcher.py"),
        "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
        "--base-directory", str(base), "--output-directory", str(output),
        "--extra-model-paths-config", str(extra_model_paths),
        "--database-url", f"sqlite:///{work / 'comfyui.db'}",
        *shlex.split(os.environ.get("MIGM_COMFY_ARGS", "")),
    ]
    env = dict(os.environ, MIGM_COMFYUI_DIR=str(root), PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               # The test graphs run tiny models: extra threads only fight the test runner for the 2 cores.
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log_path = work / "comfyui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    client = ComfyClient(f"http://127.0.0.1:{port}", process=process, log_path=log_path,
                         base_dir=base, output_dir=output, models_dir=models_root)
    try:
        client.startup_s = _wait_ready(client, float(os.environ.get("MIGM_COMFY_START_TIMEOUT", 120)))
        request.config.stash[_started_key] = {"ready_s": client.startup_s, "port": port,
                                              "log": str(log_path)}
        yield client
    finally:
        _stop(process)


def _wait_ready(client: ComfyClient, timeout: float) -> float:
    """Seconds until /system_stats answers; fails with the log tail if the server dies
    or stays silent past `timeout`."""
    started = time.monotonic()
    while True:
        if not client.alive():
            pytest.fail(f"ComfyUI exited with code {client.process.returncode} before it "
                        f"answered; log tail ({client.log_path}):\n{client.log_tail()}",
                        pytrace=False)
        try:
            if client.http.get(client.base_url + "/system_stats", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        if time.monotonic() - started > timeout:
            pytest.fail(f"ComfyUI did not answer /system_stats within {timeout:.0f} s; "
                        f"log tail ({client.log_path}):\n{client.log_tail()}", pytrace=False)
        time.sleep(0.25)
