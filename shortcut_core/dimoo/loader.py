"""Loading a Lumina-DiMOO checkpoint folder and the DiMOO shortcut.

Folder layout (as published): ``config.json``, ``model.safetensors.index.json`` with
``model-0000k-of-0000n.safetensors`` shards (or one ``model.safetensors``),
``tokenizer.json``, and ``vqvae/`` holding a diffusers VQModel (``config.json`` +
``diffusion_pytorch_model.safetensors``).

The base model is built on the meta device and each tensor is read from its shard and
put in place one at a time, so the 16 GB of weights are never held twice.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..checkpoints import CheckpointError, check_keys, load_any_state_dict, load_pickle_checkpoint, extract_state_dict
from .config import DiMOOShortcutConfig, LLaDAConfig
from .family import DiMOOMIGM
from .llada import LLaDA
from .prompt import PromptTokenizer
from .shortcut import DiMOOShortcut, shortcut_config_from_state_dict
from .vq import VQConfig, VQDecoder, legacy_attention_key

log = logging.getLogger(__name__)

WTE_KEY = "model.transformer.wte.weight"


@dataclass
class LoadReport:
    """What a load found: keys it skipped (unexpected) and, for the VQ, encoder keys it ignored."""

    path: str
    loaded: int = 0
    unexpected: list[str] = field(default_factory=list)
    ignored: int = 0  # keys deliberately not used (VQ encoder half)

    def summary(self) -> str:
        s = f"{self.path}: {self.loaded} tensors"
        if self.ignored:
            s += f", {self.ignored} encoder tensors not needed"
        if self.unexpected:
            s += f", {len(self.unexpected)} unexpected keys ignored: {_show(self.unexpected)}"
        return s


def _show(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: the Lumina-DiMOO folder is incomplete") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder: from the shard index, else the single file."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are not there: {_show(missing)}; finish the download")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    hint = f" (found {_show(others)}: convert them to .safetensors)" if others else ""
    raise CheckpointError(f"no .safetensors weights in {folder}{hint}")


def _tensor_shape(files: list[Path], key: str) -> tuple[int, ...] | None:
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            if key in f.keys():
                return tuple(f.get_slice(key).get_shape())
    return None


def read_llada_config(folder: str | os.PathLike, files: list[Path] | None = None) -> LLaDAConfig:
    """The base config from ``config.json``; the vocabulary size is the stored embedding's rows."""
    folder = Path(folder)
    hf = _read_json(folder / "config.json")
    files = files if files is not None else weight_files(folder)
    shape = _tensor_shape(files, WTE_KEY)
    if shape is None:
        raise CheckpointError(
            f"the weights in {folder} have no {WTE_KEY}: this is not a Lumina-DiMOO / LLaDA checkpoint")
    try:
        return LLaDAConfig.from_hf_config(hf, vocab_size=shape[0])
    except ValueError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None


