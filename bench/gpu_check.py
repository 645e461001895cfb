"""The GPU machine's one command: CUDA tests and full-size timings of both families, one JSON + one table.

    python bench/gpu_check.py --out DIR                  # one H200: a few minutes (--time-budget 420 s)
    python bench/gpu_check.py --smoke --out DIR          # the same code paths on the CPU, tiny configs, seconds
    python bench/gpu_check.py --sections maskgit,dimoo --out DIR

Needs torch, safetensors, einops, numpy (pytest optional). Sections; each records its own
failure and the script goes on to the next; exit status 1 if any failed or ran out of budget:

  cuda_tests  tests/test_gpu.py (marked gpu): `pytest -m gpu` in a subprocess when pytest is
              installed, else its test functions called directly (``runner`` says which).
  maskgit     MaskGIT-512 architecture (random weights, 32x32 tokens, bf16, guidance 2.8), batch
              1, 8, 32: plain N=32 vs shortcut B=12 and B=9 (published shortcut architecture,
              ShortcutConfig defaults, random weights).
  dimoo       Lumina-DiMOO 8B architecture (LLaDAConfig defaults, random bf16 weights made on the
              GPU) with the published shortcut architecture, 1024x1024, T=64, cfg 4: plain vs
              B=14, 11, 9.
  maskgit_compiled
              the maskgit section at batch 1 after ``compile_sampling`` (torch.compile;
              reduce-overhead, i.e. CUDA graphs, on CUDA), one full warm-up run first so the
              timed runs pay no compile.

Figures per setting: s/image (the sampler's own ``stats.seconds`` / batch, median of the
repeats), base passes and shortcut steps (``stats``), c = median shortcut step / median full
step (a per-step timer that synchronizes, so MaskGIT times it in one extra run), speed-up
over plain, the N/B limit and the fraction of it reached, the ideal N/(B+(N-B)c), and peak
memory (``torch.cuda.max_memory_allocated``, reset before each setting, resident weights
included; DiMOO's plain runs happen before the shortcut exists). ``--smoke`` swaps in tiny
configs (tests/tiny.py, LLADA_PRESETS["tiny"]) and the CPU; its figures check the wiring only.
Writes DIR/gpu_check.json and DIR/gpu_check.md after every section, so a killed run keeps
what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.step_timer import StepTimer, peak_memory_mib, reset_peak_memory, speedup_figures  # noqa: E402

SECTIONS = ("cuda_tests", "maskgit", "dimoo", "maskgit_compiled")
DEVICE_ENV = "MIGM_GPU_TEST_DEVICE"  # tests/test_gpu.py: where its tests run (default cuda)


def plans(smoke: bool) -> dict:
    """What each section measures; smoke keeps the structure and shrinks the models and step counts."""
    from shortcut_core import MASKGIT_PRESETS, ShortcutConfig
    from shortcut_core.dimoo.config import LLADA_PRESETS

    if smoke:
        from tests.tiny import TINY_MASKGIT, TINY_SHORTCUT

        chosen = {
            "maskgit": dict(name="tiny MaskGIT (tests/tiny.py)", config=TINY_MASKGIT, shortcut=TINY_SHORTCUT,
                            steps=8, budgets=(3, 2), batches=(1, 2, 4), repeats=1, dtype=torch.float32),
            "dimoo": dict(name="tiny LLaDA (LLADA_PRESETS['tiny'])", config=LLADA_PRESETS["tiny"], size=64, steps=8,
                          budgets=(4, 3, 2), repeats=1, prompt_tokens=8, dtype=torch.float32),
        }
    else:
        chosen = {
            "maskgit": dict(name="MaskGIT-512 (MASKGIT_PRESETS['maskgit-imagenet512'])",
                            config=MASKGIT_PRESETS["maskgit-imagenet512"], shortcut=ShortcutConfig(), steps=32,
                            budgets=(12, 9), batches=(1, 8, 32), repeats=3, dtype=torch.bfloat16),
            "dimoo": dict(name="Lumina-DiMOO 8B (LLaDAConfig defaults)", config=LLADA_PRESETS["full"], size=1024,
                          steps=64, budgets=(14, 11, 9), repeats=1, prompt_tokens=64, dtype=torch.bfloat16),
        }
    chosen["maskgit_compiled"] = {**chosen["maskgit"], "batches": (1,), "compile": True}
    return chosen


class OutOfBudget(Exception):
    pass


class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.monotonic(), budget

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.budget - self.elapsed()

    def check(self, before: str) -> None:
        if self.remaining() <= 0:
            raise OutOfBudget(f"--time-budget {self.budget:g} s spent before {before}")


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- cuda_tests ------------------------------------------------------------------------------

def run_tests_with_pytest(device: str | None, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "tests/test_gpu.py"]
        env = {k: v for k, v in os.environ.items() if k != DEVICE_ENV}
        if device:
            env[DEVICE_ENV] = device
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
        if not xml.is_file():
            raise RuntimeError(f"pytest exited {proc.returncode} without a report: {(proc.stdout + proc.stderr)[-800:]}")
        tests = []
        for case in ET.parse(xml).iter("testcase"):
            bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
            outcome = "passed" if bad is None else {"failure": "failed", "error": "error"}.get(bad.tag, "skipped")
            message = "" if bad is None else (bad.get("message") or bad.text or "").strip()
            tests.append(dict(name=case.get("name"), outcome=outcome, seconds=float(case.get("time", 0)),
                              message=message[:400], details=None if bad is None else (bad.text or "")[-2000:]))
    if not tests:
        raise RuntimeError(f"pytest collected no gpu test (exit {proc.returncode}): {proc.stdout[-800:]}")
    return tests


def run_tests_directly(device: str | None) -> list[dict]:
    saved = os.environ.pop(DEVICE_ENV, None)
    if device:
        os.environ[DEVICE_ENV] = device
    try:
        module = importlib.import_module("tests.test_gpu")
        tests = []
        for name, fn in list(vars(module).items()):
            if not (name.startswith("test_") and callable(fn)):
                continue
            t = time.perf_counter()
            try:
                fn()
                outcome, message, details = "passed", "", None
            except Exception as exc:  # noqa: BLE001 - a failing test is a result, not a crash
                outcome, message, details = "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()[-2000:]
            tests.append(dict(name=name, outcome=outcome, seconds=time.perf_counter() - t, message=message[:400],
                              details=details))
        return tests
    finally:
        os.environ.pop(DEVICE_ENV, None)
        if saved is not None:
            os.environ[DEVICE_ENV] = saved


def cuda_tests_section(rec: dict, smoke: bool, clock: Clock, use_pytest: bool) -> None:
    # Smoke runs the tests' code on the CPU through their own switch; a real check never does.
    device = "cpu" if smoke else None
    have_pytest = importlib.util.find_spec("pytest") is not None
    use_pytest = use_pytest and have_pytest
    rec.update(runner="pytest -m gpu (subprocess)" if use_pytest else
               f"test functions called directly ({'--no-pytest' if have_pytest else 'pytest not installed'})",
               device="cpu" if smoke else "cuda")
    if smoke:
        rec["note"] = ("smoke: no CUDA used; the gpu tests' code ran on the CPU (CUDA-vs-CPU comparisons compare "
                       "the CPU with itself)")
    rec["tests"] = run_tests_with_pytest(device, clock.remaining()) if use_pytest else run_tests_directly(device)
    bad = [t["name"] for t in rec["tests"] if t["outcome"] != "passed"]
    if bad:
        raise AssertionError(f"{len(bad)} of {len(rec['tests'])} gpu tests did not pass: {', '.join(bad)}")


# -- timings ---------------------------------------------------------------------------------

def measure(run, b: int, steps: int, repeats: int, device, separate_timer: bool, **extra) -> dict:
    """One setting: ``repeats`` timed runs, per-step times, peak memory; figures from the sampler's stats."""
    reset_peak_memory(device)
    timer = StepTimer(device)
    results = []
    for rep in range(repeats):
        timer.start()
        results.append(run(b, seed=rep, callback=None if separate_timer else timer))
    if separate_timer:  # its synchronization per step would slow small steps down: keep it out of s/image
        timer.start()
        run(b, seed=repeats, callback=timer)
    stats = results[-1].stats
    seconds = statistics.median(r.stats.seconds for r in results)
    return dict(extra, setting="plain" if b == steps else f"shortcut B={b}", N=steps, B=b, seconds=seconds,
                s_per_image=seconds / stats.batch, base_passes=stats.base_passes, memo_passes=stats.memo_passes,
                plain_base_passes=stats.plain_base_passes, shortcut_steps=stats.shortcut_steps,
                full_step_indices=stats.full_step_indices, full_step_s=timer.median(True),
                shortcut_step_s=timer.median(False), peak_mib=peak_memory_mib(device))


