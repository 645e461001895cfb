"""What an artist sees: ComfyUI's own frontend (1.32.9, served by the `comfy` server) in
Debian's chromium, driven by Playwright.

The server tests send API-format graphs; only the frontend turns the shipped UI workflows
into widgets, adds the seed's control widget, shows validation errors on inputs and
cancels runs. Each test opens a fresh page (a new browser context: no stored workflow),
collects the page's console errors and fails on any that is not one of the known
harmless offline ones. On failure a screenshot and the console log are saved in the
test's tmp folder, and their path is printed.

chromium comes from Debian (scripts/setup_comfyui.sh installs it with apt; MIGM_CHROMIUM names
another binary), Playwright from requirements-dev.txt; `playwright install` is never used:
it downloads a browser of its own.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from comfy_client import PACK_NAME, execution_error, passes_pattern, status_str
from test_nodes import (API_WORKFLOWS, DEFAULT_SHORTCUT, DEFAULTS_SHIPPED, SLOW, TINY, TINY_SC,
                        WORKFLOWS, models)  # noqa: F401 (models: the stand-in fixture)

CHROMIUM = os.environ.get("MIGM_CHROMIUM", "/usr/bin/chromium")
SETUP_HINT = "run scripts/setup_comfyui.sh (it installs Debian's chromium and the playwright package)"
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
READY = "() => window.app?.graph && window.app.vueAppReady"
EVENTS = ("execution_start", "progress", "executed", "execution_success", "execution_error",
          "execution_interrupted")

# Console errors of the frontend itself when offline (COMFYUI.md): look-ups of comfy.org,
# 404s for optional per-user files, and one TypeError on load that appears with no pack at all.
HARMLESS_404_PATHS = ("/favicon.ico", "/user.css", "/api/userdata/user.css", "/api/userdata",
                      "/api/userdata/comfy.templates.json")
HARMLESS_TEXT = ("TypeError: Cannot read properties of undefined (reading 'id')\n    at onChange",)


@pytest.fixture(scope="module")
def browser(comfy):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no browser at {CHROMIUM}: {SETUP_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is missing: {SETUP_HINT}", pytrace=False)
    # A first visit opens the template browser over a blank graph, in whichever test comes
    # first; a returning user (this stored setting) gets the default graph.
    assert comfy.post("/api/settings/Comfy.TutorialCompleted", True).status_code == 200
    with sync_playwright() as playwright:
        # root needs --no-sandbox; CI containers often have a tiny /dev/shm
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


class Page:
    """A page of the editor, with what its console said."""

    def __init__(self, page, base_url: str) -> None:
        self.page, self.base_url, self.console = page, base_url, []
        page.on("console", lambda m: self.console.append((m.type, m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda e: self.console.append(("pageerror", str(e), "")))

    def __getattr__(self, name):
        return getattr(self.page, name)

    def unexpected_errors(self, allowed: tuple[str, ...] = ()) -> list[str]:
        host = urlparse(self.base_url).netloc
        errors = []
        for kind, text, url in self.console:
            if kind not in ("error", "pageerror") or text.startswith(HARMLESS_TEXT + allowed):
                continue
            where = urlparse(url)
            if text.startswith("Failed to load resource") and (
                    where.netloc != host or where.path in HARMLESS_404_PATHS):
                continue
            errors.append(f"{text} ({url})")
        return errors

    def dialogs(self) -> list[str]:
        return self.page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")

    def close_dialog(self) -> None:
        self.page.keyboard.press("Escape")
        self.page.locator(".p-dialog").wait_for(state="detached", timeout=5_000)

    def widgets(self, node_id: int) -> dict:
        return self.page.evaluate(
            "id => Object.fromEntries(app.graph.getNodeById(id).widgets.map(w => [w.name, w.value]))", node_id)

    def set_widgets(self, node_id: int, **values) -> None:
        self.page.evaluate("""([id, values]) => {
            const node = app.graph.getNodeById(id);
            for (const [name, value] of Object.entries(values)) {
                const widget = node.widgets.find(w => w.name === name);
                if (!widget) throw new Error(`node ${id} has no widget ${name}`);
                widget.value = value;
            }
        }""", [node_id, values])

    def load(self, name: str) -> None:
        """Loads a shipped UI workflow as the page's graph (the template browser is tested once)."""
        workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
        self.page.evaluate("workflow => app.loadGraphData(workflow)", workflow)

    def progress(self, node: str) -> int:
        return max((p["value"] for p in self.events("progress") if p["node"] == node), default=0)

    def events(self, kind: str) -> list[dict]:
        return self.page.evaluate("kind => window.migmEvents.filter(e => e[0] === kind).map(e => e[1])", kind)


