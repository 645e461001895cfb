"""CUDA checks of both families: sampling in bf16 and fp32, seed determinism, CUDA vs CPU, pass counts,
compiled sampling (CUDA graphs on CUDA) against eager.

    python -m pytest -m gpu tests/test_gpu.py       # or all of it: python bench/gpu_check.py --out DIR

Marked ``gpu`` and left out of the default run (pyproject ``addopts``). Without a CUDA device
they fail, never skip: a GPU check that skips would report green on a machine that checked
nothing. ``MIGM_GPU_TEST_DEVICE=cpu`` runs the same code on the CPU (``bench/gpu_check.py
--smoke`` does, so CI keeps this file working); the CUDA-vs-CPU comparisons then compare the
CPU with itself. No fixtures or parametrization: ``bench/gpu_check.py`` calls these functions
directly where pytest is not installed.
"""
from __future__ import annotations

import os

import torch

from shortcut_core.compiled import compile_sampling
from shortcut_core.dimoo.config import LLADA_PRESETS, SHORTCUT_PRESETS as DIMOO_SHORTCUTS
from shortcut_core.dimoo.fake import random_llada
from shortcut_core.dimoo.family import DiMOOMIGM
from shortcut_core.dimoo.prompt import REFERENCE_UNCOND_IDS
from shortcut_core.sampler import sample
from tests.tiny import tiny_migm, tiny_shortcut

try:
    import pytest
except ImportError:  # the GPU machine may lack pytest; gpu_check imports this module then
    pytest = None
else:
    pytestmark = pytest.mark.gpu

DEVICE_ENV = "MIGM_GPU_TEST_DEVICE"
STEPS, FULL = 8, 3  # full steps 0, 3, 5; shortcut steps 1, 2, 4, 6, 7
CLASSES = [0, 1, 2]
# <system>…</system><user>, three text ids, </user>: a pre-tokenized prompt, no tokenizer needed.
PROMPT = list(REFERENCE_UNCOND_IDS[:12]) + [300, 4631, 12166, REFERENCE_UNCOND_IDS[-1]]
DIMOO_OPTIONS = dict(height=64, width=64, uncond_ids=list(REFERENCE_UNCOND_IDS))  # 4 x 4 image tokens


def device() -> torch.device:
    dev = torch.device(os.environ.get(DEVICE_ENV, "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AssertionError(
            f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU, and these "
            f"tests need one ({DEVICE_ENV}=cpu runs their code on the CPU, to check the code paths only)")
    return dev


def maskgit(dev, dtype):
    """Tiny MaskGIT + shortcut, built on the CPU so every device gets the same weights."""
    migm = tiny_migm(vqgan=False)
    shortcut = tiny_shortcut(migm)
    migm.to(device=dev, dtype=dtype)
    return migm, shortcut.to(device=dev, dtype=dtype)


def dimoo(dev, dtype):
    """Tiny LLaDA (real vocabulary and special ids) + DiMOO shortcut, built on the CPU."""
    migm = DiMOOMIGM(random_llada(LLADA_PRESETS["tiny"], seed=0), name="tiny-dimoo", fingerprint="tiny")
    torch.manual_seed(3)
    shortcut = migm.build_shortcut(DIMOO_SHORTCUTS["tiny"]).eval()
    migm.to(device=dev, dtype=dtype)
    # bind() keeps the table it was given, which stayed on the CPU: bind the moved one.
    return migm, shortcut.to(device=dev, dtype=dtype).bind(migm.model.wte)


def check_sampling(migm, shortcut, conditions, passes_per_step: int, codes: int, **options) -> None:
    """Plain and shortcut runs: pass counts, finite features, real codes everywhere, seeds reproducible."""
    finite = []

    def run(full_steps, seed):
        return sample(migm, conditions, steps=STEPS, full_steps=full_steps, shortcut=shortcut if full_steps else None,
                      seed=seed, decode=False, callback=lambda info: finite.append(feats_finite(info.feats)), **options)

    plain, fast = run(None, 1), run(FULL, 1)
    assert (plain.stats.base_passes + plain.stats.memo_passes, plain.stats.shortcut_steps) == (STEPS * passes_per_step, 0)
    assert fast.stats.full_step_indices == [0, 3, 5]
    assert (fast.stats.base_passes + fast.stats.memo_passes, fast.stats.shortcut_steps) == (FULL * passes_per_step, STEPS - FULL)
    assert fast.stats.plain_base_passes == STEPS * passes_per_step
    assert all(finite), "a step produced NaN/inf features"
    for res in (plain, fast):
        assert res.tokens.device.type == migm.device.type
        assert ((res.tokens >= 0) & (res.tokens < codes)).all()  # every position revealed, with a real code
    assert torch.equal(run(FULL, 1).tokens, fast.tokens)  # same seed, same device: same tokens
    assert not torch.equal(run(FULL, 2).tokens, fast.tokens)
    assert not torch.equal(plain.tokens, fast.tokens)  # the shortcut really replaced base passes


def feats_finite(feats) -> bool:
    return all(bool(torch.isfinite(f).all()) for f in (feats if isinstance(feats, (tuple, list)) else [feats]))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    a, b = a.float().cpu(), b.float().cpu()
    err = float((a - b).abs().max())
    assert torch.allclose(a, b, rtol=tol, atol=tol), f"max abs difference {err:.3g} > {tol}"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().cpu().flatten(), b.float().cpu().flatten(), dim=0))


