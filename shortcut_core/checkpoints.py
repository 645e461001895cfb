"""Safe checkpoint reading and the self-describing safetensors format.

Published weights come as pickles (``.pth``, Lightning ``.ckpt``). Unpickling can run
arbitrary code, so pickles are read with torch's weights-only unpickler. Classes that
training frameworks leave in their checkpoints (Lightning callbacks, argparse
namespaces, OmegaConf configs) are mapped to an inert placeholder that stores its
arguments and never runs anything; any other global (``os.system``, ``eval``, ...) is
refused by name.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

META_PREFIX = "shortcut_core."
FORMAT_VERSION = "1"
# A file being written is named PATH + this until it is complete; only files ending in it
# are ever cleaned up, so a user's own "*.tmp" next to an output is never touched.
TMP_SUFFIX = ".migm-partial"

# Module prefixes whose classes may appear as inert placeholders. These are the
# bookkeeping objects of training frameworks; weights never live inside them.
PLACEHOLDER_MODULES = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "argparse",
    "omegaconf.",
    "taming.",
    "typing",
    "pathlib",
    "__main__",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the path and the remedy in the message."""


class InertObject:
    """Stand-in for a class the loader will not import; records what it was given."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):  # a placeholder used as a callable stays inert
        return InertObject(*args, **kwargs)


def _placeholder_for(qualified: str):
    module, _, name = qualified.rpartition(".")
    return type(name or "Placeholder", (InertObject,), {"__module__": module})


def load_pickle_checkpoint(path: str | os.PathLike) -> dict:
    """Read a torch pickle without executing code. Returns the unpickled object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _refuse_non_checkpoint(path)
    unsafe: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(f"{path} is a damaged zip archive ({exc}); fetch the file again") from None
        if not any(n.endswith("/data.pkl") for n in names):
            raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl among "
                                  f"{names[:3]}); point to the checkpoint itself, not an archive holding it")
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as exc:  # a damaged torch archive
            raise CheckpointError(f"{path} is a damaged PyTorch checkpoint ({_refusal_reason(path, exc)}); "
                                  f"fetch the file again") from None
    else:  # a legacy (pre-zip) file: only framework bookkeeping becomes a placeholder, torch judges the rest
        unsafe = [g for g in legacy_pickle_globals(path) if g.startswith(PLACEHOLDER_MODULES)]
    refused = [g for g in unsafe if not g.startswith(PLACEHOLDER_MODULES)]
    if refused:
        raise CheckpointError(
            f"{path} refers to {', '.join(refused)}, which a weights file never needs; it was not loaded "
            f"because unpickling it could run code. Get the file from a trusted source or as .safetensors."
        )
    allowed = [(_placeholder_for(g), g) for g in unsafe]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler names what it refused
        raise CheckpointError(
            f"{path} was refused ({_refusal_reason(path, exc)}); it is never loaded with code execution enabled. "
            f"Convert a trusted copy with `python -m shortcut_core.convert`, or use a .safetensors release"
        ) from None


def legacy_pickle_globals(path: Path) -> list[str]:
    """``module.name`` of every global a legacy torch file's pickles refer to, read without unpickling.

    A legacy file is a run of pickles (magic number, protocol, system info, the object, storage
    keys) followed by raw storage bytes; protocol 2 (torch.save's) names globals in GLOBAL
    opcodes, newer protocols push module and name as strings before STACK_GLOBAL (a name reused
    through the memo was already found at its first use).
    """
    import pickletools

    found: list[str] = []
    with open(path, "rb") as f:
        for _ in range(5):
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        found.append(".".join(str(arg).split(" ", 1)))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str) and "UNICODE" in op.name:
                        strings.append(arg)
            except ValueError:  # the raw storage bytes after the last pickle
                break
    return list(dict.fromkeys(found))


def _refuse_non_checkpoint(path: Path) -> None:
    """torch.save writes a zip archive (a bare pickle before torch 1.6); anything else is the wrong file."""
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        raise CheckpointError(f"{path} is empty: an interrupted download or copy? Fetch the file again")
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) == len(head)
    what = f"text starting {head[:24].decode('ascii', 'replace')!r}" if printable else f"bytes {head[:8].hex(' ')}"
    raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.save files are zip archives; this holds {what}"
                          f"{', an HTML error page instead of the weights?' if b'<' in head[:2] else ''}); "
                          f"point to the .pth/.pt/.ckpt/.safetensors file itself")


