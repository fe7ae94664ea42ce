"""Memory stays flat over long runs (issue 24): hundreds of calls, resident memory per call.

Each case runs ``tests/soak.py`` in a subprocess of its own (its memory measured alone): fits
cycling over 6 programs as a hyper-parameter search does (fresh model, data and estimator each
time, then dropped), repeated ``predict`` of one estimator, repeated ``partial_fit``. After a
warm-up in which every program is built, the resident memory may grow by at most 0.2 MB per
call (least-squares slope). Before the fix, each JAX fit kept 1.5 MB (the probe's eager model
call compiled the LSTM's ``lax.scan`` into JAX's never-emptied cache of single primitives) and
each TensorFlow fit 0.59 MB (TensorFlow's eager kernel cache kept kernels named after every
model's and optimizer's variables). Runs on both backends (``make test-full``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "soak.py"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.backend,
    pytest.mark.skipif(
        not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc (Linux)"
    ),
]


@pytest.mark.parametrize(
    "mode,calls,warmup", [("fit", 48, 12), ("predict", 80, 16), ("partial_fit", 60, 12)]
)
def test_resident_memory_per_call_is_flat(mode, calls, warmup):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(calls), str(warmup)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["slope_mb"] <= 0.2, (mode, result)