def add_speedups(rows: list[dict]) -> None:
    plain = rows[0]
    plain.update(speedup=1.0, limit=1.0)
    for r in rows[1:]:
        speedup_figures(r, plain, r["N"])
        r["limit"] = r["N"] / r["B"]


def maskgit_section(rec: dict, plan: dict, device, clock: Clock) -> None:
    from shortcut_core import MaskGIT, MaskGITMIGM, generate
    from shortcut_core.compiled import compile_sampling

    c, steps, dtype = plan["config"], plan["steps"], plan["dtype"]
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no CPU init of the 0.2 B weights
        model = MaskGIT(c)
    migm = MaskGITMIGM(model, None, name="maskgit-random").to(device=device, dtype=dtype)
    shortcut = migm.build_shortcut(plan["shortcut"]).to(dtype=dtype).eval()
    rec.update(architecture=plan["name"], tokens=f"{c.grid}x{c.grid}", dtype=str(dtype).removeprefix("torch."),
               cfg=2.8, base_params=params(model), shortcut_params=params(shortcut), steps=steps,
               budgets=list(plan["budgets"]), batches=list(plan["batches"]), repeats=plan["repeats"], results=[])
    if plan.get("compile"):
        rec["compile_mode"] = compile_sampling(migm, shortcut)
    for batch in plan["batches"]:
        classes = [i % c.num_classes for i in range(batch)]

        def run(b, seed, callback=None, n=steps):
            return generate(migm, classes, steps=n, full_steps=b, shortcut=shortcut if b < n else None, seed=seed,
                            callback=callback, cfg=2.8, decode=False)

        clock.check(f"MaskGIT batch {batch}")
        run(1, seed=99, n=2)  # warm-up: kernels and allocator for this batch, both step kinds
        if plan.get("compile"):
            t = time.perf_counter()
            run(min(plan["budgets"]), seed=98)  # every step shape of a full run, compiled (and captured) once
            rec["compile_seconds"] = time.perf_counter() - t
        rows = []
        for b in (steps, *plan["budgets"]):
            clock.check(f"MaskGIT batch {batch} B={b}")
            rows.append(measure(run, b, steps, plan["repeats"], device, separate_timer=True, batch=batch))
            rec["results"].append(rows[-1])  # the same dict: a failure later keeps what was measured
            print(f"  maskgit batch {batch} {rows[-1]['setting']}: {rows[-1]['s_per_image']:.4f} s/image", flush=True)
        add_speedups(rows)
        rec["passes_per_full_step"] = (rows[0]["base_passes"] + rows[0]["memo_passes"]) // steps  # cond+uncond: one forward