def _refusal_reason(path: Path, exc: Exception) -> str:
    """One line from torch's multi-paragraph refusal, without its colours or its advice to turn safety off."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    wanted = [line for line in lines if "Unsupported" in line or "unsupported" in line]
    safe = [line for line in lines if "weights_only" not in line and "safe_globals" not in line]
    line = (wanted or safe or [type(exc).__name__])[0]
    if line.isdigit() or len(line) < 4:
        line = f"not a torch checkpoint: {type(exc).__name__} {line}"
    return line[:200].rstrip(" .:")


def extract_state_dict(obj, path: str | os.PathLike, keys=("model_state_dict", "state_dict", "model")) -> dict:
    """The tensor mapping inside a loaded checkpoint, with any DDP ``module.`` prefix removed."""
    sd = obj
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in keys:
            if k in obj and isinstance(obj[k], dict):
                sd = obj[k]
                break
        else:
            raise CheckpointError(
                f"{path} holds no state dict (looked for {', '.join(keys)}; found keys {sorted(obj)[:10]})"
            )
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict but a {type(sd).__name__}")
    # ``n_averaged`` is the step counter EMA wrappers (torch AveragedModel) add: not a weight.
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and k != "n_averaged"}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def save_safetensors(path: str | os.PathLike, tensors: dict, kind: str, config: dict | None = None, **meta) -> None:
    """Write tensors with ``shortcut_core.*`` metadata (plain JSON strings), atomically."""
    path = Path(path)
    metadata = {META_PREFIX + "format": FORMAT_VERSION, META_PREFIX + "kind": kind}
    if config is not None:
        metadata[META_PREFIX + "config"] = json.dumps(config, sort_keys=True)
    for key, value in meta.items():
        if value is not None:
            metadata[META_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic(path, tensors, metadata)


def rewrite_info(path: str | os.PathLike, out: str | os.PathLike, kind: str, update) -> dict:
    """Write ``path`` (a native file of ``kind``) to ``out`` with its info replaced by
    ``update(info)``; tensors, config and the other metadata unchanged. Returns the new info."""
    tensors, meta = load_safetensors(path)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} is a {meta['kind']} file, not a {kind} one" if meta.get("kind") else
                              f"{path} is not a native {kind} .safetensors file (convert it first with "
                              f"python -m shortcut_core.convert)")
    info = update(dict(meta.get("info") or {}))
    extra = {k: v for k, v in meta.items() if k not in ("format", "kind", "config", "info")}
    save_safetensors(out, tensors, kind, meta["config"], info=info, **extra)
    return info


def write_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``path`` all or nothing: a temporary file in the same folder, fsync, rename.

    A failed write (a full disk, a folder that became read-only) leaves the previous
    ``path``, if any, and no temporary file; it raises OSError, as any other failed write
    does (safetensors reports it as its own error type, which callers would not expect).
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        # safetensors creates files owner-only; a rewritten file keeps its mode, a new one gets what
        # the umask gives any new file (read off a file the kernel creates: os.umask() would change the
        # process-wide mask for a moment, under ComfyUI's other threads), so a server running as
        # another user can still read what we wrote.
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            mode = os.fstat(fd).st_mode & 0o777
            os.close(fd)
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        number = int(code.group(1)) if code else errno.EIO
        error = OSError(f"could not write {path}: {os.strerror(number) if code else exc}")
        error.errno = number
        raise error from None
    finally:
        tmp.unlink(missing_ok=True)


def refuse_overwriting(out, *inputs, what: str = "output") -> None:
    """Refuse to write ``out`` over any of ``inputs`` (the same file, also through links or a
    file inside an input folder): a run must never replace what it reads."""
    out = Path(out)
    target = out.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given)
        same = src.resolve() == target or (out.exists() and src.exists() and os.path.samefile(out, src))
        inside = src.is_dir() and src.resolve() in target.parents
        if same or inside:
            raise ValueError(f"{what} {out} would overwrite {'a file in ' if inside else ''}the input {src}; "
                             f"choose another output path")


def read_safetensors_metadata(path: str | os.PathLike) -> dict:
    """The ``shortcut_core.*`` metadata of a file (prefix removed, JSON decoded where it parses)."""
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out = {}
    for k, v in raw.items():
        if k.startswith(META_PREFIX):
            try:
                out[k[len(META_PREFIX):]] = json.loads(v)
            except json.JSONDecodeError:
                out[k[len(META_PREFIX):]] = v
    return out


def load_safetensors(path: str | os.PathLike, device="cpu") -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable .safetensors file ({exc}); re-download or re-convert it") from exc
    meta = read_safetensors_metadata(path)
    if "kind" in meta and not isinstance(meta.get("config"), dict):
        found = "no config" if "config" not in meta else f"an unreadable config {str(meta['config'])[:40]!r}"
        raise CheckpointError(f"{path} says it is a {meta['kind']!r} file but holds {found}: it is damaged or was not "
                              f"written by shortcut_core; re-convert it from the original checkpoint")
    return tensors, meta


def load_any_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict, metadata) from .safetensors or a torch pickle; metadata is {} for pickles."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return extract_state_dict(load_pickle_checkpoint(path), path), {}


def check_keys(module: torch.nn.Module, state_dict: dict, what: str, path) -> None:
    """Load strictly, but say which keys are missing or unexpected instead of a wall of text."""
    expected = set(module.state_dict())
    got = set(state_dict)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {show(unexpected)}")
        raise CheckpointError(f"{path} is not a {what} checkpoint of this shape: " + "; ".join(parts))
    for k, v in state_dict.items():
        ref = module.state_dict()[k]
        if ref.shape != v.shape:
            raise CheckpointError(
                f"{path}: tensor {k} has shape {tuple(v.shape)} but the {what} config needs {tuple(ref.shape)}"
            )


def fingerprint(state_dict: dict, config: dict) -> str:
    """Short hash of a model's config and weights, stable across file formats.

    Hashes every tensor's name, shape and up to 4096 evenly strided values, so converting
    .pth -> .safetensors keeps the fingerprint while retrained weights change it. Values are
    rounded to bfloat16 first: a bf16 checkpoint loaded in fp32 (or an fp32 one stored in
    bf16) keeps its fingerprint.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.reshape(-1)
        if flat.numel() > 4096:
            flat = flat[:: flat.numel() // 4096][:4096]
        h.update(flat.to("cpu", torch.bfloat16).to(torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]
