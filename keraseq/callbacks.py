"""``BackupAndRestore`` with atomic writes: Keras's callback, made crash-safe.

What lives here: a subclass of ``keras.callbacks.BackupAndRestore`` whose backup (weights,
optimizer state and the epoch reached, all in ONE file) is written to a temporary file, flushed
to disk and renamed over the previous one, so a process killed at any moment leaves either the
old or the new backup, never a torn one. Keras's own callback writes its weights file in place
(a kill mid-write leaves a file the restart cannot open) and its epoch in a second file.
What does not: the resume logic of ``fit`` (``trainer.py``: the restored epoch and state are
broadcast from rank 0 under MPI).
"""

from __future__ import annotations

import json
import os

import h5py
import keras

__all__ = ["BackupAndRestore"]

_ATTR = "keraseq_training_metadata"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Back up the training state at each epoch end (or every ``save_freq`` batches) and
    restore it when ``fit`` starts again; writes are atomic (temporary file + rename).

    Example::

        est.fit(x, y, callbacks=[keraseq.callbacks.BackupAndRestore("backup/")])
        # killed? run the same command again: training resumes at the last completed epoch
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = os.path.join(self.backup_dir, "incoming.weights.h5")
        self.model.save_weights(filepath=tmp, overwrite=True)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
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