def dimoo_section(rec: dict, plan: dict, device, clock: Clock) -> None:
    from bench.bench_dimoo_gpu import prompt_ids, random_init_
    from shortcut_core.dimoo.config import DiMOOShortcutConfig
    from shortcut_core.dimoo.family import DiMOOMIGM
    from shortcut_core.dimoo.llada import LLaDA
    from shortcut_core.dimoo.prompt import REFERENCE_UNCOND_IDS, token_grid
    from shortcut_core.dimoo.shortcut import DiMOOShortcut
    from shortcut_core.sampler import sample

    c, steps, dtype, size = plan["config"], plan["steps"], plan["dtype"], plan["size"]
    gen = torch.Generator(device=device).manual_seed(0)

    def build(module):
        # Cast on meta, then allocate on the device: never a float32 (or CPU) copy of 8 B weights.
        module = module.to(dtype).to_empty(device=device)
        random_init_(module, gen)
        return module.eval()

    t = time.perf_counter()
    with torch.device("meta"):
        base = LLaDA(c)
    migm = DiMOOMIGM(build(base), None, None, name="lumina-dimoo-random", fingerprint="random")
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the random init is asynchronous: count it in build_seconds
    rows, cols = token_grid(size, size)
    rec.update(architecture=plan["name"], size=f"{size}x{size}", image_tokens=rows * cols,
               dtype=str(dtype).removeprefix("torch."), cfg=4.0, base_params=params(base),
               build_seconds=time.perf_counter() - t, steps=steps, budgets=list(plan["budgets"]),
               repeats=plan["repeats"], prompt_tokens=plan["prompt_tokens"], results=[])
    prompt = prompt_ids(plan["prompt_tokens"], 0)
    results = rec["results"]
    shortcut = None

    def run(b, seed, callback=None, n=steps):
        return sample(migm, prompt, steps=n, full_steps=b, shortcut=shortcut if b < n else None, seed=seed,
                      callback=callback, cfg=4.0, temperature=1.0, height=size, width=size,
                      uncond_ids=list(REFERENCE_UNCOND_IDS), decode=False)

    # A step of the 8 B model takes tens of milliseconds at least, so the timer's per-step
    # synchronization costs nothing measurable: one run per setting gives s/image and c.
    clock.check("DiMOO plain")
    run(2, seed=99, n=2)  # warm-up
    results.append(measure(run, steps, steps, plan["repeats"], device, separate_timer=False, batch=1))
    print(f"  dimoo plain: {results[-1]['s_per_image']:.2f} s/image", flush=True)
    rec["passes_per_full_step"] = (results[0]["base_passes"] + results[0]["memo_passes"]) // steps  # separate forwards
    with torch.device("meta"):  # made after the plain runs, so their peak memory does not hold it
        shortcut = DiMOOShortcut(DiMOOShortcutConfig.for_base(c))
    shortcut = build(shortcut).bind(migm.model.wte)
    rec["shortcut_params"] = params(shortcut)
    run(1, seed=99, n=2)  # warm-up of the shortcut step
    for b in plan["budgets"]:
        clock.check(f"DiMOO B={b}")
        results.append(measure(run, b, steps, plan["repeats"], device, separate_timer=False, batch=1))
        print(f"  dimoo B={b}: {results[-1]['s_per_image']:.2f} s/image", flush=True)
    add_speedups(results)


