"""A small client for a real ComfyUI server started by tests/host/conftest.py.

It speaks the server's public HTTP and websocket API only (the same one the editor and
headless users speak): /object_info, /prompt, /history, /interrupt, /ws, /view. It also
reads the server's log, since ComfyUI keeps running when a custom-node pack fails to
import and says so only there.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import requests

try:
    import websocket  # websocket-client, installed by scripts/setup_comfyui.sh
except ImportError:
    websocket = None

# Folder names under the test server's custom_nodes/ (see conftest.py).
PACK_NAME = "ComfyUI-MIGM-Shortcut"        # a link to the repository root: the real pack
HARNESS_PACK_NAME = "migm_harness_pack"    # tests/host/harness_pack/

DEFAULT_TIMEOUT = 120.0
_POLL_S = 0.1
_TRACEBACK_HEAD = "Traceback (most recent call last):"


class ComfyRunError(AssertionError):
    """A prompt was refused (HTTP 400) or finished with an error."""


class ComfyClient:
    def __init__(self, base_url: str, *, process: subprocess.Popen, log_path: Path,
                 base_dir: Path, output_dir: Path, models_dir: Path) -> None:
        self.base_url = base_url.rstrip("/")
        self.process = process
        self.log_path = Path(log_path)
        self.base_dir = Path(base_dir)      # --base-directory: custom_nodes/, models/, user/, temp/
        self.output_dir = Path(output_dir)  # --output-directory
        self.models_dir = Path(models_dir)  # root of the folders in extra_model_paths.yaml
        self.startup_s: float | None = None  # seconds until /system_stats first answered
        self.http = requests.Session()

    # --- server state ---------------------------------------------------------------

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}; "
                               f"log tail ({self.log_path}):\n{self.log_tail()}")

    def model_dir(self, folder_name: str) -> Path:
        """The folder that extra_model_paths.yaml maps `folder_name` (migm, migm_shortcut) to."""
        return self.models_dir / folder_name

    # --- HTTP -----------------------------------------------------------------------

    def get(self, route: str, **kwargs: Any) -> requests.Response:
        self._check_alive()
        return self.http.get(self.base_url + route, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, route: str, payload: Any = None, **kwargs: Any) -> requests.Response:
        self._check_alive()
        # json.dumps, not requests' json=: NaN and Infinity go out as any client may send them
        # (the server's json.loads takes them), so the tests can send what a hostile client does.
        data = None if payload is None else json.dumps(payload)
        return self.http.post(self.base_url + route, data=data, headers={"Content-Type": "application/json"},
                              timeout=kwargs.pop("timeout", 30), **kwargs)

    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node_class> (that node's entry)."""
        if node_class is None:
            return self.get("/object_info").json()
        return self.get(f"/object_info/{node_class}").json().get(node_class, {})

    def queue(self, api_prompt: dict, client_id: str | None = None,
              extra_data: dict | None = None) -> tuple[int, dict]:
        """POST /prompt with an API-format graph; returns (HTTP status, JSON body).
        200 bodies hold `prompt_id`; 400 bodies hold `error` and per-node `node_errors`."""
        payload: dict[str, Any] = {"prompt": api_prompt}
        if client_id is not None:
            payload["client_id"] = client_id
        if extra_data is not None:
            payload["extra_data"] = extra_data
        response = self.post("/prompt", payload)
        return response.status_code, response.json()

    def wait(self, prompt_id: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Polls /history/<prompt_id> until the prompt has finished (success, error or
        interrupted) and returns its history entry: {"prompt", "outputs", "status", "meta"}."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") is not None:
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s; "
                                   f"log tail:\n{self.log_tail()}")
            time.sleep(_POLL_S)

    def run(self, api_prompt: dict, timeout: float = DEFAULT_TIMEOUT,
            client_id: str | None = None) -> dict:
        """queue() + wait(); raises ComfyRunError unless the prompt ran to success."""
        status, body = self.queue(api_prompt, client_id=client_id)
        if status != 200:
            raise ComfyRunError(f"/prompt answered {status}: {json.dumps(body, indent=1)}")
        entry = self.wait(body["prompt_id"], timeout)
        if status_str(entry) != "success":
            raise ComfyRunError(f"prompt {body['prompt_id']} ended {status_str(entry)!r}: "
                                f"{json.dumps(execution_error(entry), indent=1)}")
        return entry

    def interrupt(self, prompt_id: str | None = None) -> int:
        """POST /interrupt (the running prompt, or only `prompt_id` if it is the one running)."""
        return self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {}).status_code

    def free(self, unload_models: bool = True, free_memory: bool = True) -> int:
        """POST /free: ask the server to drop loaded models and cached outputs."""
        return self.post("/free", {"unload_models": unload_models,
                                   "free_memory": free_memory}).status_code

    def view(self, file_ref: dict) -> bytes:
        """GET /view for one {"filename", "subfolder", "type"} entry of a history output."""
        response = self.get("/view", params=file_ref)
        response.raise_for_status()
        return response.content

    def output_paths(self, entry: dict) -> list[Path]:
        """Files in output_dir that a history entry's UI outputs name (type "output")."""
        paths = []
        for node_output in entry.get("outputs", {}).values():
            for files in node_output.values():
                for ref in files if isinstance(files, list) else []:
                    if isinstance(ref, dict) and ref.get("type") == "output" and "filename" in ref:
                        paths.append(self.output_dir / ref.get("subfolder", "") / ref["filename"])
        return paths

    def listen(self, client_id: str | None = None) -> "WebSocketListener":
        """A websocket on /ws?clientId=…; queue prompts with `client_id=listener.client_id`
        to receive their `executing`/`progress`/`execution_*` messages:

            with comfy.listen() as ws:
                status, body = comfy.queue(prompt, client_id=ws.client_id)
                ws.wait_for("execution_success", prompt_id=body["prompt_id"])
        """
        self._check_alive()
        return WebSocketListener(self.base_url, client_id or uuid.uuid4().hex)

    # --- log ------------------------------------------------------------------------

    def import_times(self) -> dict[str, bool]:
        """Custom-node folders from the log's "Import times for custom nodes" summary,
        mapped to True where they loaded and False where the line says IMPORT FAILED."""
        loaded = {}
        for line in self.log_text().splitlines():
            match = re.match(r"\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (.+)$", line)
            if match:
                loaded[Path(match.group(2).strip()).name] = match.group(1) is None
        return loaded

    def import_failures(self, pack_name: str) -> list[str]:
        """Every sign in the log that the custom-node folder `pack_name` did not import:
        its "(IMPORT FAILED)" summary line, "Cannot import …"/"comfy_entrypoint …"/"Skip …"
        warnings, and tracebacks that pass through the pack. Empty when it imported."""
        text = self.log_text()
        summary_at = text.find("Import times for custom nodes:")
        import_phase = text if summary_at < 0 else text[:summary_at]
        in_pack = re.compile(rf"/{re.escape(pack_name)}(?=[/\s'\":]|$)")
        problems = [block for block in _traceback_blocks(import_phase) if in_pack.search(block)]
        markers = ("Cannot import ", "comfy_entrypoint in ", "Skip ", "(IMPORT FAILED)")
        for line in text.splitlines():
            if any(marker in line for marker in markers) and in_pack.search(line):
                problems.append(line.strip())
        return problems


