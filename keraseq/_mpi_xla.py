"""MPI Allreduce inside XLA: build, load and call the custom-call library ``_mpi_xla.cc``.

What lives here: compiling ``_mpi_xla.cc`` once per TensorFlow/MPI install (with the
``mpicxx`` of the MPI that mpi4py uses; cached under ``~/.cache/keraseq`` or
``$KERASEQ_CACHE``), loading it, and :func:`xla_allreduce`, which emits the call
(``XlaCustomCallV2``) inside ``tf.function(jit_compile=True)``. With it, the whole truncated-BPTT
window loop under MPI (forward, backward, one fused Allreduce, optimizer update) is ONE XLA
program, like the single-process loop: no host callback, no Python, no GIL per window.
What does not: choosing when to use it and the host-callback fallback
(``backend/tensorflow.py``, the host side in ``backend/common.py``).

It is an optimisation with a fallback: when the library cannot be built or loaded (no C++
compiler, a different libmpi, MPI thread level below ``SERIALIZED``, a GPU, or
``KERASEQ_MPI_XLA=0``), :func:`xla_allreduce` returns ``None`` and keraseq uses the
``tf.numpy_function`` path. ``XlaCustomCallV2`` is imported from TensorFlow's private
``gen_xla_ops``; the target is registered for XLA:CPU only.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

TARGET = "keraseq_mpi_allreduce_f32"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mpi_xla.cc")
_lib = None
_lib_error: str | None = None


def _mpi():
    from mpi4py import MPI

    return MPI


def _tf():
    """TensorFlow, imported on use: this module is the TensorFlow backend's (importing it
    under ``KERAS_BACKEND=jax``, where TensorFlow may be absent, costs nothing)."""
    import tensorflow as tf

    return tf


def _find_mpicxx() -> str | None:
    cands = []
    try:
        import mpi4py

        cfg = mpi4py.get_config()
        for key in ("mpicxx", "mpicc"):
            if cfg.get(key):
                cands.append(cfg[key].split()[0].replace("mpicc", "mpicxx"))
    except Exception:
        pass
    cands += [
        os.path.join(os.path.dirname(sys.executable), "mpicxx"),
        os.path.join(sys.prefix, "bin", "mpicxx"),
        "mpicxx",
        "mpic++",
        "mpiCC",
    ]
    for c in cands:
        path = shutil.which(c)
        if path:
            return path
    return None


def _cache_path() -> str:
    MPI, tf = _mpi(), _tf()
    with open(_SOURCE, "rb") as source:
        code = source.read().hex()
    key = hashlib.sha1(
        "|".join(
            [
                code,
                tf.__version__,
                os.path.dirname(tf.__file__),
                MPI.Get_library_version(),
                sys.prefix,
            ]
        ).encode()
    ).hexdigest()[:16]
    root = os.environ.get(
        "KERASEQ_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "keraseq")
    )
    return os.path.join(root, f"mpi_xla_{key}.so")


def build(out: str) -> None:
    """Compile the custom-call library (~5 s; needs mpicxx of the MPI mpi4py uses + a C++17
    compiler; only TF header used: xla/service/custom_call_target_registry.h)."""
    mpicxx = _find_mpicxx()
    if mpicxx is None:
        raise RuntimeError("no mpicxx found")
    tf = _tf()
    tf_dir = os.path.dirname(tf.__file__)
    flags = [f for f in tf.sysconfig.get_compile_flags() if f.startswith(("-I", "-D"))]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    cmd = [
        mpicxx,
        "-O2",
        "-shared",
        "-fPIC",
        "-std=c++17",
        "-w",
        *flags,
        _SOURCE,
        "-o",
        tmp,
        f"-L{tf_dir}",
        "-l:libtensorflow_cc.so.2",
        f"-Wl,-rpath,{tf_dir}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building {out} failed:\n{res.stderr[-2000:]}")
    os.replace(tmp, out)  # atomic: ranks building concurrently do not see half a file


def load(comm=None):
    """Load (building once per TF/MPI install) the library; return it or None (reason in
    ``_lib_error``). Collective over ``comm`` when given: every rank gets the same answer."""
    global _lib, _lib_error
    if _lib is None and _lib_error is None:
        try:
            MPI = _mpi()
            if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
                # XLA runs the custom call on a TensorFlow thread, not the main thread.
                raise RuntimeError("MPI thread level below MPI_THREAD_SERIALIZED")
            path = _cache_path()
            if not os.path.exists(path):
                build(path)
            lib = ctypes.CDLL(path)  # static initialiser registers the XLA custom-call target
            if lib.keraseq_mpi_initialized() != 1:
                raise RuntimeError("the library's libmpi is not the one mpi4py initialised")
            _lib = lib
        except Exception as exc:  # fall back to the host callback
            _lib_error = f"{type(exc).__name__}: {exc}"
    if comm is not None and comm.Get_size() > 1:
        if not all(comm.allgather(_lib is not None)):
            return None
    return _lib


def xla_allreduce(comm):
    """``reduce(buf) -> summed buf`` as an XLA custom call over ``comm`` (an mpi4py
    communicator), or ``None`` when unavailable. Collective: every rank gets the same answer."""
    if os.environ.get("KERASEQ_MPI_XLA", "1") == "0":
        return None
    tf = _tf()
    if tf.config.list_physical_devices("GPU") or load(comm) is None:
        return None
    try:
        from tensorflow.compiler.tf2xla.ops import gen_xla_ops
    except ImportError:  # pragma: no cover - private module moved
        return None
    handle = int(_mpi()._handleof(comm))

    def reduce(buf):
        n = int(buf.shape[0])  # static: the buffer layout is fixed at trace time
        return gen_xla_ops.xla_custom_call_v2(
            operands=[buf],
            call_target_name=TARGET,
            backend_config=f"{handle} {n}",
            has_side_effect=True,  # never merged, hoisted out of the loop or dropped
            result_dtypes=[tf.float32],
            result_shapes=[tf.TensorShape([n])],
        )[0]

    return reduce
