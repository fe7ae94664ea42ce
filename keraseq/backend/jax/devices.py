"""JAX's devices for keraseq: how many CPU devices, which device a rank runs on, placement.

What lives here: asking JAX, when this module is imported and before JAX starts, for one CPU
device per usable core (``jax_num_cpu_devices``; ``KERASEQ_CPU_DEVICES`` overrides it, one
device under ``mpirun`` with several ranks), so a minibatch's rows can run on every core
(``rows.py``); :func:`default_device` (the GPU per local rank of
:func:`keraseq.backend.common.device_for_rank`, else ``/CPU:0``) and :class:`device_scope`
(``jax.default_device`` by name).

What does not live here: splitting the rows over the CPU devices (``rows.py``), whether JAX
computes on a GPU for the cuDNN rule (``cudnn.py``), the Allreduce (``mpi.py``).
"""

from __future__ import annotations

import os
import re

import jax

from .. import common


def _wanted_cpu_devices() -> int:
    """How many CPU devices keraseq asks JAX for: ``KERASEQ_CPU_DEVICES`` if set, else the
    cores this process may run on; 1 under ``mpirun`` with several ranks (one rank per core
    is the user's choice there)."""
    env = os.environ.get("KERASEQ_CPU_DEVICES", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"KERASEQ_CPU_DEVICES={env!r}: expected a whole number >= 1")
        return int(env)
    return 1 if common.launched_with_several_ranks() else common.usable_cores()


def _ask_for_cpu_devices() -> None:
    """One JAX CPU device per core (``jax_num_cpu_devices``), so a minibatch's rows can run on
    every core (``rows.row_replicas``). Only when neither the user (the config value or
    ``--xla_force_host_platform_device_count``) nor an earlier use of JAX fixed it already."""
    fixed = jax.config.jax_num_cpu_devices != -1  # type: ignore[attr-defined]
    if fixed or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    wanted = _wanted_cpu_devices()
    if wanted <= 1:
        return
    try:
        jax.config.update("jax_num_cpu_devices", wanted)
    except Exception:  # JAX's backends are up already: keep what they have
        pass


_ask_for_cpu_devices()


def _device(name: str):
    """A JAX device from a name: ``"/GPU:1"``, ``"gpu:1"``, ``"/CPU:0"``, ``"cpu"``."""
    match = re.fullmatch(r"/?(?:device:)?([A-Za-z]+)(?::(\d+))?", name.strip())
    if match is None:
        raise ValueError(f"device={name!r}: expected a name like '/GPU:0' or '/CPU:0'")
    kind, index = match.group(1).lower(), int(match.group(2) or 0)
    try:
        devices = jax.devices(kind)
    except RuntimeError as exc:
        raise ValueError(f"device={name!r}: JAX has no {kind} device ({exc})") from exc
    if index >= len(devices):
        raise ValueError(f"device={name!r}: JAX has {len(devices)} {kind} device(s)")
    return devices[index]


def default_device(comm) -> str:
    """``/GPU:{local_rank % n_gpus}`` when JAX sees GPUs, else ``/CPU:0``.

    (XLA's CPU thread pool is sized when JAX starts; ranks sharing a node share its cores.)"""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    return common.device_for_rank(comm, len(gpus))


class device_scope(common.DeviceScope):
    """``jax.default_device(device)`` for a name such as ``"/GPU:0"``; nothing for ``None``."""

    @staticmethod
    def context(name: str):
        return jax.default_device(_device(name))
