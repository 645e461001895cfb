"""This project's sampler against the reference's own ``sample_shortcut``, side by side, same weights.

    python bench/bench_reference.py --reference PATH/MIGM-Shortcut/MaskGIT-Shortcut --grid 16

``--reference`` is the ``MaskGIT-Shortcut`` folder of the public reference repository
(``Kaiwen-Zhu/MIGM-Shortcut``); nothing of it is part of this project. The script needs
its ``Network/transformer.py``, ``Network/shortcut_model.py`` and the ``MaskGIT`` class of
``Trainer/vit.py`` (only ``adap_sche`` and ``sample_shortcut`` run). The imports that
sampling never uses (the trainer base class, the taming VQGAN, omegaconf, torchvision)
are replaced by empty stand-ins when they are missing, and the final decode returns the
tokens: both sides are timed on tokens only.

What it does, in one process:

1. builds the reference's MaskGIT-512 transformer (24 layers, width 768) at ``--grid`` and
   its published shortcut configuration (one block, bottleneck width 384, 16 heads), seeded;
2. saves both in the published formats (``model_state_dict`` pickle, shortcut state dict)
   and loads them with ``load_migm``/``load_shortcut``: identical weights by construction;
3. checks that both compute the same final-layer features (base model and shortcut) on a
   random state before timing anything;
4. times, round after round and setting after setting, the reference's
   ``sample_shortcut`` and this project's ``generate`` (guidance 2.8, r_temp 7, arccos,
   N steps, B full steps placed as the paper does; B = N is plain sampling), reporting
   medians and the ratio reference / project. ``project`` is the default sampler (step 0
   from memory once a class has been seen); ``project (computed)`` computes step 0 in
   every run as the reference does.

``--dtypes float32,bfloat16`` adds this project in bf16 (``load_migm(..., dtype="bf16")``,
the same files) and, as its like-for-like opponent, the reference under
``torch.autocast("cpu", dtype=torch.bfloat16)``: the reference's own autocast is CUDA-only,
so on a CPU it runs fp32 unless a user wraps it so. bf16 is checked against the reference's
fp32 features by relative error (bf16 keeps about 3 significant digits), not by 1e-3.

The sampling randomness differs (the reference draws from numpy and torch's global
generators), so the two sides sample different images; the amount of work per step is the
same by construction (same schedule, same full steps).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_timer import write_json  # noqa: E402

# modules ``Trainer/vit.py`` imports that sampling never touches: (module, attribute it takes)
UNUSED_IMPORTS = {
    "Trainer.trainer": "Trainer",
    "Network.Taming.models.vqgan": "VQModel",
    "omegaconf": "OmegaConf",
    "torchvision.utils": None,
}


def stand_in(module: str, attribute: str | None) -> None:
    """An empty ``module`` (its parents too, where they cannot be imported) holding an empty class."""
    import importlib

    parent, _, child = module.rpartition(".")
    if parent:
        try:
            importlib.import_module(parent)
        except Exception:
            stand_in(parent, None)
    empty = types.ModuleType(module)
    if attribute:
        setattr(empty, attribute, type(attribute, (), {"__init__": lambda self, *a, **k: None}))
    sys.modules[module] = empty
    if parent:
        setattr(sys.modules[parent], child, empty)


def import_reference(folder: Path):
    """The reference's MaskGIT trainer class, transformer and shortcut, imported from ``folder``."""
    import importlib

    for name in ("Network/transformer.py", "Network/shortcut_model.py", "Trainer/vit.py"):
        if not (folder / name).is_file():
            raise SystemExit(f"{folder / name} not found: pass --reference the MaskGIT-Shortcut folder of "
                             f"Kaiwen-Zhu/MIGM-Shortcut")
    sys.path.insert(0, str(folder))
    for module, attribute in UNUSED_IMPORTS.items():
        try:
            importlib.import_module(module)
        except Exception:  # absent or broken (a torchvision built for another torch): sampling never calls it
            stand_in(module, attribute)
    transformer = importlib.import_module("Network.transformer")
    shortcut_model = importlib.import_module("Network.shortcut_model")
    vit = importlib.import_module("Trainer.vit")
    return vit.MaskGIT, transformer.MaskTransformer, shortcut_model.MaskGITShortcut


class TokensOnly:
    """The reference decodes at the end of ``sample_shortcut``; both sides are timed on tokens."""

    @staticmethod
    def decode_code(code):
        return code


@contextlib.contextmanager
def cpu_events():
    """``sample_shortcut`` times itself with CUDA events; on a CPU they do nothing."""
    import torch

    if torch.cuda.is_available():
        yield
        return

    class Event:
        def __init__(self, *a, **k):
            pass

        def record(self, *a):
            pass

        def elapsed_time(self, other):
            return 0.0

    saved = torch.cuda.Event, torch.cuda.synchronize
    torch.cuda.Event, torch.cuda.synchronize = Event, lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.Event, torch.cuda.synchronize = saved


