"""Training data from a recording: the validation split and a resumable stream of pairs.

A pair (s -> s+1) of one trajectory's branch gives input ``features[s]`` and target
``features[s+1]``. Pairs of one step s reveal the same number of tokens in every
trajectory (one schedule), so a batch holds pairs of a single (branch, s).

The order of batches in an epoch is a pure function of (seed, rank, epoch) and the shard
list, so a position ``(epoch, cursor)`` is all a checkpoint needs to resume exactly.
Shards are read a window at a time: the epoch shuffles the shard order, groups
``window`` shards, and shuffles the batches of each group, which mixes trajectories
while only ``window`` shards sit in memory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .pairs import recipe_for
from .trajectories import ManifestError, ShardError, check_shard_entry, load_shard, read_manifest


def unit_hash(tag: str, index: int) -> float:
    """A number in [0, 1) fixed by (tag, index): platform independent."""
    digest = hashlib.sha256(f"{tag}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def stream_seed(seed: int, *parts) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Recording:
    """One trajectory folder, or several of one base model and step count, opened for training.

    Several folders mix regimes (class-conditional with guidance, unconditional, other
    guidance scales); each shard keeps its own folder's branches, and a batch holds pairs
    of one branch from shards that have it.
    """

    def __init__(self, roots, *, verify: bool = True):
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if not roots:
            raise ManifestError("no trajectory folder given (--data DIR)")
        self.roots = [Path(r) for r in roots]
        self.root = self.roots[0]
        self.manifests = [read_manifest(r) for r in self.roots]
        self.manifest = m = self.manifests[0]
        for root, other in zip(self.roots[1:], self.manifests[1:]):
            for key in ("family", "steps", "num_image_tokens", "base_fingerprint"):
                if other[key] != m[key]:
                    raise ManifestError(f"{root} has {key} {other[key]!r} but {self.root} has {m[key]!r}; "
                                        f"train on recordings of one base model with one step count")
        self.recipe = recipe_for(m["family"])
        # Each entry remembers its folder ("part"); the manifests themselves are left as read.
        self.shards = [dict(e, part=p) for p, man in enumerate(self.manifests)
                       for e in sorted(man["shards"], key=lambda e: e["first"])]
        if not self.shards:
            raise ManifestError(f"{', '.join(map(str, self.roots))} hold(s) no finished shard yet; record some "
                                f"trajectories first")
        self.steps = int(m["steps"])
        if self.steps < 2:
            raise ManifestError(f"{self.root} was recorded with {self.steps} step(s); pairs need at least 2")
        self.branches = list(dict.fromkeys(b for man in self.manifests for b in man["branches"]))
        self.feature_shapes = {b: tuple(s) for man in self.manifests for b, s in man["feature_shapes"].items()}
        self.num_image_tokens = int(m["num_image_tokens"])
        self.fingerprint = m["base_fingerprint"]
        self.verify = verify
        self.bad: dict[str, str] = {}  # shard file -> why it is skipped

    @property
    def num_trajectories(self) -> int:
        return sum(e["count"] for e in self.shards)

    def shard_branches(self, k: int) -> list[str]:
        return self.manifests[self.shards[k]["part"]]["branches"]

    def data_id(self) -> str:
        """Identity of the exact data a run trains on (fingerprint and every shard checksum)."""
        h = hashlib.sha256(self.fingerprint.encode())
        for e in self.shards:
            tag = e["file"] if e["part"] == 0 else f"{e['part']}/{e['file']}"
            h.update(f"{tag}:{e['checksum']}".encode())
        return h.hexdigest()[:16]

    def path(self, k: int) -> Path:
        return self.roots[self.shards[k]["part"]] / self.shards[k]["file"]

    def shard_name(self, k: int) -> str:
        """The shard's file name, prefixed with its folder when several folders are mixed."""
        return self.shards[k]["file"] if len(self.roots) == 1 else str(self.path(k))

    def mark_bad(self, exc: ShardError, log: Callable[[str], None]) -> None:
        key = exc.path.name if len(self.roots) == 1 else str(exc.path)
        if key not in self.bad:
            self.bad[key] = exc.reason
            log(f"warning: skipping {exc.path} ({exc.reason})")

    def check(self, *, skip_bad: bool, log: Callable[[str], None]) -> None:
        """Header, size and shape check of every shard (no data read)."""
        for entry in self.shards:
            try:
                check_shard_entry(self.roots[entry["part"]], entry, self.manifests[entry["part"]])
            except ShardError as exc:
                if not skip_bad:
                    raise
                self.mark_bad(exc, log)

    def load(self, k: int) -> dict[str, torch.Tensor]:
        name = self.shard_name(k)
        if name in self.bad:
            raise ShardError(self.path(k), self.bad[name])
        return load_shard(self.path(k), verify=self.verify)

    def split(self, val_fraction: float, val_max: int) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """(train rows, validation rows): shard k -> local trajectory rows, split by trajectory.

        The held-out trajectories are the ``round(val_fraction * total)`` (at most
        ``val_max``, at least one when the fraction is positive) with the lowest hash of
        their global index (and folder), so the split does not depend on shard layout or
        world size.
        """
        def tag(e):
            return "val" if e["part"] == 0 else f"val{e['part']}"

        keyed = [(unit_hash(tag(e), e["first"] + j), k, j) for k, e in enumerate(self.shards) for j in range(e["count"])]
        n_val = 0
        if val_fraction > 0:
            n_val = min(max(1, round(val_fraction * len(keyed))), val_max, len(keyed) - 1)
        held = {(k, j) for _, k, j in sorted(keyed)[:n_val]}
        train: dict[int, list[int]] = {}
        val: dict[int, list[int]] = {}
        for _, k, j in sorted(keyed, key=lambda t: (t[1], t[2])):
            (val if (k, j) in held else train).setdefault(k, []).append(j)
        return train, val


