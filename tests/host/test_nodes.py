"""The pack's four nodes in the real ComfyUI 0.3.75 (`main.py --cpu`), driven over HTTP.

Tiny random-weight stand-ins are written into the extra_model_paths.yaml folders the
`comfy` fixture set up (the real server lists files added after start): a MaskGIT with
its VQGAN and a matching shortcut, a shortcut for other weights of the same shapes, one
of another width, a slower MaskGIT for the interrupt test, a base without VQGAN plus a
separate VQGAN file, and a fake Lumina-DiMOO checkpoint folder with its shortcut. The
shipped workflows run on the embedded default models when those files exist, and on the
stand-ins (names swapped in) until then.
"""
from __future__ import annotations

import copy
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_client import PACK_NAME, ComfyRunError, execution_error, passes_pattern, status_str
from shortcut_core import MaskGIT, MaskGITConfig, MaskGITMIGM, ShortcutConfig, load_migm, save_migm, save_shortcut
from shortcut_core.checkpoints import fingerprint
from shortcut_core.migm import save_vqgan
from tests.tiny import tiny_migm, tiny_shortcut
from training.data import Recording
from training.trajectories import read_manifest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
API_WORKFLOWS = WORKFLOWS / "api"
DEFAULT_MIGM, DEFAULT_SHORTCUT = "fmnist_maskgit.safetensors", "fmnist_shortcut.safetensors"
DEFAULTS_SHIPPED = ((REPO / "models" / "migm" / DEFAULT_MIGM).is_file()
                    and (REPO / "models" / "migm_shortcut" / DEFAULT_SHORTCUT).is_file())
NODE_IDS = ("LoadMIGM", "LoadMIGMShortcut", "MIGMClasses", "MIGMPrompt", "MIGMShortcutSampler", "MIGMRecordTrajectories")
VQ_BUNDLED = "(bundled)"

TINY, TINY_SC = "tiny_maskgit.safetensors", "tiny_shortcut.safetensors"
TINY_CAL_SC = "tiny_shortcut_calibrated.safetensors"
TINY_NOVQ, TINY_VQ = "tiny_maskgit_novq.safetensors", "tiny_vqgan.safetensors"
OTHER_SC, WIDE_SC = "tiny_shortcut_other_base.safetensors", "wide_shortcut.safetensors"
SLOW = "slow_maskgit.safetensors"
DIMOO, DIMOO_SC = "tiny_dimoo", "tiny_dimoo_shortcut.safetensors"
TINY_SIZE = 16  # tiny VQGAN: 4x4 tokens -> 16x16 pixels

CLASSES = {"classes": "0", "images_per_class": 1}
SAMPLER = {"preset": "custom", "seed": 1, "steps": 8, "full_steps": 3, "full_step_list": "", "schedule": "arccos", "cfg": 2.8,
           "sm_temp": 1.0, "r_temp": 7.0, "temperature": 1.0, "placement": "paper"}


@pytest.fixture(scope="module")
def models(comfy):
    """Writes the stand-ins into the server's model folders; returns the tiny base model."""
    migm_dir, sc_dir = comfy.model_dir("migm"), comfy.model_dir("migm_shortcut")
    vq_dir = comfy.base_dir / "models" / "migm_vq"  # ComfyUI/models/migm_vq, registered by the pack
    vq_dir.mkdir(parents=True, exist_ok=True)
    tiny = tiny_migm(seed=0)
    save_migm(tiny, migm_dir / TINY)
    save_migm(tiny, migm_dir / TINY_NOVQ, include_vqgan=False)
    save_vqgan(tiny.vqgan, vq_dir / TINY_VQ)
    save_shortcut(tiny_shortcut(tiny), sc_dir / TINY_SC, base_fingerprint=tiny.fingerprint)
    save_shortcut(tiny_shortcut(tiny), sc_dir / TINY_CAL_SC, base_fingerprint=tiny.fingerprint,
                  info={"placements": {"table": {"8": {"3": [0, 4, 6]}},  # as training.calibrate writes it
                                       "by_regime": {"uncond": {"8": {"3": [0, 1, 6]}}}}})  # --for-regime uncond
    other = tiny_migm(seed=5, vqgan=False)
    save_shortcut(tiny_shortcut(other, seed=2), sc_dir / OTHER_SC, base_fingerprint=other.fingerprint)

    torch.manual_seed(0)
    slow_config = MaskGITConfig(hidden=64, depth=2, heads=4, mlp_dim=128, grid=32, codebook_size=16, num_classes=3)
    slow_model = MaskGIT(slow_config)
    slow = MaskGITMIGM(slow_model, None, name="slow", fingerprint=fingerprint(slow_model.state_dict(),
                                                                              slow_config.to_dict()))
    save_migm(slow, migm_dir / SLOW)
    wide = slow.build_shortcut(ShortcutConfig(dim=64, width=16, heads=4))
    save_shortcut(wide, sc_dir / WIDE_SC, base_fingerprint=slow.fingerprint)

    from shortcut_core.dimoo.config import SHORTCUT_PRESETS
    from shortcut_core.dimoo.fake import write_fake_dimoo_folder

    folder = write_fake_dimoo_folder(migm_dir / DIMOO, seed=0)
    dimoo = load_migm(folder)
    torch.manual_seed(3)
    save_shortcut(dimoo.build_shortcut(SHORTCUT_PRESETS["tiny"]).eval(), sc_dir / DIMOO_SC,
                  base_fingerprint=dimoo.fingerprint)
    return tiny


# -- graphs ------------------------------------------------------------------------------


def condition_node(migm_node: str = "1", **given) -> dict:
    """MIGM Classes, or MIGM Prompt when a prompt is given; batch_size is images per class / prompt."""
    per_item = given.pop("batch_size", 1)
    if "prompt" in given:
        inputs = {"prompt": given.pop("prompt"), "width": given.pop("width", 1024), "height": given.pop("height", 1024),
                  "images_per_prompt": per_item}
        return {"class_type": "MIGMPrompt", "inputs": {**inputs, "migm": [migm_node, 0]}}
    return {"class_type": "MIGMClasses", "inputs": {**CLASSES, "classes": given.pop("classes", CLASSES["classes"]),
                                                    "images_per_class": per_item, "migm": [migm_node, 0]}}


