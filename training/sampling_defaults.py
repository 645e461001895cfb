"""Show or change a base model file's recommended sampling settings.

    python -m training.sampling_defaults MODEL                       # show them
    python -m training.sampling_defaults MODEL --set r_temp=4.5 \\
        --why "better plain N=16 FD in both regimes" [--out COPY]

``generate()``, the nodes, the recorder and the sweep use a MaskGIT file's recommended
settings (its info's ``sampling_defaults``) wherever the caller gives none; options the file
does not name take the published MaskGIT-512 values. ``--set`` rewrites the file (or writes
``--out``) with the weights unchanged, so its fingerprint, and every shortcut trained for it,
still match; each change is appended to the info's ``sampling_defaults_history`` with its
reason and command. Only native MaskGIT ``.safetensors`` files carry these settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from shortcut_core import load_migm
from shortcut_core.checkpoints import CheckpointError, rewrite_info
from shortcut_core.maskgit_family import PUBLISHED_SAMPLING, checked_sampling_options


def parse_assignments(items: Sequence[str]) -> dict:
    """``["cfg=2", "schedule=cosine"]`` -> validated options (numbers where the option is one)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = key.strip(), value.strip()
        if isinstance(PUBLISHED_SAMPLING.get(key), float):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {value!r}") from None
        out[key] = value
    return checked_sampling_options(out)


def set_sampling_defaults(path: Path, out: Path, changes: dict, why: str, command: str) -> dict:
    """Write ``path`` to ``out`` with ``changes`` merged into its recommended settings; returns them."""

    def update(info: dict) -> dict:
        old = dict(info.get("sampling_defaults") or {})
        new = {**old, **changes}
        history = list(info.get("sampling_defaults_history") or [])
        history.append({"from": old, "to": new, "why": why, "command": command})
        return {**info, "sampling_defaults": new, "sampling_defaults_history": history}

    return rewrite_info(path, out, "migm", update)["sampling_defaults"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.sampling_defaults", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a native MaskGIT .safetensors base model")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"settings to change ({', '.join(PUBLISHED_SAMPLING)})")
    p.add_argument("--why", help="the evidence for the change, kept in the file (required with --set)")
    p.add_argument("--out", help="write a copy here instead of rewriting MODEL")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    path = Path(args.model)
    try:
        if not path.is_file():
            raise CheckpointError(f"file not found: {path}")
        if not args.set:
            migm = load_migm(path)
            print(json.dumps({"file": migm.info.get("sampling_defaults", {}), "in effect": migm.sampling_defaults},
                             indent=1, sort_keys=True))
            return 0
        if not args.why:
            raise ValueError("--set needs --why: say what measurement the new settings rest on")
        changes = parse_assignments(args.set)
        new = set_sampling_defaults(path, Path(args.out or path), changes, args.why,
                                    " ".join(["python -m training.sampling_defaults", *argv]))
    except (ValueError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out or path}: recommended sampling settings {json.dumps(new, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