# -- report ----------------------------------------------------------------------------------

def machine() -> dict:
    info = dict(python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
                cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(), cpus=os.cpu_count())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version())
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
    try:
        info["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    return info


def finite(obj):
    """NaN/inf -> None, so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def fmt(v, digits: int = 3, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return (f"{v:.{digits}f}" if isinstance(v, float) else str(v)) + unit


def timing_table(rows: list[dict], first: str | None, n: str = "N") -> list[str]:
    head = ([first] if first else []) + ["setting", "s/image", "speed-up", "base passes", "shortcut steps", "c",
                                         f"{n}/B", f"of {n}/B", "ideal", "of ideal", "peak GiB"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([str(r.get(first))] if first else []) + [
            r["setting"], fmt(r["s_per_image"], 4), fmt(r.get("speedup"), 2, "x"),
            str(r["base_passes"]) + (f" +{r['memo_passes']} from memory" if r.get("memo_passes") else ""),
            str(r["shortcut_steps"]), fmt(r.get("c")), fmt(r.get("limit"), 2, "x"), fmt(r.get("of_limit"), 2),
            fmt(r.get("ideal"), 2, "x"), fmt(r.get("of_ideal"), 2), fmt(r["peak_mib"] / 1024, 2)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check{' (SMOKE: tiny configs on the CPU; figures check the wiring, not speed)' if report['smoke'] else ''}",
             "", f"- date: {report['date']}", f"- command: `{report['command']}`",
             f"- machine: {m['device']}, torch {m['torch']} (CUDA {m['cuda']}), Python {m['python']}, {m['platform']}"
             + (f", git {m['git']}" if m.get("git") else ""),
             f"- result: **{'all sections passed' if report['ok'] else 'FAILED'}** in {report['seconds']:.1f} s", ""]
    for name, rec in report["sections"].items():
        lines += [f"## {name}: {rec['status']} ({rec.get('seconds', 0):.1f} s)", ""]
        if rec.get("error"):
            lines += [f"**{rec['status']}**: `{rec['error']}`", ""]
        if name == "cuda_tests":
            lines += [f"runner: {rec.get('runner')}; device: {rec.get('device')}", ""]
            if rec.get("note"):
                lines += [rec["note"], ""]
            if rec.get("tests"):
                lines += ["| test | outcome | s | message |", "|---|---|---|---|"]
                lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']:.2f} | {t['message'][:160].replace('|', '/')} |"
                          for t in rec["tests"]]
                lines.append("")
            continue
        if "architecture" in rec:
            desc = {k: rec.get(k) for k in ("architecture", "tokens", "size", "dtype", "cfg", "steps", "repeats",
                                            "base_params", "shortcut_params", "passes_per_full_step",
                                            "compile_mode", "compile_seconds") if rec.get(k) is not None}
            lines += ["; ".join(f"{k} {v}" for k, v in desc.items()), ""]
        if rec.get("results"):
            lines += timing_table(rec["results"], *(("batch", "N") if name.startswith("maskgit") else (None, "T"))) + [""]
    lines += ["c = median shortcut step / median full step; of N/B = speed-up / (N/B); ideal = N/(B+(N-B)c); "
              "peak = torch.cuda.max_memory_allocated per setting (on a CPU: the process's peak RSS, never reset).", ""]
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(finite(report), indent=2))
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--smoke", action="store_true", help="tiny configs on the CPU: the same code paths in seconds")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--time-budget", type=float, help="seconds; settings not started by then are left out and the "
                                                     "section marked incomplete (default 420, smoke 120)")
    p.add_argument("--no-pytest", action="store_true", help="call the gpu test functions directly even with pytest")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not chosen or set(chosen) - set(SECTIONS):
        p.error(f"--sections takes a comma list of {', '.join(SECTIONS)}, got {args.sections!r}")

    clock = Clock(args.time_budget or (120 if args.smoke else 420))
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny tensors: threads cost more than they give, and CI CPUs are shared
    else:
        device = torch.device("cuda")
    report = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  command=shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])]),
                  smoke=args.smoke, machine=machine(), time_budget_s=clock.budget, sections={}, ok=False, seconds=0.0)
    for name in chosen:
        rec = report["sections"][name] = {"status": "running"}
        print(f"[{clock.elapsed():6.1f} s] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            clock.check(name)
            if name == "cuda_tests":
                cuda_tests_section(rec, args.smoke, clock, use_pytest=not args.no_pytest)
            else:
                if device.type == "cuda" and not torch.cuda.is_available():
                    raise RuntimeError(f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                                       f"--smoke runs the tiny CPU version")
                plan = plans(args.smoke)[name]
                (dimoo_section if name == "dimoo" else maskgit_section)(rec, plan, device, clock)
            rec["status"] = "passed"
        except OutOfBudget as exc:
            rec.update(status="incomplete", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one section's failure must not stop the others
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
        rec["seconds"] = time.perf_counter() - t
        # The section's models die with its frame; give their memory back before the next one.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"[{clock.elapsed():6.1f} s] {name}: {rec['status']}" + (f" ({rec['error']})" if rec.get("error") else ""),
              flush=True)
        report["ok"] = all(r["status"] == "passed" for r in report["sections"].values())
        report["seconds"] = clock.elapsed()
        write(report, args.out)
    print(markdown(report))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