@dataclass
class PairBatch:
    prev: torch.Tensor  # (B, T, C) float32 features at step s
    target: torch.Tensor  # (B, T, C) float32 features at step s+1
    inputs: dict  # the family's other shortcut inputs
    loss_mask: torch.Tensor  # (B, T) bool: positions still masked after step s
    step: int
    branch: str
    shards: tuple[str, ...]
    # Rollout: (target, inputs, loss_mask) of the pairs s+1 -> s+2, ... that chain on from this one.
    later: list[tuple[torch.Tensor, dict, torch.Tensor]] = field(default_factory=list)

    @property
    def span(self) -> int:
        return 1 + len(self.later)


def gather_pairs(recording: Recording, cache: dict[int, dict], rows: list[tuple[int, int]], branch: str, s: int,
                 device: torch.device, span: int = 1) -> PairBatch:
    """Stack the pairs (s -> s+1) of ``rows`` [(shard, row)] from loaded shards into a batch,
    with the next ``span - 1`` pairs of the same trajectories for chained (rollout) training.

    Families whose sequences are right padded (DiMOO: ``{branch}.length``) get the batch
    cut to its longest row; their recipe's ``pair_fields`` tensors go to ``pair_inputs``.
    """
    recipe = recording.recipe
    span = max(1, min(span, recording.steps - 1 - s))
    fields = {f: torch.stack([cache[k][f"{branch}.{f}"][j] for k, j in rows]).to(device)
              for f in getattr(recipe, "pair_fields", ())}
    seq = int(fields["length"].max()) if "length" in fields else None  # None: the whole stored sequence
    feats = torch.stack([cache[k][f"{branch}.features"][j, s:s + span + 1, :seq] for k, j in rows])  # (B, span+1, T, C)
    revealed = torch.stack([cache[k][f"{branch}.revealed_at"][j, :seq] for k, j in rows]).long().to(device)  # (B, T)
    final_ids = torch.stack([cache[k]["final_ids"][j] for k, j in rows]).long().to(device)  # (B, L)
    feats = feats.to(device, non_blocking=True).float()
    extra = {"branch": branch, **fields} if fields else {}
    steps = [recipe.pair_inputs(revealed, final_ids, t, recording.num_image_tokens, **extra)
             for t in range(s, s + span)]
    names = tuple(sorted({recording.shard_name(k) for k, _ in rows}))
    later = [(feats[:, i + 1], inputs, mask) for i, (inputs, mask) in enumerate(steps) if i > 0]
    return PairBatch(feats[:, 0], feats[:, 1], steps[0][0], steps[0][1], s, branch, names, later)


