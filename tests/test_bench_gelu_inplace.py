"""bench/bench_gelu_inplace.py: both variants run in their own processes and the figures come back."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_each_variant_runs_in_its_own_process_and_the_ratio_is_printed():
    done = subprocess.run([sys.executable, "bench/bench_gelu_inplace.py", "--models", "embedded", "--pairs", "1",
                           "--images", "8", "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = re.fullmatch(r"embedded: sequential ([\d.]+) ms/image \(([\d.]+)\), in place ([\d.]+) \(([\d.]+)\): ([\d.]+)x\n",
                     done.stdout)
    assert m, done.stdout
    seq, inp, ratio = float(m[1]), float(m[3]), float(m[5])
    assert seq > 0 and inp > 0 and abs(ratio - seq / inp) < 0.01


def test_unknown_models_are_refused_by_name():
    done = subprocess.run([sys.executable, "bench/bench_gelu_inplace.py", "--models", "dimoo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--models takes a comma list of embedded, maskgit512" in done.stderr
