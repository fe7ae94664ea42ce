"""``EpochTimer``: the wall time of every epoch of a ``fit``, shared by the benchmarks."""

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """``times[i]`` = seconds of epoch i; the first includes tracing and XLA compilation.
    ``cpu[i]`` = the CPU seconds of the whole process (every thread) in that epoch."""

    def on_train_begin(self, logs=None):
        self.times, self.cpu = [], []
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        now, cpu = time.perf_counter(), time.process_time()
        self.times.append(now - self.t0)
        self.cpu.append(cpu - self.c0)
        self.t0, self.c0 = now, cpu