def build_pair(args, reference_classes, workdir: Path, dtypes=("float32",)):
    """The reference's models and this project's in each of ``dtypes`` ({dtype: (migm, shortcut)}),
    loaded from the same published-format files."""
    import torch

    from shortcut_core import MASKGIT_PRESETS, load_migm, load_shortcut

    trainer_cls, transformer_cls, shortcut_cls = reference_classes
    torch.manual_seed(0)
    vit = transformer_cls(img_size=args.grid * 16, hidden_dim=768, codebook_size=1024, f_factor=args.grid,
                          depth=24, heads=16, mlp_dim=3072, dropout=0.1).eval()
    ref_shortcut = shortcut_cls(hidden_dim=768, n_block=1, embed_t=True, bottleneck_ratio=2, tok_emb=vit.tok_emb,
                                pos_emb=vit.pos_emb, num_heads=16, dropout=0.0).eval()
    torch.save({"model_state_dict": vit.state_dict(), "iter": 0, "global_epoch": 0}, workdir / "MaskGIT.pth")
    torch.save(ref_shortcut.state_dict(), workdir / "shortcut.pth")
    config = replace(MASKGIT_PRESETS["maskgit-imagenet512"], grid=args.grid)  # a bare pickle does not say its heads
    ours = {}
    for dtype in dtypes:
        migm = load_migm(workdir / "MaskGIT.pth", name=f"maskgit-random-grid{args.grid}", config=config,
                         dtype=getattr(torch, dtype))
        ours[dtype] = migm, load_shortcut(workdir / "shortcut.pth", migm)

    ref = trainer_cls.__new__(trainer_cls)  # its __init__ loads a VQGAN and data: sampling needs none of it
    ref.args = argparse.Namespace(device=torch.device("cpu"), mask_value=1024)
    ref.vit, ref.ae, ref.patch_size, ref.codebook_size = vit, TokensOnly(), args.grid, 1024
    return ref, ref_shortcut, ours


# --dtypes names -> the tag of their variants ("" for the reference's own CPU precision)
PRECISIONS = {"float32": "", "bfloat16": "bf16"}

# Largest relative feature error (norm of the difference / norm of the reference's feature)
# a bf16 copy may show: bf16 rounds each value to about 3 significant digits, which over 24
# layers gives about 1e-2; a wrong computation gives order 1.
BF16_RELATIVE_ERROR = 0.05


def check_same_computation(ref_vit, ref_shortcut, migm, shortcut, grid: int) -> tuple[float, float]:
    """(largest absolute, largest relative) feature difference between the two sides (base forward,
    then one shortcut step, both fed the reference's fp32 feature); refuses to go on when they differ."""
    import torch

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 1025, (2, grid, grid), generator=g)
    labels = torch.tensor([3, 3])
    drop = torch.tensor([False, True])
    with torch.no_grad():
        _, ref_feat = ref_vit(tokens, labels, drop, ret_last_feat=True)
        ours = migm.model.features(tokens.flatten(1), torch.tensor([3, migm.model.config.null_class])).float()
        pairs = [(ref_feat, ours)]
        new_map = torch.zeros(2, grid * grid + 1, dtype=torch.bool)
        new_map[:, torch.randperm(grid * grid, generator=g)[:7]] = True
        new_ids = torch.randint(0, 1024, (2, 7), generator=g)
        positions = new_map.nonzero()[:, 1].view(2, 7)
        ratio = torch.tensor([0.5, 0.5])
        ref_next = ref_shortcut(ref_feat, new_ids, new_map, ratio)
        pairs.append((ref_next, shortcut(ref_feat.to(migm.dtype), new_ids, positions, ratio).float()))
    return feature_agreement(pairs, migm.dtype)


