"""Convert published pickles to self-describing .safetensors, once, without running pickled code.

    python -m shortcut_core.convert MaskGIT_ImageNet_512.pth --vq VQGAN/last.ckpt -o maskgit_imagenet512.safetensors
    python -m shortcut_core.convert VQGAN/last.ckpt -o vqgan_imagenet_f16_1024.safetensors
    python -m shortcut_core.convert maskgit-shortcut.pth -o maskgit_shortcut.safetensors [--base maskgit.safetensors]

The kind of each input (MaskGIT base, taming VQGAN, MaskGIT shortcut) is recognised
from its keys. With ``--base``, the shortcut file records the base model's fingerprint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoints import CheckpointError, load_any_state_dict, refuse_overwriting
from .maskgit import MaskGITConfig
from .migm import load_migm, load_vqgan, save_migm, save_shortcut, save_vqgan
from .progress import ProgressBar
from .shortcut import MaskGITShortcut, infer_shortcut_config

STAGES = 3  # read the source, build the model, write the output: what `on_stage` is called after


def detect_kind(sd: dict) -> str:
    if "tok_emb.weight" in sd and "pos_emb" in sd:
        return "maskgit"
    if "quantize.embedding.weight" in sd or any(k.startswith("decoder.") for k in sd):
        return "vqgan"
    if "proj_in.weight" in sd and "blocks.0.cross_attn.fn.mha.in_proj_weight" in sd:
        return "maskgit-shortcut"
    raise CheckpointError(
        "unrecognised checkpoint: expected a MaskGIT base (tok_emb/pos_emb), a taming VQGAN (quantize/decoder) "
        f"or a MaskGIT shortcut (proj_in/blocks.0.cross_attn); first keys: {sorted(sd)[:6]}"
    )


def convert(src: Path, out: Path, vq: Path | None = None, base: Path | None = None,
            config: MaskGITConfig | None = None, on_stage=None) -> str:
    """Convert ``src`` to ``out``; returns its kind. ``on_stage(text)`` is called after each of the
    ``STAGES`` stages (a published base model takes a few seconds per stage)."""
    on_stage = on_stage or (lambda text: None)
    sd, meta = load_any_state_dict(src)
    if meta:
        raise CheckpointError(f"{src} is already a shortcut_core .safetensors file; nothing to convert")
    kind = detect_kind(sd)
    on_stage(f"read {src.name} ({_megabytes(src)}): {kind}")
    info = {"converted_from": src.name}
    if kind == "maskgit":
        model = load_migm(src, vq_path=vq, config=config)
        on_stage("built the MaskGIT" + (f" with {vq.name}" if vq else ""))
        save_migm(model, out, info=info)
    elif kind == "vqgan":
        model = load_vqgan(src)
        on_stage("built the VQGAN")
        save_vqgan(model, out, info=info)
    else:
        fp = None
        if base is not None:
            migm = load_migm(base)
            shortcut = migm.build_shortcut(infer_shortcut_config(sd))
            fp = migm.fingerprint
        else:
            shortcut = MaskGITShortcut(infer_shortcut_config(sd))
        shortcut.load_state_dict(sd)
        on_stage("built the shortcut" + (f", tied to {base.name}" if base else ""))
        save_shortcut(shortcut, out, base_fingerprint=fp, info=info)
    on_stage(f"wrote {out.name} ({_megabytes(out)})")
    return kind


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shortcut_core.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="published .pth / .ckpt file")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .safetensors path")
    parser.add_argument("--vq", type=Path, help="for a MaskGIT base: bundle this VQGAN (last.ckpt) into the output")
    parser.add_argument("--base", type=Path, help="for a shortcut: record this base model's fingerprint")
    parser.add_argument("--config", help="for a MaskGIT base that matches no published preset: its MaskGITConfig "
                                         "as JSON, e.g. '{\"hidden\": 256, \"depth\": 8, ...}'")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"output must end in .safetensors, got {args.out}")
    try:
        refuse_overwriting(args.out, args.src, args.vq, args.base)
        try:
            config = MaskGITConfig.from_dict(json.loads(args.config)) if args.config else None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config is not valid JSON ({exc}); pass e.g. '{{\"hidden\": 256, \"depth\": 8}}'") from None
        # interval 0: each stage is its own line in a log (three lines in all)
        bar = ProgressBar(STAGES, desc="convert", unit="stage", interval=0.0)
        try:
            kind = convert(args.src, args.out, args.vq, args.base, config,
                           on_stage=lambda text: bar.update(1, postfix=text))
        finally:
            bar.close()
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {kind} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
