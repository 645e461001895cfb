"""Proves the host harness against the real ComfyUI with the throwaway pack in
tests/host/harness_pack/ (installed as migm_harness_pack next to the real pack)."""

import struct

from comfy_client import HARNESS_PACK_NAME, execution_error, status_messages, status_str

BROKEN_PACKS = ("migm_harness_broken_import", "migm_harness_broken_entrypoint")  # conftest.py

HARNESS_NODES = ("HarnessEcho", "HarnessSlow", "HarnessModels", "HarnessImage", "HarnessClock", "HarnessPreviewMethod")


def echo_prompt(value, text="hello"):
    return {"1": {"class_type": "HarnessEcho", "inputs": {"value": value, "text": text}}}


def slow_prompt(steps, delay):
    return {"1": {"class_type": "HarnessSlow", "inputs": {"steps": steps, "delay": delay}}}


def test_harness_pack_imports_cleanly(comfy):
    assert comfy.import_failures(HARNESS_PACK_NAME) == []
    assert comfy.import_times().get(HARNESS_PACK_NAME) is True


def test_import_failures_sees_broken_packs(comfy):
    loaded = comfy.import_times()
    for name in BROKEN_PACKS:
        assert loaded.get(name) is False, name
    import_error = comfy.import_failures("migm_harness_broken_import")
    assert any("ImportError: harness: broken on purpose" in p for p in import_error), import_error
    assert any("Cannot import" in p for p in import_error), import_error
    entrypoint_error = comfy.import_failures("migm_harness_broken_entrypoint")
    assert any("Error while calling comfy_entrypoint" in p for p in entrypoint_error), entrypoint_error
    # A failing neighbour is not blamed on a pack whose name it starts with.
    assert comfy.import_failures("migm_harness_broken") == []


def test_v3_nodes_are_listed_in_object_info(comfy):
    info = comfy.object_info()
    for node in HARNESS_NODES:
        assert node in info, node
    echo = info["HarnessEcho"]
    assert echo["python_module"] == f"custom_nodes.{HARNESS_PACK_NAME}"
    assert echo["output_node"] is True
    assert echo["output"] == ["INT", "STRING"]
    kind, options = echo["input"]["required"]["value"]
    assert kind == "INT" and (options["min"], options["max"], options["default"]) == (0, 100, 1)
    assert "text" in echo["input"]["optional"]
    assert comfy.object_info("HarnessSlow")["name"] == "HarnessSlow"


def test_prompt_runs_to_success(comfy):
    entry = comfy.run(echo_prompt(7, "hi"), timeout=60)
    assert status_str(entry) == "success"
    assert entry["outputs"]["1"]["text"] == ["hi 7"]
    assert "execution_success" in [kind for kind, _ in status_messages(entry)]


def cached_nodes(entry):
    return [node for kind, data in status_messages(entry) if kind == "execution_cached"
            for node in data["nodes"]]


def test_identical_prompt_is_served_from_cache_even_if_not_idempotent(comfy):
    prompt = slow_prompt(3, 0.0)  # HarnessSlow has not_idempotent=True
    first, second = comfy.run(prompt, timeout=60), comfy.run(prompt, timeout=60)
    assert "1" not in cached_nodes(first)
    assert cached_nodes(second) == ["1"]


def test_fingerprint_nan_runs_every_time(comfy):
    prompt = {"1": {"class_type": "HarnessClock", "inputs": {"seed": 2**64 - 1}}}
    first, second = comfy.run(prompt, timeout=60), comfy.run(prompt, timeout=60)
    assert cached_nodes(second) == []
    assert first["outputs"]["1"]["text"] != second["outputs"]["1"]["text"]
    seed = comfy.object_info("HarnessClock")["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] is True and seed["max"] == 2**64 - 1


def test_value_out_of_range_is_refused_with_node_errors(comfy):
    status, body = comfy.queue(echo_prompt(101))
    assert status == 400
    errors = body["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "value_bigger_than_max"
    assert errors[0]["extra_info"]["input_name"] == "value"
    assert body["node_errors"]["1"]["class_type"] == "HarnessEcho"


def test_extra_model_paths_folders_are_listed(comfy):
    (comfy.model_dir("migm") / "tiny-migm.safetensors").write_bytes(b"\0")
    (comfy.model_dir("migm_shortcut") / "tiny-shortcut.pth").write_bytes(b"\0")
    assert f"Adding extra search path migm {comfy.model_dir('migm')}" in comfy.log_text()
    kind, spec = comfy.object_info("HarnessModels")["input"]["optional"]["migm"]
    assert kind == "COMBO" and "tiny-migm.safetensors" in spec["options"]  # read per request
    entry = comfy.run({"1": {"class_type": "HarnessModels", "inputs": {}}}, timeout=60)
    listing = entry["outputs"]["1"]["text"][0].splitlines()
    assert "migm/tiny-migm.safetensors" in listing
    assert "migm_shortcut/tiny-shortcut.pth" in listing


def test_image_lands_in_output_dir(comfy):
    entry = comfy.run({"1": {"class_type": "HarnessImage", "inputs": {"size": 8}}}, timeout=60)
    paths = comfy.output_paths(entry)
    assert len(paths) == 1 and paths[0].is_file()
    assert comfy.output_dir in paths[0].parents
    png = paths[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (8, 8)
    assert comfy.view(entry["outputs"]["1"]["images"][0]) == png


def test_websocket_reports_progress(comfy):
    with comfy.listen() as ws:
        status, body = comfy.queue(slow_prompt(4, 0.01), client_id=ws.client_id)
        assert status == 200, body
        prompt_id = body["prompt_id"]
        # "executing" with node None is the last message of a prompt.
        ws.wait_for("executing", prompt_id=prompt_id, where=lambda m: m["node"] is None,
                    timeout=60)
        values = [(p["value"], p["max"]) for p in ws.of_type("progress", prompt_id)]
        assert values == [(1, 4), (2, 4), (3, 4), (4, 4)]
        assert [m["node"] for m in ws.of_type("executing", prompt_id)] == ["1", None]
        assert ws.of_type("execution_success", prompt_id)


def test_interrupt_stops_a_running_prompt(comfy):
    with comfy.listen() as ws:
        status, body = comfy.queue(slow_prompt(2000, 0.05), client_id=ws.client_id)
        assert status == 200, body
        prompt_id = body["prompt_id"]
        ws.wait_for("progress", prompt_id=prompt_id, where=lambda p: p["value"] >= 2, timeout=60)
        assert comfy.interrupt() == 200
        interrupted = ws.wait_for("execution_interrupted", prompt_id=prompt_id, timeout=30)
        assert interrupted["node_id"] == "1"
    entry = comfy.wait(prompt_id, timeout=30)
    assert status_str(entry) == "error"
    assert execution_error(entry)["type"] == "execution_interrupted"
    # The next prompt runs normally: nothing of the interruption leaks into it.
    assert comfy.run(slow_prompt(2, 0.0), timeout=60)["outputs"]["1"]["text"] == ["ran 2 steps"]


def test_example_workflows_are_served(comfy):
    templates = comfy.get("/api/workflow_templates").json()
    assert templates.get(HARNESS_PACK_NAME) == ["harness_echo"]
    workflow = comfy.get(f"/api/workflow_templates/{HARNESS_PACK_NAME}/harness_echo.json").json()
    assert workflow["nodes"][0]["type"] == "HarnessEcho"
