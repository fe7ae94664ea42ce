"""``EpochTimer``: the wall time of every epoch of a ``fit``, shared by the benchmarks."""

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """``times[i]`` = seconds of epoch i; the first includes tracing and XLA compilation."""

    def on_train_begin(self, logs=None):
        self.times = []
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.times.append(now - self.t0)
        self.t0 = now
