"""Full steps placed where the shortcut drifts most: calibrated from measured error.

The paper places the B full steps evenly. A shortcut's error is not even over a run, and
it compounds over consecutive shortcut steps, so ``training.calibrate`` measures an error
table on recorded trajectories and this module chooses the placement that minimises it:

``errors[s, k]`` (k >= 1) is the expected error of the feature at step ``s + k`` when step
``s`` was the last full step, i.e. after k chained shortcut steps; a full step has none.
The cost of a placement is the sum over its shortcut steps of their entry; dynamic
programming over (full steps used, last full step) finds the minimum exactly.

A shortcut file stores the chosen placements in its metadata (``info["placements"]``):
``table`` {N: {B: steps}} for every run, and optionally ``by_regime`` {"cond" | "uncond":
{N: {B: steps}}}, which overrides the table for runs of that regime only (a placement can
help class-conditional sampling and hurt unconditional sampling, where the shortcut drifts
differently). ``sample(..., placement="calibrated")`` uses them and falls back to the paper's
placement, saying so in the report, for an (N, B) the file does not cover. The default,
``"auto"``, uses them where the file has one for (N, B) and the paper's placement otherwise:
the file's placement is part of what the shortcut recommends, as the base model's file
recommends its sampling settings, and a published checkpoint, which carries none, samples as
the reference. A batch that mixes both regimes gets the shared table's placement.

A placement holds for the sampling settings it was calibrated at: on the Fashion-MNIST v3 pair
the one chosen at r_temp 9 was 10-14 FD worse than the paper's at r_temp 4.5
(``docs/results/fmnist_v3.md``). So the writers record them (``sampled_with``), and "auto"
takes the paper's placement, saying why, for a run whose settings differ; "calibrated" still
uses the file's and says it was made for other settings.
"""
from __future__ import annotations

import numpy as np

from .schedules import full_step_indices

AUTO, PAPER, CALIBRATED = "auto", "paper", "calibrated"
PLACEMENTS = (AUTO, PAPER, CALIBRATED)
COND, UNCOND = "cond", "uncond"
REGIMES = (COND, UNCOND)
REGIME_WORDS = {COND: "conditional sampling", UNCOND: "unconditional sampling"}
# Guidance is left out: one table serves both regimes, and unconditional runs ignore it.
SETTINGS_COMPARED = ("sm_temp", "r_temp", "schedule", "randomize")


def sampled_with(settings: dict) -> dict:
    """The part of a run's sampling settings that a calibrated placement is valid for."""
    return {k: settings[k] for k in SETTINGS_COMPARED if k in settings}


def settings_differ(made_at: dict | None, run: dict | None) -> list[str]:
    """Each compared setting in which ``run`` differs from the settings a placement was made at."""
    if not made_at or not run:
        return []
    return [f"{k} {made_at[k]} (this run: {run[k]})" for k in SETTINGS_COMPARED
            if k in made_at and k in run and made_at[k] != run[k]]


def regime_of(unconditional_rows) -> str | None:
    """A batch's regime: "uncond" when every row samples without a condition, "cond" when none
    does, None when it mixes the two."""
    flags = [bool(f) for f in unconditional_rows]
    if flags and all(flags):
        return UNCOND
    return COND if not any(flags) else None


def placement_cost(errors: np.ndarray, full: list[int]) -> float:
    """Sum of ``errors[last full step, distance]`` over the shortcut steps of a placement."""
    steps = errors.shape[0]
    marks = set(full)
    total, last = 0.0, 0
    for t in range(steps):
        if t in marks:
            last = t
        else:
            total += float(errors[last, t - last])
    return total


def optimal_placement(errors: np.ndarray, budget: int) -> list[int]:
    """The ``budget`` full steps (step 0 always one of them) of least total error.

    ``errors``: (N, N) with ``errors[s, k]`` as in the module doc (entries with s + k >= N
    are never read). Exact, O(B N^2).
    """
    errors = np.asarray(errors, dtype=np.float64)
    steps = errors.shape[0]
    if errors.shape != (steps, steps):
        raise ValueError(f"the error table must be square (N, N), got {errors.shape}")
    full_step_indices(steps, budget)  # same validation and message as the paper's placement
    # seg[p, q]: shortcut steps p+1 .. q-1 after a full step at p (q = next full step, or N).
    cum = np.zeros((steps, steps + 1))
    for p in range(steps):
        cum[p, 1:steps - p] = np.cumsum(errors[p, 1:steps - p])

    def seg(p: int, q: int) -> float:
        return cum[p, q - p - 1] if q - p - 1 > 0 else 0.0

    inf = float("inf")
    best = np.full((budget + 1, steps), inf)
    back = np.zeros((budget + 1, steps), dtype=np.int64)
    best[1, 0] = 0.0
    for j in range(2, budget + 1):
        for q in range(j - 1, steps):
            costs = [best[j - 1, p] + seg(p, q) for p in range(q)]
            p = int(np.argmin(costs))
            best[j, q], back[j, q] = costs[p], p
    ends = [best[budget, p] + seg(p, steps) for p in range(steps)]
    last = int(np.argmin(ends))
    out = [last]
    for j in range(budget, 1, -1):
        out.append(int(back[j, out[-1]]))
    return sorted(out)


