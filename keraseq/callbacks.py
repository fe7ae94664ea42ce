"""``BackupAndRestore`` with atomic writes: Keras's callback, made crash-safe.

What lives here: a subclass of ``keras.callbacks.BackupAndRestore`` whose backup (weights,
optimizer state and the epoch reached, all in ONE file) is written to a temporary file, flushed
to disk and renamed over the previous one, so a process killed at any moment leaves either the
old or the new backup, never a torn one. Keras's own callback writes its weights file in place
(a kill mid-write leaves a file the restart cannot open) and its epoch in a second file.
What does not: the resume logic of ``fit`` (``epochs.py``: the restored epoch and state are
broadcast from rank 0 under MPI).
"""

from __future__ import annotations

import json
import os
import warnings

import h5py
import keras

__all__ = ["BackupAndRestore"]

_ATTR = "keraseq_training_metadata"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Back up the training state at each epoch end (or every ``save_freq`` batches) and
    restore it when ``fit`` starts again; writes are atomic (temporary file + rename).

    Each backup also records the run's number of MPI ranks and minibatch sizes; a run that
    resumes from it on another number of ranks gets a ``UserWarning`` saying whether the
    global minibatch (``batch_size`` is per rank) changed, and how ``global_batch_size``
    keeps it.

    Example::

        est.fit(x, y, callbacks=[keraseq.callbacks.BackupAndRestore("backup/")])
        # killed? run the same command again: training resumes at the last completed epoch
    """

    #: Set by keraseq's ``fit`` before training: ``{"ranks", "batch_size" (per rank),
    #: "global_batch_size"}`` of this run, written into each backup, compared on restore.
    run: dict | None = None

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = os.path.join(self.backup_dir, "incoming.weights.h5")
        self.model.save_weights(filepath=tmp, overwrite=True)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        metadata.update(self.run or {})
        with h5py.File(tmp, "a") as f:
            f.attrs[_ATTR] = json.dumps(metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if self.double_checkpoint and os.path.exists(self._weights_path):
            os.replace(self._weights_path, self._prev_weights_path)
        os.replace(tmp, self._weights_path)  # the atomic step

    def _load_model(self):
        if not os.path.exists(self._weights_path):
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self._weights_path)
        with h5py.File(self._weights_path, "r") as f:
            metadata = json.loads(f.attrs[_ATTR]) if _ATTR in f.attrs else None
        if metadata is not None:
            self.model._initial_epoch = metadata["epoch"]
            self._compare_runs(metadata)

    def _compare_runs(self, saved: dict) -> None:
        """Warn when this run resumes a backup written on another number of ranks."""
        now = self.run
        if now is None or "ranks" not in saved or saved["ranks"] == now["ranks"]:
            return
        before = saved["batch_size"] * saved["ranks"]
        after = now["batch_size"] * now["ranks"]
        if before == after:
            kept = f"the global minibatch stays {after} series" + (
                " (global_batch_size: the same minibatches)"
                if now.get("global_batch_size")
                else " but its series differ (set global_batch_size for the same ones)"
            )
        else:
            kept = (
                f"the global minibatch changes from {before} to {after} series (batch_size is "
                f"per rank), so does the optimisation: set global_batch_size={before} to keep it"
            )
        warnings.warn(
            f"resuming from a backup written on {saved['ranks']} MPI rank(s) on "
            f"{now['ranks']}: {kept}",
            UserWarning,
            stacklevel=2,
        )