CONDITION_KEYS = ("classes", "prompt", "width", "height", "batch_size")


def generate_graph(migm=TINY, shortcut=TINY_SC, prefix="migm_test", vq=VQ_BUNDLED, **sampler):
    """Load MIGM (1) -> condition (8) -> Shortcut Sampler (3) -> Save Image (4), with Load Shortcut (2)."""
    condition = {k: sampler.pop(k) for k in CONDITION_KEYS if k in sampler}
    graph = {
        "1": {"class_type": "LoadMIGM", "inputs": {"migm_name": migm, "vq_name": vq, "device": "cpu",
                                                   "dtype": "auto"}},
        "8": condition_node(**condition),
        "3": {"class_type": "MIGMShortcutSampler", "inputs": {**SAMPLER, **sampler, "migm": ["1", 0],
                                                              "condition": ["8", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    if shortcut:
        graph["2"] = {"class_type": "LoadMIGMShortcut", "inputs": {"migm": ["1", 0], "shortcut_name": shortcut,
                                                                  "allow_fingerprint_mismatch": False}}
        graph["3"]["inputs"]["shortcut"] = ["2", 0]
    return graph


def images_of(comfy, entry) -> list[np.ndarray]:
    """The saved PNGs of a history entry as uint8 arrays (H, W, 3), in file-name order."""
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted(comfy.output_paths(entry))]


def previews_of(comfy, entry, node: str) -> list[np.ndarray]:
    """The temporary (preview) images a node showed, fetched as the page does, through /view."""
    refs = entry["outputs"][node]["images"]
    assert refs and all(r["type"] == "temp" for r in refs), refs
    return [np.asarray(Image.open(io.BytesIO(comfy.get("/view", params=r).content)).convert("RGB")) for r in refs]


def report_of(entry, node="3") -> str:
    return entry["outputs"][node]["text"][0]


def with_standins(graph: dict) -> dict:
    """A shipped API workflow with the stand-ins swapped in while the default models are not there."""
    graph = copy.deepcopy(graph)
    if DEFAULTS_SHIPPED:
        return graph
    swap = {DEFAULT_MIGM: TINY, DEFAULT_SHORTCUT: TINY_SC}
    for node in graph.values():
        for key, value in node["inputs"].items():
            if isinstance(value, str) and value in swap:
                node["inputs"][key] = swap[value]
    return graph


def expected_side(graph: dict) -> int:
    """Pixel side of the images the workflow's MaskGIT makes (square)."""
    name = next(n["inputs"]["migm_name"] for n in graph.values() if n["class_type"] == "LoadMIGM")
    if name == TINY:
        return TINY_SIZE
    migm = load_migm(REPO / "models" / "migm" / name)
    grid = migm.config.grid
    return int(migm.decode_tokens(torch.zeros(1, grid, grid, dtype=torch.long)).shape[1])


# -- loading and listing -------------------------------------------------------------------


def test_pack_imports_cleanly(comfy):
    assert comfy.import_failures(PACK_NAME) == []
    assert comfy.import_times().get(PACK_NAME) is True


def test_object_info_lists_the_nodes_and_inputs(comfy, models):
    info = comfy.object_info()
    for node in NODE_IDS:
        assert node in info, node
        assert info[node]["python_module"] == f"custom_nodes.{PACK_NAME}"

    loader = info["LoadMIGM"]
    assert loader["output"] == ["MIGM"]
    kind, spec = loader["input"]["required"]["migm_name"]
    assert kind == "COMBO"
    options = spec["options"]
    assert {TINY, TINY_NOVQ, SLOW, DIMOO + "/"} <= set(options)
    assert not any(o.startswith(DIMOO + "/") and o != DIMOO + "/" for o in options), options  # no shard files
    if DEFAULTS_SHIPPED:
        assert options[0] == DEFAULT_MIGM
    assert VQ_BUNDLED == loader["input"]["required"]["vq_name"][1]["options"][0]
    assert TINY_VQ in loader["input"]["required"]["vq_name"][1]["options"]
    assert loader["input"]["required"]["device"][1]["options"] == ["auto", "cpu", "cuda"]
    assert loader["input"]["required"]["dtype"][1]["options"] == ["auto", "fp32", "fp16", "bf16"]

    shortcut = info["LoadMIGMShortcut"]
    assert shortcut["output"] == ["SHORTCUT"]
    assert shortcut["input"]["required"]["migm"][0] == "MIGM"
    assert {TINY_SC, OTHER_SC, WIDE_SC, DIMOO_SC} <= set(shortcut["input"]["required"]["shortcut_name"][1]["options"])
    assert shortcut["input"]["required"]["allow_fingerprint_mismatch"][0] == "BOOLEAN"

    sampler = info["MIGMShortcutSampler"]
    assert sampler["output"] == ["IMAGE", "STRING"]
    required = sampler["input"]["required"]
    assert set(SAMPLER) <= set(required) and required["migm"][0] == "MIGM"
    assert required["condition"][0] == "MIGM_CONDITION"
    # what to sample is the condition node's: the sampler shows no input one family ignores for it
    assert not {"classes", "prompt", "width", "height", "batch_size"} & set(required)
    classes, prompt = info["MIGMClasses"], info["MIGMPrompt"]
    assert classes["output"] == prompt["output"] == ["MIGM_CONDITION"]
    assert set(classes["input"]["required"]) == {"migm", "classes", "images_per_class"}
    assert set(prompt["input"]["required"]) == {"migm", "prompt", "width", "height", "images_per_prompt"}
    assert sampler["input"]["optional"]["shortcut"][0] == "SHORTCUT"
    seed = required["seed"][1]
    assert seed["control_after_generate"] is True and (seed["min"], seed["max"]) == (0, 2**64 - 1)
    presets = required["preset"][1]["options"]
    assert presets[:2] == ["custom", "off (plain)"] and "MaskGIT paper N=32 B=12" in presets
    assert any(p.startswith("DiMOO T=64") for p in presets)
    assert all(spec[1].get("tooltip") for spec in required.values())

    record = info["MIGMRecordTrajectories"]
    assert record["output"] == ["STRING", "STRING"] and record["output_node"] is True
    assert {"classes", "count_per_class", "prompts", "steps", "seed", "output_name"} <= set(record["input"]["required"])


def test_help_pages_are_served(comfy):
    for node in NODE_IDS:
        page = comfy.get(f"/extensions/{PACK_NAME}/docs/{node}.md")
        assert page.status_code == 200, node
        assert page.text.startswith("# "), node


# -- workflows -----------------------------------------------------------------------------


def widget_names(node_info: dict) -> list[str]:
    """The editor's widgets_values order: widget inputs in schema order, a control value after every
    INT declared with control_after_generate and, as ComfyUI's frontend does, after every INT named
    ``seed`` or ``noise_seed`` whether declared or not."""
    names = []
    order = node_info.get("input_order", {})
    for section in ("required", "optional"):
        for name in order.get(section, node_info["input"].get(section, {})):
            kind, spec = (list(node_info["input"][section][name]) + [{}])[:2]
            if kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") or isinstance(kind, list):
                names.append(name)
                if spec.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed")):
                    names.append("control_after_generate")
    return names


def test_ui_workflows_match_their_api_twins(comfy):
    info = comfy.object_info()
    ui_files = sorted(WORKFLOWS.glob("*.json"))
    assert {p.stem for p in ui_files} == {p.stem for p in API_WORKFLOWS.glob("*.json")}
    assert len(ui_files) >= 3
    for path in ui_files:
        ui = json.loads(path.read_text())
        api = json.loads((API_WORKFLOWS / path.name).read_text())
        assert ui["version"] and ui["links"] is not None
        assert {str(n["id"]) for n in ui["nodes"]} == set(api), path.name
        links = {link[0]: link for link in ui["links"]}
        for node in ui["nodes"]:
            twin = api[str(node["id"])]
            assert node["type"] == twin["class_type"], (path.name, node["id"])
            names = widget_names(info[node["type"]])
            values = dict(zip(names, node["widgets_values"]))
            assert len(node["widgets_values"]) == len(names), (path.name, node["type"])
            values.pop("control_after_generate", None)
            widgets = {k: v for k, v in twin["inputs"].items() if not isinstance(v, list)}
            assert values == widgets, (path.name, node["type"])
            wired = {k: v for k, v in twin["inputs"].items() if isinstance(v, list)}
            ui_wired = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
                        for i in node["inputs"] if i.get("link") is not None}
            assert ui_wired == wired, (path.name, node["type"])


def test_workflows_are_listed_as_templates(comfy):
    templates = comfy.get("/api/workflow_templates").json().get(PACK_NAME, [])
    assert sorted(templates) == sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    for name in templates:  # each with a thumbnail of the same name, served next to it
        thumbnail = comfy.get(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert thumbnail.status_code == 200 and thumbnail.content[:3] == b"\xff\xd8\xff", name


def test_generate_workflow_runs(comfy, models):
    graph = with_standins(json.loads((API_WORKFLOWS / "migm_shortcut_generate.json").read_text()))
    entry = comfy.run(graph, timeout=300)
    images = images_of(comfy, entry)
    side = expected_side(graph)
    assert images and all(im.shape == (side, side, 3) for im in images)
    shown = previews_of(comfy, entry, "7")  # the true-size save, and the same images x4 (nearest) for the eye
    assert len(shown) == len(images) and all(np.array_equal(big[::4, ::4], im) for big, im in zip(shown, images))
    report = entry["outputs"]["5"]["text"][0]
    sampler = graph["3"]["inputs"]
    assert re.match(rf"full {sampler['full_steps']}/{sampler['steps']}, shortcut "
                    rf"{sampler['steps'] - sampler['full_steps']}, {passes_pattern(sampler['full_steps'], sampler['steps'])}",
                    report), report


def test_plain_vs_shortcut_workflow_runs(comfy, models):
    graph = with_standins(json.loads((API_WORKFLOWS / "migm_shortcut_vs_plain.json").read_text()))
    for sampler in ("3", "4"):  # the generate workflow ran the same sampler: outputs cached then show no text
        graph[sampler]["inputs"]["seed"] += 1
    entry = comfy.run(graph, timeout=300)
    side = expected_side(graph)
    spacing = graph["5"]["inputs"]["spacing_width"]
    images = images_of(comfy, entry)
    assert images and all(im.shape == (side, 2 * side + spacing, 3) for im in images)
    shown = previews_of(comfy, entry, "10")
    assert len(shown) == len(images) and all(np.array_equal(big[::4, ::4], im) for big, im in zip(shown, images))
    plain, fast = entry["outputs"]["7"]["text"][0], entry["outputs"]["8"]["text"][0]
    n, b = graph["4"]["inputs"]["steps"], graph["4"]["inputs"]["full_steps"]
    assert plain.startswith(f"full {n}/{n}, shortcut 0,") and "plain" in plain
    assert fast.startswith(f"full {b}/{n}, shortcut {n - b},") and "; shortcut" in fast


def test_record_workflow_runs_and_shards_load(comfy, models):
    graph = with_standins(json.loads((API_WORKFLOWS / "migm_record_trajectories.json").read_text()))
    recorder = graph["2"]["inputs"]
    recorder["count_per_class"] = 1  # the shipped 8 per class take minutes on a busy 2-core test machine
    entry = comfy.run(graph, timeout=600)
    folder = comfy.output_dir / recorder["output_name"]
    manifest = read_manifest(folder)
    assert manifest["complete"] is True and manifest["steps"] == recorder["steps"]
    recording = Recording(folder)
    recording.check(skip_bad=False, log=print)
    classes = manifest["conditions"]["classes"]
    assert recording.num_trajectories == len(classes) * recorder["count_per_class"]
    shard = recording.load(0)
    assert shard["cond.features"].shape[1] == recorder["steps"]
    assert "complete" in entry["outputs"]["3"]["text"][0]


# -- the sampler ----------------------------------------------------------------------------


def refused(comfy, graph, node="3") -> tuple[str, str]:
    """Queues a graph that must be refused for one problem of `node`; returns (the input the
    message names as at fault, the rest of the message).

    ComfyUI 0.3.75 attaches a validate_inputs message to every input the validator reads (here
    preset, steps, full_steps, full_step_list), so one problem comes back once per input. The
    node starts the message with the input at fault, and web/js/errors_once.js shows it once,
    on that input (test_browser.py checks that in the page)."""
    status, body = comfy.queue(graph)
    assert status == 400, body
    errors = body["node_errors"][node]["errors"]
    messages = set()
    for error in errors:
        attached = error["extra_info"]["input_name"]
        assert error["type"] == "custom_validation_failed" and error["details"].startswith(f"{attached} - ")
        messages.add(error["details"].removeprefix(f"{attached} - "))
    assert len(messages) == 1, messages  # one problem, however many copies
    at_fault, _, message = messages.pop().partition(": ")
    assert at_fault in {error["extra_info"]["input_name"] for error in errors}
    return at_fault, message


def test_full_steps_above_steps_is_refused_with_a_readable_error(comfy, models):
    at_fault, message = refused(comfy, generate_graph(steps=8, full_steps=12))
    assert at_fault == "full_steps"
    assert message.startswith("full steps B=12 must be between 1 and the number of steps N=8")
    assert message.endswith("Lower 'full_steps' to at most 'steps' (8), or pick a preset")

    at_fault, message = refused(comfy, generate_graph(steps=8, full_step_list="0,5,3"))
    assert at_fault == "full_step_list" and "must be strictly increasing" in message
    at_fault, message = refused(comfy, generate_graph(steps=8, full_step_list="0,3,9"))
    assert at_fault == "full_step_list" and "outside 0..7" in message

    at_fault, message = refused(comfy, generate_graph(steps=0))  # the range check still applies
    assert at_fault == "steps" and message == "Value 0 smaller than min of 1"
    at_fault, message = refused(comfy, generate_graph(preset="turbo"))
    assert at_fault == "preset" and message.startswith("unknown preset 'turbo'; choose one of: custom, off (plain)")

    status, body = comfy.queue(generate_graph(seed=2**64))
    assert status == 400 and body["node_errors"]["3"]["errors"][0]["type"] == "value_bigger_than_max"

    # A preset fixes N and B: the custom inputs are not held against it.
    entry = comfy.run(generate_graph(preset="off (plain)", steps=8, full_steps=12, prefix="preset_off"), timeout=120)
    assert report_of(entry).startswith("full 8/8, shortcut 0,")


def test_off_is_exactly_plain(comfy, models):
    settings = dict(classes="0,2", batch_size=2, seed=7, steps=10, full_steps=4)
    plain = comfy.run(generate_graph(shortcut=None, prefix="eq_plain", **settings), timeout=120)
    off = comfy.run(generate_graph(preset="off (plain)", prefix="eq_off", **settings), timeout=120)
    all_full = comfy.run(generate_graph(prefix="eq_bn", **{**settings, "full_steps": 10}), timeout=120)
    fast = comfy.run(generate_graph(prefix="eq_fast", **settings), timeout=120)
    reference = images_of(comfy, plain)
    assert len(reference) == 4
    for other in (off, all_full):
        images = images_of(comfy, other)
        assert len(images) == len(reference) and all(np.array_equal(a, b) for a, b in zip(reference, images))
    assert re.match(r"full 10/10, shortcut 0, " + passes_pattern(10, 10), report_of(plain))
    assert re.match(r"full 4/10, shortcut 6, " + passes_pattern(4, 10), report_of(fast))
    assert report_of(fast).endswith(f"; shortcut {TINY_SC} on tiny")
    assert report_of(off).endswith("; plain: preset 'off (plain)' on tiny; not used: full_steps (set by preset "
                                   "'off (plain)')")
    assert report_of(plain).endswith("; plain: no shortcut connected on tiny")
    assert f"MIGM-Shortcut: {report_of(fast)}" in comfy.log_text()  # the proof is in the console too
    assert any(not np.array_equal(a, b) for a, b in zip(reference, images_of(comfy, fast)))


def test_bf16_on_the_cpu_samples_through_the_nodes(comfy, models):
    """The loader's bf16 choice on a CPU (fast where it has bf16 matrix units): base model and shortcut
    in bf16, the decoder in fp32; a shortcut run with real images and the usual report."""
    graph = generate_graph(prefix="bf16", classes="0,2", batch_size=2, seed=7, steps=10, full_steps=4)
    graph["1"]["inputs"]["dtype"] = "bf16"
    entry = comfy.run(graph, timeout=120)
    images = images_of(comfy, entry)
    assert len(images) == 4 and all(im.shape == (TINY_SIZE, TINY_SIZE, 3) and im.std() > 0 for im in images)
    assert re.match(r"full 4/10, shortcut 6, " + passes_pattern(4, 10), report_of(entry))
    assert re.search(r"MIGM-Shortcut: loading \S*tiny_maskgit\.safetensors on cpu \(bf16\)", comfy.log_text())


def test_compile_is_a_choice_of_the_sampler_with_the_eager_images(comfy, models):
    """torch.compile through the node (inductor on this CPU): the images of eager sampling, the
    mode in the report, and back to eager when switched off (the loaded models are shared)."""
    settings = dict(classes="0,2", batch_size=2, seed=5, steps=8, full_steps=3)
    eager = comfy.run(generate_graph(prefix="cmp_eager", **settings), timeout=120)
    compiled = comfy.run(generate_graph(prefix="cmp_on", compile=True, **settings), timeout=900)
    other_seed = {**settings, "seed": 6}
    compiled_again = comfy.run(generate_graph(prefix="cmp_on_again", compile=True, **other_seed), timeout=600)
    back = comfy.run(generate_graph(prefix="cmp_off", **other_seed), timeout=120)
    assert report_of(compiled).endswith(f"; shortcut {TINY_SC} on tiny; compiled (default)")
    assert "compiled" not in report_of(eager) and "compiled" not in report_of(back)
    for a, b in ((eager, compiled), (back, compiled_again)):
        first, second = images_of(comfy, a), images_of(comfy, b)
        assert len(first) == 4 and all(np.array_equal(x, y) for x, y in zip(first, second))


def test_calibrated_placement_is_a_choice_of_the_sampler(comfy, models):
    settings = dict(classes="0,2", seed=3, steps=8, full_steps=3)
    calibrated = comfy.run(generate_graph(shortcut=TINY_CAL_SC, placement="calibrated", prefix="cal", **settings),
                           timeout=120)
    paper = comfy.run(generate_graph(shortcut=TINY_CAL_SC, prefix="cal_paper", **settings), timeout=120)
    uncovered = comfy.run(generate_graph(shortcut=TINY_CAL_SC, placement="calibrated", prefix="cal_fallback",
                                         **{**settings, "full_steps": 2}), timeout=120)
    assert re.match(r"full 3/8, shortcut 5, " + passes_pattern(3, 8), report_of(calibrated))
    assert "; calibrated placement 0,4,6" in report_of(calibrated)
    assert "placement" not in report_of(paper)
    assert "paper placement: the shortcut has no calibrated placement for N=8, B=2" in report_of(uncovered)
    assert any(not np.array_equal(a, b) for a, b in zip(images_of(comfy, calibrated), images_of(comfy, paper)))


def test_auto_placement_is_the_samplers_default_and_follows_the_file(comfy, models):
    """auto (the default): the file's calibrated placement where it has one, the paper's elsewhere."""
    placement = comfy.object_info("MIGMShortcutSampler")["input"]["required"]["placement"]
    assert placement[1]["options"] == ["auto", "paper", "calibrated"] and placement[1]["default"] == "auto"
    settings = dict(classes="0,2", seed=3, steps=8, full_steps=3)
    auto = comfy.run(generate_graph(shortcut=TINY_CAL_SC, placement="auto", prefix="auto_cal", **settings), timeout=120)
    calibrated = comfy.run(generate_graph(shortcut=TINY_CAL_SC, placement="calibrated", prefix="auto_vs_cal",
                                          **settings), timeout=120)
    plain_file = comfy.run(generate_graph(placement="auto", prefix="auto_uncalibrated", **settings), timeout=120)
    assert "; calibrated placement 0,4,6" in report_of(auto)
    assert all(np.array_equal(a, b) for a, b in zip(images_of(comfy, auto), images_of(comfy, calibrated)))
    assert "placement" not in report_of(plain_file)  # a file never calibrated samples as the paper (the reference)
    # the file's own placement for unconditional sampling; a batch mixing both regimes takes the shared one
    uncond = comfy.run(generate_graph(shortcut=TINY_CAL_SC, placement="auto", prefix="auto_uncond",
                                      **{**settings, "classes": "none"}), timeout=120)
    mixed = comfy.run(generate_graph(shortcut=TINY_CAL_SC, placement="auto", prefix="auto_mixed",
                                     **{**settings, "classes": "0,none"}), timeout=120)
    assert "; calibrated placement 0,1,6 (unconditional sampling); shortcut" in report_of(uncond)
    assert "; calibrated placement 0,4,6; shortcut" in report_of(mixed)


def test_new_settings_run_without_restart(comfy, models):
    first = comfy.run(generate_graph(steps=8, full_steps=3, batch_size=1, seed=1, prefix="run_a"), timeout=120)
    second = comfy.run(generate_graph(steps=12, full_steps=5, batch_size=3, seed=2, classes="a, c",
                                      prefix="run_b"), timeout=120)
    a, b = images_of(comfy, first), images_of(comfy, second)
    assert len(a) == 1 and len(b) == 6
    assert report_of(first).startswith("full 3/8, shortcut 5,")
    assert report_of(second).startswith("full 5/12, shortcut 7,")
    assert not any(np.array_equal(a[0], im) for im in b)
    again = comfy.run(generate_graph(steps=8, full_steps=3, batch_size=1, seed=1, prefix="run_c"), timeout=120)
    assert np.array_equal(images_of(comfy, again)[0], a[0])  # nothing of the second run leaked


def test_interrupt_stops_sampling_within_one_step(comfy, models):
    graph = generate_graph(migm=SLOW, shortcut=None, steps=1000, full_steps=1000)
    graph.pop("4")
    graph["5"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}
    with comfy.listen() as ws:
        status, body = comfy.queue(graph, client_id=ws.client_id)
        assert status == 200, body
        prompt_id = body["prompt_id"]
        at = ws.wait_for("progress", prompt_id=prompt_id, where=lambda p: p["node"] == "3" and p["value"] >= 2,
                         timeout=120)["value"]
        assert comfy.interrupt() == 200
        ws.wait_for("execution_interrupted", prompt_id=prompt_id, timeout=60)
        seen = len(ws.of_type("progress", prompt_id))
        time.sleep(1.0)
        progress = [p["value"] for p in ws.of_type("progress", prompt_id) if p["node"] == "3"]
        assert len(ws.of_type("progress", prompt_id)) == seen  # nothing after the interruption
    assert max(progress) <= at + 2, (at, progress[-5:])
    entry = comfy.wait(prompt_id, timeout=30)
    assert status_str(entry) == "error" and execution_error(entry)["type"] == "execution_interrupted"
    comfy.run(generate_graph(prefix="after_interrupt"), timeout=120)  # the next prompt is unaffected


# -- shortcut loading -------------------------------------------------------------------------


def run_error(comfy, graph) -> str:
    with pytest.raises(ComfyRunError) as failed:
        comfy.run(graph, timeout=120)
    return str(failed.value)


def allowing_mismatch(graph: dict) -> dict:
    graph["2"]["inputs"]["allow_fingerprint_mismatch"] = True
    return graph


def test_mismatched_shortcut_is_refused_with_the_reason(comfy, models):
    for name in (OTHER_SC, WIDE_SC):  # recorded for other weights: refused by default
        message = run_error(comfy, generate_graph(shortcut=name, prefix="other"))
        assert "fingerprint" in message and "allow_fingerprint_mismatch" in message and name in message
    message = run_error(comfy, allowing_mismatch(generate_graph(shortcut=WIDE_SC, prefix="wide")))
    assert "width 64" in message and "width 32" in message and "pick a shortcut trained for this model" in message
    entry = comfy.run(allowing_mismatch(generate_graph(shortcut=OTHER_SC, prefix="other_allowed")), timeout=120)
    assert report_of(entry).startswith("full 3/8, shortcut 5,")
    graph = generate_graph(prefix="two_bases")  # the shortcut loaded for one MIGM, the sampler given another
    graph["5"] = {"class_type": "LoadMIGM", "inputs": {"migm_name": SLOW, "vq_name": VQ_BUNDLED, "device": "cpu",
                                                       "dtype": "auto"}}
    graph["3"]["inputs"]["migm"] = ["5", 0]
    graph["8"]["inputs"]["migm"] = ["5", 0]
    message = run_error(comfy, graph)
    assert f"the shortcut {TINY_SC!r} was loaded for MIGM 'tiny', but the sampler got MIGM 'slow'" in message


def test_a_condition_that_does_not_fit_the_model_is_refused_with_the_reason(comfy, models):
    graph = generate_graph(prefix="prompt_for_classes", prompt="a red cat")  # MIGM Prompt on a MaskGIT
    message = run_error(comfy, graph)
    assert "MIGM Prompt: MIGM 'tiny' is class-conditional (MaskGIT); use MIGM Classes for it" in message
    graph = generate_graph(migm=DIMOO + "/", shortcut=DIMOO_SC, prefix="classes_for_dimoo", classes="0")
    assert "MIGM Classes: MIGM 'tiny_dimoo' is text-to-image (Lumina-DiMOO); use MIGM Prompt for it" in \
        run_error(comfy, graph)
    graph = generate_graph(prefix="other_condition")  # made for another Load MIGM than the sampler's
    graph["5"] = {"class_type": "LoadMIGM", "inputs": {"migm_name": SLOW, "vq_name": VQ_BUNDLED, "device": "cpu",
                                                       "dtype": "auto"}}
    graph["8"]["inputs"]["migm"] = ["5", 0]
    assert "condition: it was made for MIGM 'slow', but the sampler got MIGM 'tiny'" in run_error(comfy, graph)


def test_separate_vq_file(comfy, models):
    bundled = comfy.run(generate_graph(prefix="vq_bundled", seed=3), timeout=120)
    separate = comfy.run(generate_graph(migm=TINY_NOVQ, vq=TINY_VQ, prefix="vq_file", seed=3), timeout=120)
    assert np.array_equal(images_of(comfy, bundled)[0], images_of(comfy, separate)[0])
    message = run_error(comfy, generate_graph(migm=TINY_NOVQ, prefix="vq_missing"))
    assert "no VQGAN" in message


def test_cuda_without_a_gpu_says_so(comfy, models):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    graph = generate_graph(prefix="cuda")
    graph["1"]["inputs"]["device"] = "cuda"
    assert "this torch sees no CUDA GPU" in run_error(comfy, graph)


def test_dimoo_folder_with_prompt_and_size(comfy, models):
    graph = generate_graph(migm=DIMOO + "/", shortcut=DIMOO_SC, prefix="dimoo", prompt="a red cat\na blue dog",
                           width=32, height=48, steps=8, full_steps=3, cfg=4.0, batch_size=1)
    entry = comfy.run(graph, timeout=300)
    images = images_of(comfy, entry)
    assert len(images) == 2 and all(im.shape == (48, 32, 3) for im in images)
    assert report_of(entry).startswith("full 3/8, shortcut 5, base passes 6 (plain: 16)")
    graph["8"]["inputs"]["prompt"] = "  "
    assert "no prompt given" in run_error(comfy, graph)


# -- recording -----------------------------------------------------------------------------


def record_graph(name: str, **inputs) -> dict:
    settings = {"classes": "0,2", "count_per_class": 2, "prompts": "", "width": 1024, "height": 1024,
                "temperature": 1.0, "steps": 4, "cfg": -1.0, "sm_temp": -1.0, "r_temp": -1.0, "schedule": "arccos",
                "batch_size": 2, "shard_size": 2, "feature_dtype": "float16", "seed": 0, "output_name": name}
    return {
        "1": {"class_type": "LoadMIGM", "inputs": {"migm_name": TINY, "vq_name": VQ_BUNDLED, "device": "cpu",
                                                   "dtype": "auto"}},
        "2": {"class_type": "MIGMRecordTrajectories", "inputs": {**settings, **inputs, "migm": ["1", 0]}},
    }


def test_recording_resumes_and_is_never_cached(comfy, models):
    graph = record_graph("resume_test")
    first = comfy.run(graph, timeout=120)
    assert "wrote 4 trajectories in 2 shards" in first["outputs"]["2"]["text"][0]
    folder = comfy.output_dir / "resume_test"
    recording = Recording(folder)
    assert recording.num_trajectories == 4
    assert [int(recording.load(k)["cond.condition"][0]) for k in range(2)] == [0, 0]
    (folder / "shard-000001.safetensors").unlink()  # as if stopped before the second shard
    summary = comfy.run(graph, timeout=120)["outputs"]["2"]["text"][0]  # same inputs: runs again
    assert "wrote 2 trajectories in 1 shards" in summary and "2 were already on disk" in summary
    assert Recording(folder).num_trajectories == 4
    message = run_error(comfy, record_graph("resume_test", seed=5))
    assert "other settings" in message and "seed" in message
    message = run_error(comfy, record_graph("../outside"))
    assert "must name a folder under" in message


def test_recording_a_dimoo_folder(comfy, models):
    graph = record_graph("dimoo_traj", prompts="a red cat\na blue dog", count_per_class=1, width=32, height=48,
                         steps=4, cfg=-1.0, batch_size=0, shard_size=0)
    graph["1"]["inputs"]["migm_name"] = DIMOO + "/"
    assert "wrote 2 trajectories" in comfy.run(graph, timeout=300)["outputs"]["2"]["text"][0]
    recording = Recording(comfy.output_dir / "dimoo_traj")
    manifest = recording.manifest
    assert manifest["family"] == "dimoo" and manifest["sampler"]["cfg"] == 4.0 and manifest["batch_size"] == 1
    assert recording.num_trajectories == 2 and recording.load(0)["cond.features"].shape[1] == 4


def test_interrupted_recording_keeps_finished_shards_and_continues(comfy, models):
    graph = record_graph("interrupted", classes="0", count_per_class=500, steps=4, batch_size=1, shard_size=1)
    graph["1"]["inputs"]["migm_name"] = SLOW
    with comfy.listen() as ws:
        status, body = comfy.queue(graph, client_id=ws.client_id)
        assert status == 200, body
        prompt_id = body["prompt_id"]
        ws.wait_for("progress", prompt_id=prompt_id, where=lambda p: p["node"] == "2" and p["value"] >= 1,
                    timeout=120)
        assert comfy.interrupt() == 200
        ws.wait_for("execution_interrupted", prompt_id=prompt_id, timeout=60)
    folder = comfy.output_dir / "interrupted"
    done = Recording(folder).num_trajectories
    assert 1 <= done < 500 and read_manifest(folder)["complete"] is False
    graph["2"]["inputs"]["count_per_class"] = done + 1  # the same settings, continued: one more trajectory
    summary = comfy.run(graph, timeout=120)["outputs"]["2"]["text"][0]
    assert "wrote 1 trajectories" in summary and f"{done} were already on disk" in summary


# -- bad input to the nodes, table-driven ----------------------------------------------------


def node_refusal(comfy, graph) -> tuple[str, str]:
    """('validation', message) for a graph the server refuses at queue time, or ('run', 'Type: message')
    for one refused when the node runs; fails if the graph runs."""
    status, body = comfy.queue(graph)
    if status == 400:
        details = [e.get("details", "") or e.get("message", "") for errors in body.get("node_errors", {}).values()
                   for e in errors["errors"]]
        return "validation", " | ".join(details) or json.dumps(body)
    assert status == 200, body
    entry = comfy.wait(body["prompt_id"], timeout=120)
    error = execution_error(entry)
    assert status_str(entry) == "error" and error, f"ran although the input is bad: {status_str(entry)}"
    return "run", f"{error['exception_type']}: {error['exception_message']}"


def sampler_case(**inputs):
    return lambda: generate_graph(prefix="bad_input", **inputs)


def record_case(**inputs):
    return lambda: record_graph(inputs.pop("output_name", "bad_input_rec"), **inputs)


NAN, INF = float("nan"), float("inf")
# (case, graph, words the message must hold: the input's name and what is wrong)
NODE_CASES = [
    ("sampler cfg NaN", sampler_case(cfg=NAN), ["cfg", "finite"]),
    ("sampler cfg inf", sampler_case(cfg=INF), ["cfg"]),
    ("sampler sm_temp NaN", sampler_case(sm_temp=NAN), ["sm_temp", "finite"]),
    ("sampler r_temp -inf", sampler_case(r_temp=-INF), ["r_temp"]),
    ("sampler class range too large", sampler_case(classes="0-99999999"), ["class range", "0-99999999"]),
    ("sampler fractional class", sampler_case(classes="1.5"), ["class", "1.5"]),
    ("sampler unknown class name", sampler_case(classes="a red shoe"), ["class", "a red shoe"]),
    ("sampler empty classes", sampler_case(classes=" , "), ["class"]),
    ("condition 0 images per class", sampler_case(batch_size=0), ["images_per_class"]),
    ("sampler steps 0", sampler_case(steps=0), ["steps"]),
    ("sampler fractional full-step entry", sampler_case(full_step_list="0,2.5"), ["full_step_list", "2.5"]),
    ("sampler text full-step entry", sampler_case(full_step_list="0,x"), ["full_step_list", "x"]),
    ("sampler full step list without step 0", sampler_case(full_step_list="2,5"), ["full_step_list", "0"]),
    ("sampler B > N", sampler_case(steps=4, full_steps=6), ["full_steps", "steps"]),
    ("sampler unknown preset", sampler_case(preset="turbo"), ["preset", "turbo"]),
    ("sampler shortcut of other weights", sampler_case(shortcut=OTHER_SC), ["fingerprint", OTHER_SC]),
    ("sampler missing model file", lambda: generate_graph(migm="no_such.safetensors", prefix="bad_input"),
     ["migm_name", "no_such.safetensors", "pick one from the list"]),
    ("shortcut file gone", sampler_case(shortcut="gone.safetensors"), ["shortcut_name", "gone.safetensors"]),
    ("record cfg NaN", record_case(cfg=NAN), ["cfg", "finite"]),
    ("record r_temp inf", record_case(r_temp=INF), ["r_temp"]),
    ("record class range too large", record_case(classes="0-99999999"), ["class range"]),
    ("record fractional class", record_case(classes="0,1.5"), ["class", "1.5"]),
    ("record count 0", record_case(count_per_class=0), ["count_per_class"]),
    ("record output outside", record_case(output_name="../outside"), ["output_name", "relative"]),
    ("record absolute output", record_case(output_name="/tmp/rec"), ["output_name", "relative"]),
    ("record output folder itself", record_case(output_name="."), ["output_name", "not the output folder itself"]),
    ("record empty output name", record_case(output_name=""), ["output_name"]),
    ("record shard not a multiple of batch", record_case(batch_size=2, shard_size=3), ["shard", "batch"]),
]


def output_snapshot(comfy) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in comfy.output_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name, make, words", NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_nodes_refuse_bad_input_by_name(comfy, models, name, make, words):
    before = output_snapshot(comfy)
    when, message = node_refusal(comfy, make())
    if when == "run":  # the library's kinds of error, not a torch or Python traceback
        kind = message.split(":", 1)[0].rsplit(".", 1)[-1]
        assert kind in ("ValueError", "TypeError", "CheckpointError", "ManifestError"), message
    for word in words:
        assert word in message, f"{name}: {word!r} not in {message!r}"
    assert output_snapshot(comfy) == before, "a refused input changed the output folder"


# -- ComfyUI's model management --------------------------------------------------------------


def weight_lines(comfy, since: int) -> list[str]:
    """The pack's 'weights on …' console lines written after character ``since`` of the log."""
    return [line.split("MIGM-Shortcut: ", 1)[1] for line in comfy.log_text()[since:].splitlines()
            if "MIGM-Shortcut: weights on" in line]


def test_models_are_loaded_and_freed_by_comfyui(comfy, models):
    graph = generate_graph(prefix="managed", seed=11)
    two = generate_graph(prefix="managed_two", seed=12)  # a second base model in the same graph
    two["5"] = {"class_type": "LoadMIGM", "inputs": {"migm_name": TINY_NOVQ, "vq_name": TINY_VQ, "device": "auto",
                                                     "dtype": "auto"}}
    two["9"] = condition_node("5", classes="1")
    two["6"] = {"class_type": "MIGMShortcutSampler",
                "inputs": {**SAMPLER, "steps": 2, "full_steps": 2, "migm": ["5", 0], "condition": ["9", 0]}}
    two["7"] = {"class_type": "PreviewAny", "inputs": {"source": ["6", 1]}}
    for node in (graph, two):
        node["1"]["inputs"]["device"] = "auto"  # ComfyUI's device: the one model management serves

    assert comfy.free(unload_models=True, free_memory=True) == 200  # from a clean slate: earlier tests' models
    time.sleep(2)  # the server's worker takes the flag as soon as it is idle
    mark = len(comfy.log_text())
    first = images_of(comfy, comfy.run(graph, timeout=120))
    comfy.run(two, timeout=120)
    assert weight_lines(comfy, mark)[0] == "weights on cpu: loaded tiny, shortcut", comfy.log_tail()
    assert "weights on cpu: loaded tiny" in weight_lines(comfy, mark)[1:]  # the second base model came in
    mark = len(comfy.log_text())
    two["3"]["inputs"]["seed"], two["6"]["inputs"]["seed"] = 21, 22  # new work, nothing cached
    comfy.run(two, timeout=120)
    # both base models (and the shortcut) stayed loaded side by side: nothing is loaded again
    assert sorted(weight_lines(comfy, mark)) == ["weights on cpu: already loaded (tiny)",
                                                 "weights on cpu: already loaded (tiny, shortcut)"]

    assert comfy.free(unload_models=True, free_memory=False) == 200
    time.sleep(2)  # the server's worker takes the flag as soon as it is idle
    mark = len(comfy.log_text())
    again = images_of(comfy, comfy.run(generate_graph(prefix="managed_after_free", seed=11) | {"1": graph["1"]},
                                       timeout=120))
    lines = weight_lines(comfy, mark)
    assert lines == ["weights on cpu: loaded tiny, shortcut"], lines  # /free had unloaded them
    assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(first, again))


# -- live previews ---------------------------------------------------------------------------


def set_preview_method(comfy, method: str) -> None:
    """What starting ComfyUI with --preview-method METHOD sets, set at run time (test harness node)."""
    comfy.run({"1": {"class_type": "HarnessPreviewMethod", "inputs": {"method": method}}}, timeout=60)


def previews_of_run(comfy, graph) -> tuple[list[Image.Image], dict]:
    with comfy.listen() as ws:
        status, body = comfy.queue(graph, client_id=ws.client_id)
        assert status == 200, body
        ws.wait_for("executing", prompt_id=body["prompt_id"], where=lambda d: d["node"] is None, timeout=120)
        frames = list(ws.previews)
    entry = comfy.wait(body["prompt_id"], timeout=60)
    images = []
    for frame in frames:
        event, kind = int.from_bytes(frame[:4], "big"), int.from_bytes(frame[4:8], "big")
        assert (event, kind) == (1, 1), (event, kind)  # PREVIEW_IMAGE, JPEG
        images.append(Image.open(io.BytesIO(frame[8:])).convert("RGB"))
    return images, entry


def test_live_previews_follow_comfyuis_preview_setting(comfy, models):
    graph = generate_graph(prefix="previews", seed=4, steps=8, full_steps=3, classes="0,1")
    try:
        set_preview_method(comfy, "auto")
        shown, entry = previews_of_run(comfy, graph)
        assert 1 <= len(shown) <= 7, len(shown)  # never after the last step: that is the result itself
        assert all(p.size == (512, 512) for p in shown), [p.size for p in shown]  # 16 px, 32x: --preview-size
        final = images_of(comfy, entry)[0]
        last = np.asarray(shown[-1].resize((TINY_SIZE, TINY_SIZE), Image.NEAREST)).astype(int)
        assert np.abs(last - final.astype(int)).mean() < 40  # the image forming is this image (JPEG-blurred)
        set_preview_method(comfy, "none")
        graph["3"]["inputs"]["seed"] = 5
        shown, _ = previews_of_run(comfy, graph)
        assert shown == []  # --preview-method none: no previews at all
    finally:
        set_preview_method(comfy, "none")  # the server's flag, as the other tests expect it