def remap_errors(errors: np.ndarray, ratios: np.ndarray, target_ratios: np.ndarray) -> np.ndarray:
    """An error table measured at N_train steps, carried over to another step count.

    ``ratios`` (N_train,) and ``target_ratios`` (N,) are the fractions of image tokens still
    masked *before* each step. Each target step is placed at its fractional training step
    (the one with the same mask ratio), and ``errors`` is interpolated bilinearly over
    (start, chain length) at those fractional positions; a chain longer than the recording
    allows takes the longest measured one from that start.
    """
    errors = np.asarray(errors, dtype=np.float64)
    n_train, n = len(ratios), len(target_ratios)
    # Mask ratios decrease with the step; np.interp needs increasing x.
    tau = np.interp(-np.asarray(target_ratios, dtype=np.float64), -np.asarray(ratios, dtype=np.float64),
                    np.arange(n_train, dtype=np.float64))
    filled = errors.copy()
    for s in range(n_train):
        filled[s, 0] = 0.0
        valid = n_train - 1 - s  # longest chain measured from start s
        if valid >= 1:
            filled[s, valid + 1:] = filled[s, valid]
        elif s:
            filled[s, 1:] = filled[s - 1, 1]  # the last step starts no chain: take its neighbour's

    def at(x: float, y: float) -> float:
        x = min(max(x, 0.0), n_train - 1)
        y = min(max(y, 0.0), n_train - 1)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = min(x0 + 1, n_train - 1), min(y0 + 1, n_train - 1)
        fx, fy = x - x0, y - y0
        top = filled[x0, y0] * (1 - fy) + filled[x0, y1] * fy
        bottom = filled[x1, y0] * (1 - fy) + filled[x1, y1] * fy
        return top * (1 - fx) + bottom * fx

    out = np.zeros((n, n))
    for s in range(n):
        for k in range(1, n - s):
            out[s, k] = at(tau[s], tau[s + k] - tau[s])
    return out


def masked_before(counts: list[int]) -> np.ndarray:
    """Fractions of the image still masked before each step, from the reveal counts."""
    total = float(sum(counts))
    return 1.0 - np.concatenate([[0.0], np.cumsum(counts)[:-1]]) / total


def _stored(shortcut) -> dict:
    return (getattr(shortcut, "info", None) or {}).get("placements") or {}


def placement_table(shortcut, regime: str | None = None) -> dict:
    """{"N": {"B": [full steps]}} from a shortcut file's calibration ({} for none): the shared
    table, with ``regime``'s own entries (``by_regime``) over it."""
    stored = _stored(shortcut)
    table = {n: dict(row) for n, row in (stored.get("table") or {}).items()}
    for n, row in ((stored.get("by_regime") or {}).get(regime) or {}).items() if regime else ():
        table.setdefault(n, {}).update(row)
    return table


def calibrated_indices(shortcut, steps: int, full_steps: int, regime: str | None = None) -> list[int] | None:
    """The placement a shortcut file stores for (N, B), in ``regime`` when given, or None."""
    found = (placement_table(shortcut, regime).get(str(steps)) or {}).get(str(full_steps))
    return [int(i) for i in found] if found else None


def resolve_placement(steps: int, full_steps, placement: str, shortcut,
                      regime: str | None = None, settings: dict | None = None) -> tuple[list[int] | None, str]:
    """(full-step indices or None for the sampler's own resolution, a note for the report).

    ``regime``: "cond" or "uncond" for a run whose rows are all of one kind, None for a mixed one.
    ``settings``: the run's sampling settings, checked against those the placement was made at."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if placement == PAPER or shortcut is None or full_steps is None:
        return None, ""
    explicit = isinstance(full_steps, bool) or not isinstance(full_steps, int)
    if explicit and placement == AUTO:
        return None, ""  # an explicit list is its own placement
    if explicit:
        raise ValueError("placement='calibrated' chooses where B full steps go: pass full_steps as a count B, "
                         "not an explicit list")
    if full_steps >= steps:
        return None, ""  # every step is full: nothing to place
    found = calibrated_indices(shortcut, steps, full_steps, regime)
    own = calibrated_indices(shortcut, steps, full_steps) != found  # the regime's own entry decided
    stored = _stored(shortcut)
    if found is not None:
        source = (stored.get("by_regime_source") or {}).get(regime) or {} if own else stored
        differ = settings_differ(source.get("sampled_with"), settings)
        if differ and placement == AUTO:
            return None, (f"paper placement: the shortcut's calibrated placement for N={steps}, B={full_steps} was "
                          f"made at {', '.join(differ)}; pass placement 'calibrated' to use it anyway")
        return found, (f"calibrated placement {','.join(map(str, found))}"
                       + (f" ({REGIME_WORDS[regime]})" if own else "")
                       + (f", made at {', '.join(differ)}" if differ else ""))
    if placement == AUTO and not (stored.get("table") or stored.get("by_regime")):
        return None, ""  # a file that was never calibrated (the published ones): the paper's, as the reference
    elsewhere = [REGIME_WORDS[r] for r in (COND, UNCOND) if r != regime
                 and calibrated_indices(shortcut, steps, full_steps, r) is not None]
    if elsewhere:
        where = ("this batch mixes conditional and unconditional rows" if regime is None
                 else f"this is {REGIME_WORDS[regime]}")
        return None, (f"paper placement: the shortcut's calibrated placement for N={steps}, B={full_steps} is for "
                      f"{' and '.join(elsewhere)} only, and {where}")
    return None, (f"paper placement: the shortcut has no calibrated placement for N={steps}, B={full_steps} "
                  f"(run training.calibrate with --steps {steps} --budgets {full_steps})")