def status_str(entry: dict) -> str | None:
    """"success" or "error" (also for an interrupted prompt) from a history entry."""
    return entry.get("status", {}).get("status_str")


def status_messages(entry: dict) -> list[tuple[str, dict]]:
    """The (type, data) events that a history entry recorded: execution_start,
    execution_cached, execution_success, execution_error, execution_interrupted."""
    return [(kind, data) for kind, data in entry.get("status", {}).get("messages", [])]


def execution_error(entry: dict) -> dict | None:
    """The execution_error (exception_message, traceback, node_id, …) or
    execution_interrupted event of a history entry, or None."""
    for kind, data in status_messages(entry):
        if kind in ("execution_error", "execution_interrupted"):
            return {"type": kind, **data}
    return None


def _traceback_blocks(text: str) -> list[str]:
    """Each Python traceback in a log: from its head line to the exception line."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith(_TRACEBACK_HEAD):
            current = [line]
        elif current is not None:
            current.append(line)
            if line and not line.startswith((" ", "\t")) and not line.startswith(_TRACEBACK_HEAD):
                if not line.startswith(("During handling", "The above exception")):
                    blocks.append("\n".join(current))
                    current = None
    return blocks


class WebSocketListener:
    """Collects the server's JSON websocket messages on a background thread."""

    def __init__(self, base_url: str, client_id: str, connect_timeout: float = 30.0) -> None:
        if websocket is None:
            raise RuntimeError("websocket-client is missing: run scripts/setup_comfyui.sh")
        self.client_id = client_id
        self.messages: list[dict] = []
        self.previews: list[bytes] = []  # binary frames, in order of arrival
        self._changed = threading.Condition()
        url = base_url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self._socket = websocket.create_connection(url, timeout=connect_timeout)
        self._socket.settimeout(0.5)
        self._closed = False
        self._thread = threading.Thread(target=self._read, name=f"comfy-ws-{client_id[:8]}",
                                        daemon=True)
        self._thread.start()
        # The server registers the socket before it sends "status": once that arrives,
        # prompts queued with this client_id are sure to report here.
        self.wait_for("status", timeout=connect_timeout)

    def _read(self) -> None:
        while not self._closed:
            try:
                frame = self._socket.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                break
            if isinstance(frame, bytes):  # binary preview images: event type, image type, image bytes
                with self._changed:
                    self.previews.append(frame)
                    self._changed.notify_all()
                continue
            if not frame:  # a close frame reads as an empty string
                if not self._socket.connected:
                    break
                continue
            with self._changed:
                self.messages.append(json.loads(frame))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def of_type(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        """The `data` of every message of type `kind` so far (for `prompt_id` if given)."""
        with self._changed:
            return [m["data"] for m in self.messages if m.get("type") == kind
                    and (prompt_id is None or m.get("data", {}).get("prompt_id") == prompt_id)]

    def types(self) -> list[str]:
        with self._changed:
            return [m.get("type") for m in self.messages]

    def wait_for(self, kind: str, prompt_id: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 where: Callable[[dict], bool] | None = None) -> dict:
        """Blocks until a message of type `kind` (matching prompt_id and `where`) has
        arrived, and returns its `data`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    data = message.get("data", {})
                    if (message.get("type") == kind
                            and (prompt_id is None or data.get("prompt_id") == prompt_id)
                            and (where is None or where(data))):
                        return data
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    seen = [m.get("type") for m in self.messages]
                    raise TimeoutError(f"no websocket {kind!r} message within {timeout:.0f} s "
                                       f"(socket closed: {self._closed}); seen: {seen}")
                self._changed.wait(min(left, 0.5))

    def close(self) -> None:
        self._closed = True
        try:
            self._socket.close()
        finally:
            self._thread.join(timeout=5)

    def __enter__(self) -> "WebSocketListener":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def passes_pattern(full: int, plain: int) -> str:
    """Regex of a report's pass count: step 0 comes from memory when the class was sampled before."""
    return rf"base passes ({full}|{full - 1} \+ 1 from memory) \(plain: {plain}\)"