class PairStream:
    """This rank's endless, shuffled, resumable stream of training batches."""

    def __init__(self, recording: Recording, rows: dict[int, list[int]], *, batch: int, window: int, seed: int,
                 rank: int, device: torch.device, skip_bad: bool, log: Callable[[str], None] = print, span: int = 1):
        self.recording = recording
        self.rows = {k: v for k, v in rows.items() if v}
        self.shard_ids = sorted(self.rows)
        self.batch = batch
        self.window = max(1, window)
        self.seed = seed
        self.rank = rank
        self.device = device
        self.skip_bad = skip_bad
        self.log = log
        self.span = span
        self.epoch = 0
        self.cursor = 0
        self.read: set[str] = set()  # shard files actually loaded by this stream
        self._plan: list | None = None
        self._plan_epoch = -1
        self._group = -1
        self._cache: dict[int, dict] = {}
        if not self.shard_ids:
            raise ManifestError(
                f"process {rank} has no training trajectories: {recording.root} has {len(recording.shards)} shards "
                f"for this world; record more shards (smaller --shard-size) or use fewer processes"
            )

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def plan(self, epoch: int) -> list[tuple[int, str, int, list[tuple[int, int]]]]:
        """The epoch's batches: (group, branch, step s, [(shard, row), ...])."""
        g = torch.Generator().manual_seed(stream_seed(self.seed, "epoch", self.rank, epoch))
        order = [self.shard_ids[i] for i in torch.randperm(len(self.shard_ids), generator=g).tolist()]
        out = []
        for group, start in enumerate(range(0, len(order), self.window)):
            members = order[start:start + self.window]
            rows = [(k, j) for k in members for j in self.rows[k]]
            batches = []
            for branch in self.recording.branches:
                having = [(k, j) for k, j in rows if branch in self.recording.shard_branches(k)]
                for s in range(self.recording.steps - 1):
                    perm = torch.randperm(len(having), generator=g).tolist()
                    shuffled = [having[i] for i in perm]
                    for b0 in range(0, len(shuffled), self.batch):
                        batches.append((group, branch, s, shuffled[b0:b0 + self.batch]))
            out.extend(batches[i] for i in torch.randperm(len(batches), generator=g).tolist())
        return out

    def _load_group(self, plan, group: int) -> None:
        self._cache = {}
        members = sorted({k for grp, _, _, rows in plan if grp == group for k, _ in rows})
        for k in members:
            try:
                self._cache[k] = self.recording.load(k)
                self.read.add(self.recording.shard_name(k))
            except ShardError as exc:
                if not self.skip_bad:
                    raise
                self.recording.mark_bad(exc, self.log)
        self._group = group

    def next(self) -> PairBatch:
        skipped = 0
        while True:
            if self._plan_epoch != self.epoch:
                self._plan, self._plan_epoch, self._group = self.plan(self.epoch), self.epoch, -1
            if self.cursor >= len(self._plan):
                self.epoch, self.cursor = self.epoch + 1, 0
                continue
            group, branch, s, rows = self._plan[self.cursor]
            if group != self._group:
                self._load_group(self._plan, group)
            self.cursor += 1
            rows = [(k, j) for k, j in rows if k in self._cache]
            if rows:
                return gather_pairs(self.recording, self._cache, rows, branch, s, self.device, self.span)
            skipped += 1
            if skipped > 2 * len(self._plan) + 1:
                raise ManifestError(f"every training shard of process {self.rank} is damaged: "
                                    f"{', '.join(sorted(self.recording.bad))}")
