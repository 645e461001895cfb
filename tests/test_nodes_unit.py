"""The node adapters' plain-Python parts, without a ComfyUI server.

The pack folder is imported the way ComfyUI imports it (a package under a path-like
name, so only relative imports reach its code); outside ComfyUI its ``__init__.py``
registers nothing. The real-host tier is tests/host/test_nodes.py.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.tiny import tiny_migm

ROOT = Path(__file__).resolve().parents[1]
PACK = "migm_pack_under_test"


def import_pack():
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]


@pytest.fixture(scope="module")
def options():
    import_pack()
    return importlib.import_module(f"{PACK}.nodes.options")


def test_pack_imports_outside_comfyui():
    pack = import_pack()
    assert pack.WEB_DIRECTORY == "./web"
    assert not hasattr(pack, "comfy_entrypoint")  # nothing registered without the host
    assert (ROOT / "web" / "docs").is_dir()


def test_custom_plan_uses_steps_and_full_steps(options):
    plan = options.step_plan("custom", 32, 12)
    assert (plan.steps, plan.full_steps, plan.plain) == (32, 12, False)
    assert options.step_plan("custom", 8, 8).full_steps == 8  # B = N: all full, the library's plain case


def test_explicit_list_replaces_full_steps(options):
    plan = options.step_plan("custom", 10, 99, " 0, 4,7 ")
    assert plan.full_steps == [0, 4, 7]
    assert options.step_plan("custom", 10, 3, "   ").full_steps == 3  # blank: the list is not used


@pytest.mark.parametrize("args, words", [
    (("custom", 8, 12), "full steps B=12 must be between 1 and the number of steps N=8"),
    (("custom", 8, 0), "full_steps: Value 0 smaller than min of 1"),
    (("custom", 0, 1), "steps: Value 0 smaller than min of 1"),
    (("custom", 5000, 1), "steps: Value 5000 bigger than max of 4096"),
    (("custom", 8, 3, "0,5,3"), "full_step_list: full-step list [0, 5, 3] must be strictly increasing"),
    (("custom", 8, 3, "1,4"), "must start at 0"),
    (("custom", 8, 3, "0,9"), "outside 0..7"),
    (("custom", 8, 3, "0,x"), "comma-separated integers"),
    (("turbo", 8, 3), "unknown preset 'turbo'"),
])
def test_bad_step_settings_say_what_is_wrong(options, args, words):
    with pytest.raises(ValueError) as failed:
        options.step_plan(*args)
    assert words in str(failed.value)


def test_presets(options):
    off = options.step_plan(options.OFF, 20, 99, "garbage")  # 'off' keeps N, ignores B and the list
    assert (off.steps, off.plain) == (20, True)
    paper = options.step_plan("MaskGIT paper N=32 B=12", 3, 99, "garbage")
    assert (paper.steps, paper.full_steps) == (32, 12)
    assert [options.step_plan(f"DiMOO T=64 B={b}", 1, 1).full_steps for b in (14, 11, 9)] == [14, 11, 9]
    assert list(options.PRESETS)[:2] == ["custom", "off (plain)"]


def test_negative_options_are_left_to_the_model(options):
    # The model applies its own recommended value to every option the node leaves at -1.
    assert options.given_options(cfg=-1, sm_temp=0.5, r_temp=-1) == {"sm_temp": 0.5}
    assert options.given_options(cfg=0) == {"cfg": 0.0}  # 0 = guidance off, kept
    tiny = tiny_migm(vqgan=False)
    got = options.family_options(tiny, cfg=-1, sm_temp=-1, r_temp=2.0, temperature=-1, schedule="cosine")
    assert got == {"r_temp": 2.0, "schedule": "cosine"}


def test_class_lists(options):
    assert options.parse_classes("all", 10) == list(range(10))
    assert options.parse_classes(" ALL ", 3) == [0, 1, 2]
    assert options.parse_classes("3", 10) == [3]
    assert options.parse_classes("0, 7,sandal , Ankle boot", 10) == [0, 7, "sandal", "Ankle boot"]
    assert options.parse_classes("2-4,9", 10) == [2, 3, 4, 9]
    assert options.parse_classes("none, 1, NONE", 10) == ["none", 1, "none"]
    with pytest.raises(ValueError, match="no class given"):
        options.parse_classes(" , ", 10)
    with pytest.raises(ValueError, match="runs backwards"):
        options.parse_classes("5-2", 10)
    with pytest.raises(ValueError, match="past the last class 9"):
        options.parse_classes("0-99999999", 10)  # refused before it is expanded


def test_prompts_and_batches(options):
    assert options.parse_prompts("a red cat\n\n  a blue dog  \n") == ["a red cat", "a blue dog"]
    with pytest.raises(ValueError, match="no prompt given"):
        options.parse_prompts(" \n ")
    assert options.repeat_each([0, 7], 2) == [0, 0, 7, 7]
    assert options.default_first(["a", "b", "fmnist"], "fmnist") == ["fmnist", "a", "b"]
    assert options.default_first(["a", "b"], "fmnist") == ["a", "b"]


def test_output_folder_stays_inside(options, tmp_path):
    assert options.output_folder(tmp_path, " traj/run1 ") == tmp_path / "traj" / "run1"
    for bad in ("", ".", "./", "../x", "a/../../x", "/etc/x"):
        with pytest.raises(ValueError, match="must name a folder under"):
            options.output_folder(tmp_path, bad)


def test_loaded_models_keeps_the_last_and_frees_before_loading():
    import_pack()
    cache = importlib.import_module(f"{PACK}.nodes.cache").LoadedModels(size=1)
    loads, alive_at_load = [], []

    def loader(name):
        def load():
            alive_at_load.append(len(cache._items))
            loads.append(name)
            return object()
        return load

    a = cache.get(("a", 1.0), loader("a"))
    assert cache.get(("a", 1.0), loader("a")) is a
    cache.get(("b", 1.0), loader("b"))
    cache.get(("a", 2.0), loader("a"))  # same file, new modification time: read again
    assert loads == ["a", "b", "a"] and alive_at_load == [0, 0, 0]


def test_workflow_files_pair_up():
    """Offline half of the UI/API agreement (the host test also checks widget order)."""
    ui_files = sorted((ROOT / "workflows").glob("*.json"))
    assert len(ui_files) >= 3
    for path in ui_files:
        ui = json.loads(path.read_text())
        api = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
        assert {"nodes", "links", "version"} <= set(ui)
        assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
        link_ids = {link[0] for link in ui["links"]}
        for link_id, source, slot, target, target_slot, kind in ui["links"]:
            node = next(n for n in ui["nodes"] if n["id"] == target)
            wired = node["inputs"][target_slot]
            assert wired["link"] == link_id and api[str(target)]["inputs"][wired["name"]] == [str(source), slot]
        for node in ui["nodes"]:
            for out in node["outputs"]:
                assert set(out["links"]) <= link_ids
        assert ui["last_link_id"] == max(link_ids) and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])


def test_family_options_keep_only_the_family_inputs(options):
    from types import SimpleNamespace

    inputs = dict(cfg=-1, sm_temp=0.5, r_temp=-1, temperature=0.7, schedule="cosine")
    maskgit = SimpleNamespace(family="maskgit", info={})
    assert options.family_options(maskgit, **inputs) == {"sm_temp": 0.5, "schedule": "cosine"}
    dimoo = SimpleNamespace(family="dimoo", info={})
    assert options.family_options(dimoo, **inputs) == {"temperature": 0.7}


def test_the_report_names_the_step_inputs_a_preset_overrides(options):
    assert options.unused_step_inputs("custom") == []
    assert options.unused_step_inputs("custom", "0,3,5") == ["full_steps"]  # the list replaces B
    assert options.unused_step_inputs("custom", "  ") == []
    assert options.unused_step_inputs(options.OFF) == ["full_steps"]  # off keeps N, runs every step in full
    assert options.unused_step_inputs("MaskGIT paper N=32 B=12", "0,4") == ["steps", "full_steps", "full_step_list"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_previews_keep_within_their_time_budget():
    import_pack()
    previews = importlib.import_module(f"{PACK}.nodes.previews")
    for step_s, preview_s in ((0.010, 0.0005), (0.010, 0.030), (0.002, 0.050)):  # cheap and costly previews
        clock = FakeClock()
        pacer = previews.PreviewPacer(budget=0.1, clock=clock)
        shown = []
        for step in range(200):
            clock.now += step_s  # the step itself
            if pacer.due(step, 200):
                pacer.timed(lambda: setattr(clock, "now", clock.now + preview_s))
                shown.append(step)
        sampling = 200 * step_s
        # within budget, up to the one preview made before its cost was known
        assert pacer.spent <= 0.1 * sampling + preview_s, (step_s, preview_s, pacer.spent)
        assert shown and shown[0] == 0 and 199 not in shown  # the first right away, none after the last step
        if preview_s < 0.1 * step_s:
            assert len(shown) == 199  # cheap enough: after every step
        else:
            assert pacer.spent >= 0.1 * sampling - 2 * preview_s  # costly: spaced, but the budget is used


def test_preview_image_enlarges_tiny_images_pixel_for_pixel():
    import_pack()
    previews = importlib.import_module(f"{PACK}.nodes.previews")
    import numpy as np
    import torch

    image = torch.rand(28, 28, 3)
    picture = previews.preview_image(image, 512)
    assert picture.size == (504, 504)  # 18x: the largest whole factor within 512 px
    pixels = np.asarray(picture)
    assert (pixels[::18, ::18] == (image.numpy() * 255 + 0.5).astype(np.uint8)).all()
    assert previews.preview_image(torch.rand(512, 768, 3), 512).size == (768, 512)  # large ones as they are