class fp32_matmuls:
    """fp32 comparisons must not run cuBLAS in TF32 (off by default, but a user setting can turn it on)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.saved


def test_maskgit_samples_in_bf16():
    check_sampling(*maskgit(device(), torch.bfloat16), CLASSES, passes_per_step=1, codes=16)


def test_maskgit_samples_in_fp32():
    check_sampling(*maskgit(device(), torch.float32), CLASSES, passes_per_step=1, codes=16)


def test_dimoo_samples_in_bf16():
    check_sampling(*dimoo(device(), torch.bfloat16), PROMPT, passes_per_step=2, codes=8192, **DIMOO_OPTIONS)


def test_dimoo_samples_in_fp32():
    check_sampling(*dimoo(device(), torch.float32), PROMPT, passes_per_step=2, codes=8192, **DIMOO_OPTIONS)


def maskgit_outputs(migm, shortcut):
    """Base feature, shortcut prediction and head logits on fixed inputs (half the tokens masked)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (3, 16), generator=g)
    tokens[:, ::2] = migm.config.mask_id
    new_positions = torch.stack([torch.randperm(16, generator=g)[:4].sort().values for _ in range(3)])
    inputs = [tokens, torch.tensor(CLASSES), torch.randint(0, 16, (3, 4), generator=g), new_positions,
              torch.tensor([0.5, 0.25, 0.75])]
    tokens, classes, new_ids, new_positions, ratio = (t.to(migm.device) for t in inputs)
    with torch.inference_mode():
        feats = migm.model.features(tokens, classes)
        predicted = shortcut(feats, new_ids, new_positions, ratio)
        return feats, predicted, migm.model.logits(predicted)


def test_maskgit_fp32_matches_cpu_and_bf16_stays_close():
    dev = device()
    with fp32_matmuls():
        here = maskgit_outputs(*maskgit(dev, torch.float32))
        cpu = maskgit_outputs(*maskgit("cpu", torch.float32))
    for a, b in zip(here, cpu):
        close(a, b)
    # Sampled tokens cannot be compared: CUDA and CPU generators give different streams.
    low = maskgit_outputs(*maskgit(dev, torch.bfloat16))
    for a, b in zip(low, here):
        assert cosine(a, b) > 0.999


def dimoo_first_steps(migm, shortcut, twin=None):
    """Step 0 (full), its reveal, and step 1 through the shortcut, at temperature 0 (no randomness).

    ``twin`` (migm, shortcut) on the same device gets exactly the same inputs (the reveal follows
    ``migm``), so a bf16 twin is compared on its precision alone.
    """
    g = torch.Generator(device=migm.device).manual_seed(0)
    state = migm.start(PROMPT, steps=STEPS, generator=g, temperature=0.0, **DIMOO_OPTIONS)
    with torch.inference_mode():
        feats = migm.base_features(state)
        twin_feats = twin[0].base_features(state) if twin else None
        migm.advance(state, feats, 0, g)
        outputs = [*feats, *migm.shortcut_features(shortcut, feats, state)]
        if twin:
            return outputs, [*twin_feats, *twin[0].shortcut_features(twin[1], twin_feats, state)]
    return outputs, state.image.clone()


def test_dimoo_fp32_matches_cpu_and_bf16_stays_close():
    dev = device()
    with fp32_matmuls():
        here_migm, here_short = dimoo(dev, torch.float32)
        cpu_migm, cpu_short = dimoo("cpu", torch.float32)
        here, here_image = dimoo_first_steps(here_migm, here_short)
        cpu, cpu_image = dimoo_first_steps(cpu_migm, cpu_short)
        for a, b in zip(here, cpu):
            close(a, b)
        assert torch.equal(here_image.cpu(), cpu_image)
        # Temperature 0 is argmax all the way, so whole runs agree token for token.
        kw = dict(steps=STEPS, full_steps=FULL, temperature=0.0, decode=False, **DIMOO_OPTIONS)
        a = sample(here_migm, PROMPT, shortcut=here_short, **kw)
        b = sample(cpu_migm, PROMPT, shortcut=cpu_short, **kw)
        assert torch.equal(a.tokens.cpu(), b.tokens)
        here, low = dimoo_first_steps(here_migm, here_short, twin=dimoo(dev, torch.bfloat16))
    for x, y in zip(low, here):
        assert cosine(x, y) > 0.999


def test_compiled_sampling_matches_eager():
    """``compile_sampling`` (reduce-overhead on CUDA: replayed CUDA graphs) gives eager's tokens, replay after replay."""
    dev = device()
    runs = ((maskgit(dev, torch.float32), CLASSES, dict(cfg=1.5)),
            (dimoo(dev, torch.float32), PROMPT, dict(temperature=0.0, **DIMOO_OPTIONS)))
    with fp32_matmuls():
        for (migm, shortcut), conditions, options in runs:
            kw = dict(steps=STEPS, full_steps=FULL, shortcut=shortcut, seed=1, decode=False, **options)
            eager = sample(migm, conditions, **kw)
            compile_sampling(migm, shortcut)
            first, again = sample(migm, conditions, **kw), sample(migm, conditions, **kw)
            assert torch.equal(first.tokens, eager.tokens), migm.family
            assert torch.equal(again.tokens, eager.tokens), migm.family