@pytest.fixture
def page(browser, comfy, request, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    editor = Page(context.new_page(), comfy.base_url)
    try:
        editor.goto(comfy.base_url)
        editor.wait_for_function(READY, timeout=90_000)
        editor.wait_for_function("() => app.graph._nodes.length > 0", timeout=30_000)  # the default graph
        editor.evaluate("""events => {
            window.migmEvents = [];
            for (const kind of events)
                window.comfyAPI.api.api.addEventListener(kind, e => window.migmEvents.push([kind, e.detail]));
        }""", list(EVENTS))
        yield editor
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:  # the set-up or the test failed: keep what the page showed
            try:
                editor.screenshot(path=str(tmp_path / "page.png"))
            finally:
                (tmp_path / "console.log").write_text(
                    "\n".join(f"{kind}: {text} ({url})" for kind, text, url in editor.console))
                print(f"browser artifacts: {tmp_path}/page.png, {tmp_path}/console.log")
        context.close()


def same(a, b) -> bool:
    """Equal as JSON values: a boolean only equals a boolean (Python has True == 1)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


# -- the shipped workflows, as the template browser loads them --------------------------------


def test_templates_load_with_the_values_of_their_api_twins(page, comfy):
    listed = comfy.get("/api/workflow_templates").json().get(PACK_NAME, [])
    shipped = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(listed) == shipped
    info = comfy.object_info()
    for name in shipped:
        page.get_by_role("button", name="Templates", exact=True).click()  # in the side bar
        browser_dialog = page.locator(".p-dialog", has_text="Templates")
        browser_dialog.get_by_text(PACK_NAME, exact=True).first.click()  # Extensions -> the pack's folder
        cards = browser_dialog.locator("[data-testid^='template-workflow-']")
        cards.first.wait_for()
        assert sorted(c.get_attribute("data-testid").removeprefix("template-workflow-")
                      for c in cards.all()) == shipped
        browser_dialog.get_by_test_id(f"template-workflow-{name}").click()
        browser_dialog.wait_for(state="detached")

        twin = json.loads((API_WORKFLOWS / f"{name}.json").read_text())
        page.wait_for_function("n => app.graph._nodes.length === n", arg=len(twin))
        assert page.dialogs() == [], name  # no missing-node or error dialog
        nodes = page.evaluate("""() => app.graph._nodes.map(n => ({
            id: String(n.id), type: n.type, known: n.type in LiteGraph.registered_node_types,
            broken: Boolean(n.has_errors),
            widgets: (n.widgets ?? []).map(w => ({name: w.name, value: w.value, serialize: w.serialize}))}))""")
        assert {n["id"] for n in nodes} == set(twin), name
        for node in nodes:
            expected = twin[node["id"]]
            where = (name, node["id"], node["type"])
            assert node["type"] == expected["class_type"] and node["known"] and not node["broken"], where
            widgets = {w["name"]: w for w in node["widgets"]}
            for key, value in expected["inputs"].items():
                if not isinstance(value, list):  # a link in the API form
                    assert key in widgets and same(widgets[key]["value"], value), (*where, key, widgets.get(key))
            for key, widget in widgets.items():
                if key == "control_after_generate":  # frontend-only, after the seed
                    assert widget["value"] in CONTROL_VALUES, (*where, widget)
                elif key not in expected["inputs"]:
                    assert widget["serialize"] is False, (*where, key)  # display-only, e.g. Preview Any's text
        # What the page would queue is the API twin, widgets and links (plus display-only values,
        # such as Preview Any's empty text, that the server ignores as no input of the node).
        sent = page.evaluate("async () => (await app.graphToPrompt()).output")
        for node_id, node in sent.items():
            declared = {k for part in info[node["class_type"]]["input"].values() for k in part}
            inputs = {k: v for k, v in node["inputs"].items() if k in declared}
            assert (node["class_type"], inputs) == (twin[node_id]["class_type"], twin[node_id]["inputs"]), \
                (name, node_id)
    assert page.unexpected_errors() == []


# -- running from the page ------------------------------------------------------------------


def test_generate_workflow_runs_from_the_page(page, comfy, models):
    page.load("migm_shortcut_generate")
    if not DEFAULTS_SHIPPED:
        page.set_widgets(1, migm_name=TINY)
        page.set_widgets(2, shortcut_name=TINY_SC)
    page.set_widgets(3, seed=int(time.time()))  # not a cached result: this run computes
    sampler = page.widgets(3)
    page.evaluate("app.queuePrompt(0)")  # its result is no success flag: {} node errors read as false
    page.wait_for_function("() => migmEvents.some(e => ['execution_success', 'execution_error'].includes(e[0]))",
                           timeout=300_000)
    assert page.events("execution_error") == []
    # The Save Image node shows the images; Preview Any the sampler's report.
    page.wait_for_function("() => { const images = app.graph.getNodeById(4).imgs ?? [];"
                           " return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0) }",
                           timeout=30_000)
    classes = 10 if DEFAULTS_SHIPPED else models.config.num_classes  # "all"
    per_class = page.widgets(8)["images_per_class"]  # the MIGM Classes node
    assert page.evaluate("app.graph.getNodeById(4).imgs.length") == classes * per_class
    n, b = sampler["steps"], sampler["full_steps"]
    report = page.widgets(5)["preview"]
    assert re.match(rf"full {b}/{n}, shortcut {n - b}, {passes_pattern(b, n)}", report), report
    shortcut = DEFAULT_SHORTCUT if DEFAULTS_SHIPPED else TINY_SC
    assert f"; shortcut {shortcut} on " in report
    assert page.widgets(3)["report"] == report  # and on the sampler node itself (web/js/report_on_node.js)
    assert page.dialogs() == []
    assert page.unexpected_errors() == []


def test_a_bad_step_setting_is_shown_once_on_the_input_at_fault(page, comfy):
    page.load("migm_shortcut_generate")
    steps = page.widgets(3)["steps"]
    cases = (
        (dict(full_steps=steps + 4), "full_steps",
         f"full steps B={steps + 4} must be between 1 and the number of steps N={steps}"),
        (dict(full_steps=4, full_step_list="0,5,3"), "full_step_list",
         "full-step list [0, 5, 3] must be strictly increasing"),
    )
    for values, at_fault, words in cases:
        page.set_widgets(3, **values)
        page.evaluate("app.queuePrompt(0)")
        page.locator(".p-dialog").first.wait_for()
        [dialog] = page.dialogs()
        assert dialog.count(words) == 1, dialog
        assert dialog.count("Custom validation failed") == 1, dialog
        if at_fault == "full_steps":
            assert f"Lower 'full_steps' to at most 'steps' ({steps})" in dialog
        ringed = page.evaluate("() => app.graph.getNodeById(3).inputs.filter(i => i.hasErrors).map(i => i.name)")
        assert ringed == [at_fault]
        page.close_dialog()
    # The frontend logs the refused prompt itself: a 400 from /api/prompt and the error it raised.
    assert page.unexpected_errors(allowed=("PromptExecutionError: Prompt execution failed",
                                           "Failed to load resource: the server responded with a status of 400")) == []


def test_cancel_from_the_page_interrupts_the_run(page, comfy, models):
    page.load("migm_shortcut_generate")
    page.evaluate("() => app.graph.remove(app.graph.getNodeById(2))")  # the slow base has no shortcut
    page.set_widgets(1, migm_name=SLOW, device="cpu")
    page.set_widgets(8, classes="0")
    page.set_widgets(3, steps=1000, full_steps=1000, seed=int(time.time()))
    page.evaluate("app.queuePrompt(0)")  # its result is no success flag: {} node errors read as false
    page.wait_for_function("() => migmEvents.some(e => e[0] === 'progress' && e[1].node === '3' && e[1].value >= 2)",
                           timeout=120_000)
    clicked_at = page.progress("3")
    page.get_by_role("button", name="Cancel current run").click()  # what the Run bar's X does: POST /interrupt
    page.wait_for_function("() => migmEvents.some(e => e[0] === 'execution_interrupted')", timeout=60_000)
    [interrupted] = page.events("execution_interrupted")
    stopped_at = page.progress("3")
    page.wait_for_timeout(1000)
    assert page.progress("3") == stopped_at  # no step after the interruption
    # Stopped long before the end; "within one step" is test_nodes.py's, where no click and no
    # page sit between the progress seen and the interrupt sent.
    assert clicked_at <= stopped_at < 1000 // 2, (clicked_at, stopped_at)
    entry = comfy.wait(interrupted["prompt_id"], timeout=30)
    assert status_str(entry) == "error" and execution_error(entry)["type"] == "execution_interrupted"
    assert page.events("execution_error") == []
    assert page.unexpected_errors() == []