def _put_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def load_state_into(model: nn.Module, files: list[Path], device, dtype, what: str, *,
                    rename=None, ignore_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Read every tensor of ``files`` into the (meta-built) ``model`` one at a time.

    Shapes must match; a parameter no file provides is an error naming it; keys the
    model has no place for are reported (``LoadReport.unexpected``).
    """
    params = dict(model.named_parameters())
    report = LoadReport(path=str(files[0].parent) if files else "")
    seen: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                name = rename(key) if rename else key
                if name.startswith(ignore_prefixes):
                    report.ignored += 1
                    continue
                if name not in params:
                    report.unexpected.append(key)
                    continue
                tensor = f.get_tensor(key)
                want = tuple(params[name].shape)
                if tuple(tensor.shape) != want:
                    raise CheckpointError(
                        f"{path}: tensor {key} has shape {tuple(tensor.shape)} but the {what} config needs {want}"
                    )
                target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
                _put_parameter(model, name, tensor.to(device=device, dtype=target_dtype))
                seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:
        raise CheckpointError(f"{report.path}: the {what} weights lack {len(missing)} tensors: {_show(missing)}")
    report.loaded = len(seen)
    if report.unexpected:
        log.warning("%s", report.summary())
    return report


def default_dtype(device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_llada(folder: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> tuple[LLaDA, LoadReport]:
    """The base transformer of a Lumina-DiMOO folder (bf16 on GPU, fp32 on CPU by default)."""
    folder = Path(folder)
    files = weight_files(folder)
    config = read_llada_config(folder, files)
    with torch.device("meta"):
        model = LLaDA(config)
    report = load_state_into(model, files, device, dtype or default_dtype(device), "Lumina-DiMOO base")
    return model.eval().requires_grad_(False), report


def load_vq(folder: str | os.PathLike, device="cpu",
            dtype: torch.dtype = torch.float32) -> tuple[VQDecoder, LoadReport]:
    """The decoder half of the diffusers VQModel in ``folder`` (usually ``<checkpoint>/vqvae``)."""
    folder = Path(folder)
    try:
        config = VQConfig.from_diffusers_config(_read_json(folder / "config.json"))
    except ValueError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None
    with torch.device("meta"):
        model = VQDecoder(config)
    files = sorted(folder.glob("*.safetensors"))
    if files:
        report = load_state_into(model, files, device, dtype, "VQ decoder",
                                 rename=legacy_attention_key,
                                 ignore_prefixes=VQDecoder.ENCODER_PREFIXES)
    else:
        pickles = sorted(folder.glob("*.bin"))
        if not pickles:
            raise CheckpointError(f"no VQ weights (diffusion_pytorch_model.safetensors) in {folder}")
        sd = extract_state_dict(load_pickle_checkpoint(pickles[0]), pickles[0])
        sd = {legacy_attention_key(k): v for k, v in sd.items()}
        ignored = [k for k in sd if k.startswith(VQDecoder.ENCODER_PREFIXES)]
        sd = {k: v for k, v in sd.items() if k not in set(ignored)}
        with torch.device("cpu"):
            model = VQDecoder(config)
        check_keys(model, sd, "VQ decoder", pickles[0])
        model.load_state_dict(sd)
        model.to(device=device, dtype=dtype)
        report = LoadReport(path=str(folder), loaded=len(sd), ignored=len(ignored))
    return model.eval().requires_grad_(False), report


def load_tokenizer(folder: str | os.PathLike, config: LLaDAConfig) -> PromptTokenizer:
    return PromptTokenizer.from_folder(folder, config)


@dataclass
class DiMOOParts:
    """Everything a Lumina-DiMOO folder holds, loaded."""

    config: LLaDAConfig
    model: LLaDA
    vq: VQDecoder | None
    tokenizer: PromptTokenizer | None
    reports: list[LoadReport]
    path: Path


def load_dimoo_parts(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None, *,
                     vq: bool = True, tokenizer: bool = True) -> DiMOOParts:
    """Base model (+ VQ decoder from ``vqvae/``, + prompt tokenizer) of a checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder: a Lumina-DiMOO checkpoint is a folder with config.json")
    model, report = load_llada(path, device, dtype)
    reports = [report]
    vq_model = None
    if vq:
        vq_dir = path / "vqvae"
        if not vq_dir.is_dir():
            raise CheckpointError(f"{path} has no vqvae/ folder: the image decoder of Lumina-DiMOO is missing")
        vq_model, vq_report = load_vq(vq_dir, device)
        reports.append(vq_report)
    tok = load_tokenizer(path, model.config) if tokenizer else None
    return DiMOOParts(model.config, model, vq_model, tok, reports, path)


def load_dimoo_folder(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None, *,
                      name: str | None = None):
    """A ready-to-sample Lumina-DiMOO MIGM (base + VQ decoder + tokenizer) from its folder."""
    parts = load_dimoo_parts(path, device=device, dtype=dtype)
    return DiMOOMIGM.from_parts(parts, name=name)


# -- shortcut --------------------------------------------------------------------------

def check_shortcut_fits(config: DiMOOShortcutConfig, base: LLaDAConfig, path="shortcut") -> None:
    if config.dim != base.d_model:
        raise CheckpointError(
            f"{path}: the shortcut maps features of width {config.dim} (proj_in {config.width}x{config.dim}) but the "
            f"Lumina-DiMOO base model has features of width {base.d_model} (wte {base.vocab_size}x{base.d_model}); "
            f"pick a shortcut trained for this model"
        )


def load_dimoo_shortcut(path: str | os.PathLike, base: LLaDA | None = None, device=None,
                        dtype: torch.dtype | None = None) -> DiMOOShortcut:
    """The published ``dimoo-shortcut.pth`` (plain state dict, read weights-only) or a ``.safetensors``.

    With ``base`` the shortcut is checked against it, bound to its ``wte`` and put on its
    device and dtype; a shortcut whose shapes do not fit is refused naming both shapes.
    """
    path = Path(path)
    sd, meta = load_any_state_dict(path)
    if meta.get("config") is not None:
        if meta.get("kind", "shortcut") != "shortcut" or meta.get("family", "dimoo") != "dimoo":
            raise CheckpointError(f"{path} is a {meta.get('family')!r} {meta.get('kind')!r} file, not a DiMOO shortcut")
        config = DiMOOShortcutConfig.from_dict(meta["config"])
    else:
        config = shortcut_config_from_state_dict(sd, base.config if base is not None else None)
    if base is not None:
        check_shortcut_fits(config, base.config, path)
    with torch.device("meta"):
        shortcut = DiMOOShortcut(config)
    check_keys(shortcut, sd, "DiMOO shortcut", path)
    shortcut.load_state_dict(sd, assign=True)
    if base is not None:
        ref = base.wte.weight
        device = device or ref.device
        dtype = dtype or ref.dtype
        shortcut.bind(base.wte)
    shortcut.to(device=device or "cpu", dtype=dtype)
    return shortcut.eval().requires_grad_(False)
