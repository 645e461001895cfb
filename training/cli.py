"""Console-script entry points for jobs whose ``main`` returns a result rather than an exit status.

A console script exits with what its function returns, so a ``main`` that returns its
report (a dict) would end the process with status 1 and print the dict. The wrappers here
run the job and exit 0; errors still raise and end the process with status 1.
``training.record``, ``training.train`` and ``shortcut_core.convert`` return an exit status
and are entry points as they are (see ``[project.scripts]`` in ``pyproject.toml``).
"""

from __future__ import annotations


def sweep() -> int:
    """``migm-sweep``: ``python -m training.fmnist.sweep`` (the Fashion-MNIST quality/speed sweep)."""
    from training.fmnist.sweep import main

    main()
    return 0