def feature_agreement(pairs, dtype) -> tuple[float, float]:
    """(largest absolute, largest relative) difference of (reference, ours) feature pairs; exits when
    they differ by more than ``dtype``'s rounding explains."""
    import torch

    worst = max((a - b).abs().max().item() for a, b in pairs)
    relative = max(((a - b).norm() / a.norm()).item() for a, b in pairs)
    if (dtype == torch.float32 and worst > 1e-3) or relative > BF16_RELATIVE_ERROR:
        raise SystemExit(f"the two sides do not compute the same features in {dtype} (max difference "
                         f"{worst:.3g}, relative {relative:.3g}); timing them against each other would mean nothing")
    return worst, relative


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="the reference's MaskGIT-Shortcut folder")
    p.add_argument("--grid", type=int, default=16, help="token grid side (16: the CPU target's setting; 32 = 512 px)")
    p.add_argument("--steps", type=int, default=32, help="total steps N")
    p.add_argument("--full-steps", default="12,9", help="comma list of B (B = N: plain sampling)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; medians are reported")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-computed", action="store_true", help="leave out the 'project (computed)' variants")
    p.add_argument("--dtypes", default="float32",
                   help="comma list of float32, bfloat16: this project's precisions; bfloat16 also adds the "
                        "reference under CPU autocast bf16 (above)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    dtypes = args.dtypes.split(",")
    unknown = sorted(set(dtypes) - set(PRECISIONS))
    if unknown or not dtypes:
        p.error(f"--dtypes takes a comma list of {', '.join(PRECISIONS)}, got {args.dtypes!r}")

    import numpy as np
    import torch

    from shortcut_core import generate

    torch.set_num_threads(args.threads)
    budgets = [int(x) for x in args.full_steps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ref, ref_shortcut, ours = build_pair(args, import_reference(args.reference.resolve()), Path(tmp), dtypes)
    checks = {}
    for dtype, (migm, shortcut) in ours.items():
        checks[dtype] = check_same_computation(ref.vit, ref_shortcut, migm, shortcut, args.grid)
        print(f"same weights, same computation ({dtype}): largest feature difference {checks[dtype][0]:.2e}, "
              f"relative {checks[dtype][1]:.2e}", flush=True)

    label = 3
    labels = torch.tensor([label])

    def run_reference(b: int, seed: int, autocast: bool) -> float:
        torch.manual_seed(seed)
        np.random.seed(seed)
        start = time.perf_counter()
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with cpu_events(), precision:
            ref.sample_shortcut(nb_sample=1, labels=labels, sm_temp=1, w=2.8, randomize="linear", r_temp=7,
                                sched_mode="arccos", step=args.steps, use_shortcut=b < args.steps,
                                shortcut_model=ref_shortcut, budget=b)
        return time.perf_counter() - start

    def run_project(b: int, seed: int, dtype: str, computed: bool) -> float:
        migm, shortcut = ours[dtype]
        if computed:
            migm.base_features = migm.batched_features
        else:
            migm.__dict__.pop("base_features", None)
        res = generate(migm, [label], steps=args.steps, full_steps=b, shortcut=shortcut if b < args.steps else None,
                       seed=seed, cfg=2.8, r_temp=7.0, sm_temp=1.0, decode=False)
        passes, per_step = res.stats.base_passes + res.stats.memo_passes, res.stats.plain_base_passes // args.steps
        if passes != b * per_step:
            raise SystemExit(f"the project ran {passes} base passes at B={b}, expected {b * per_step}")
        return res.stats.seconds

    # name -> (run, the reference variant of the same precision: its like-for-like opponent)
    variants = {}
    for dtype in dtypes:
        tag = PRECISIONS[dtype]
        opponent = f"reference{tag and f' ({tag} autocast)'}"
        variants[opponent] = (lambda b, s, a=bool(tag): run_reference(b, s, a)), opponent
        variants[f"project{tag and ' ' + tag}"] = (lambda b, s, d=dtype: run_project(b, s, d, False)), opponent
        if not args.no_computed:
            variants[f"project{tag and ' ' + tag} (computed)"] = (
                lambda b, s, d=dtype: run_project(b, s, d, True)), opponent
    for b in budgets:  # warm-up: allocator, first-touch, and step 0 of this class into the memo
        for run, _ in variants.values():
            run(b, 99)
    times = {(v, b): [] for v in variants for b in budgets}
    for rep in range(args.repeats):
        for b in budgets:
            for name, (run, _) in variants.items():
                times[name, b].append(run(b, rep))
                print(f"  round {rep + 1}: {name} B={b}: {times[name, b][-1]:.2f} s", flush=True)

    print(f"\nIn one process, alternating run by run, {args.repeats} rounds, medians; {args.grid}x{args.grid} tokens, "
          f"N={args.steps}, guidance 2.8, batch 1, cpu, {args.threads} threads")
    first = next(iter(variants))  # the reference as it runs on a CPU when float32 is listed first
    print(f"{'variant':<32}{'setting':<16}{'s/image':>9}{f'{first} / it':>{max(16, len(first) + 7)}}"
          f"{'same-precision reference / it':>31}  seconds of each round (same-precision ratio, round by round)")
    rows = []
    for b in budgets:
        for name, (_, opponent) in variants.items():
            median = statistics.median(times[name, b])
            setting = "plain" if b == args.steps else f"shortcut B={b}"
            # the run right before it in the same round is its opponent's: the ratio a drifting machine spoils least
            per_round = [r / t for r, t in zip(times[opponent, b], times[name, b])]
            vs_first = statistics.median(times[first, b]) / median
            vs_opponent = statistics.median(times[opponent, b]) / median
            rows.append({"variant": name, "B": b, "seconds": median, "all_seconds": times[name, b],
                         "opponent": opponent, "speed_vs_opponent": vs_opponent, "round_ratios": per_round,
                         "first": first, "speed_vs_first": vs_first})
            print(f"{name:<32}{setting:<16}{median:>9.3f}{vs_first:>{max(16, len(first) + 7) - 1}.2f}x"
                  f"{vs_opponent:>30.2f}x  " + " ".join(f"{t:.2f}" for t in times[name, b])
                  + "  (" + " ".join(f"{x:.2f}" for x in per_round) + ")")
    if args.json:
        write_json(args.json, args, [{"feature_check": {d: {"max_difference": a, "relative": r}
                                                         for d, (a, r) in checks.items()}}, *rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
