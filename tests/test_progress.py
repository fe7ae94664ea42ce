"""Long minibatches stay observable: training in chunks of windows (``windows_per_call``).

A minibatch of many windows trains as several compiled calls, each one step of the progress
bar and of ``on_train_batch_*``: the weights and the history equal those of one call per
minibatch bit for bit (per-step and per-series targets, unequal lengths, ``sync_every``, a
short tail window, the JAX row split), ``stop_training`` and Ctrl-C act between chunks and
leave the update of the last finished chunk in place.
"""

import functools
import logging
import signal

import keras
import numpy as np
import pytest

from keraseq import Estimator, calls, trainer

pytestmark = pytest.mark.backend
ONE_CALL = 10**6  # windows_per_call larger than any minibatch: today's one call


def model(per_series=False, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, 3))
    h = keras.layers.LSTM(5, return_sequences=not per_series)(inp)
    return keras.Model(inp, keras.layers.Dense(2)(h))


def data(n=12, t=47, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype("float32")
    return (
        x,
        rng.normal(size=(n, t, 2)).astype("float32"),
        rng.normal(size=(n, 2)).astype("float32"),
        rng.integers(1, t + 1, n),
    )


def fit(
    windows_per_call,
    per_series=False,
    t=47,
    lengths=False,
    sync_every=1,
    callbacks=(),
    epochs=2,
    batch_size=6,
    verbose=0,
):
    x, y, ys, lens = data(t=t)
    est = Estimator(
        model(per_series),
        "mse",
        keras.optimizers.Adam(1e-2),
        epochs=epochs,
        batch_size=batch_size,
        seq_len=4,
        shuffle=False,
        verbose=verbose,
        metrics=["mae"],
        windows_per_call=windows_per_call,
        sync_every=sync_every,
    )
    return est.fit(
        x,
        ys if per_series else y,
        lengths=lens if lengths else None,
        sample_weight=np.linspace(0.5, 1.5, len(x)).astype("float32"),
        callbacks=list(callbacks),
    )


def same_weights(a, b):
    wa, wb = a.model_.get_weights(), b.model_.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(u, v) for u, v in zip(wa, wb))


class Steps(keras.callbacks.Callback):
    """Records the callbacks' steps, their logs and the bar's step count."""

    def __init__(self, stop_at=None, interrupt_at=None):
        super().__init__()
        self.begins, self.ends, self.stop_at, self.interrupt_at = [], [], stop_at, interrupt_at

    def on_train_begin(self, logs=None):
        self.steps = self.params["steps"]

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((batch, dict(logs)))
        if batch == self.stop_at:
            self.model.stop_training = True
        if batch == self.interrupt_at:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "case",
    [
        # per step, a short tail window (47 = 11*4+3): the final call's conditional
        pytest.param(dict(), marks=pytest.mark.tf_in_full),
        # per series: the loss window peeled off (the same conditional: make test-full only)
        pytest.param(dict(per_series=True, t=44), marks=pytest.mark.slow),
        # unequal lengths, gradient accumulation
        pytest.param(dict(lengths=True, sync_every=2), marks=pytest.mark.tf_in_full),
        # per-series sums carried across chunks
        pytest.param(dict(per_series=True, lengths=True), marks=pytest.mark.tf_in_full),
    ],
    ids=["per-step-tail", "per-series", "lengths-sync2", "series-lengths"],
)
@pytest.mark.exact
def test_chunks_train_exactly_as_one_call(case):
    calls_one, calls_chunked = Steps(), Steps()
    one = fit(ONE_CALL, callbacks=[calls_one], **case)
    chunked = fit(2 if case.get("sync_every") else 3, callbacks=[calls_chunked], **case)
    # The chunked fit did run in several calls per minibatch (12 series, batch 6: 2 minibatches
    # per epoch, 2 epochs), the other in one.
    assert len(calls_one.ends) == 4
    assert len(calls_chunked.ends) >= 3 * len(calls_one.ends), len(calls_chunked.ends)
    assert same_weights(one, chunked)
    assert one.history_ == chunked.history_  # loss and metrics, to the last bit


@pytest.mark.tf_in_full
def test_each_chunk_is_a_step_of_the_bar_and_the_callbacks(capsys):
    # T = 40, windows of 4: 10 windows; 3 per call: 4 calls per minibatch, 2 minibatches.
    whole, chunks = Steps(), Steps()
    fit(ONE_CALL, t=40, epochs=1, callbacks=[whole])
    fit(3, t=40, epochs=1, callbacks=[chunks], verbose=1)
    assert whole.steps == 2 and whole.begins == [0, 1]
    assert chunks.steps == 8 and chunks.begins == list(range(8))
    assert [b for b, _ in chunks.ends] == list(range(8))
    # At each minibatch's end the logs are those of one call per minibatch.
    assert chunks.ends[3][1] == whole.ends[0][1] and chunks.ends[7][1] == whole.ends[1][1]
    # Inside a minibatch the loss moves (the mean of the windows trained so far).
    assert len({logs["loss"] for _, logs in chunks.ends[:4]}) == 4
    assert "8/8" in capsys.readouterr().out


@functools.cache
def truncated_reference(n_windows):
    """One call per minibatch on the first ``n_windows`` windows only (one minibatch, one
    epoch): what chunks [0, n_windows) of the whole series must leave."""
    x, y, _, _ = data(t=40)
    est = Estimator(
        model(),
        "mse",
        keras.optimizers.Adam(1e-2),
        epochs=1,
        batch_size=12,
        seq_len=4,
        shuffle=False,
        verbose=0,
        windows_per_call=ONE_CALL,
    )
    return est.fit(x[:, : 4 * n_windows], y[:, : 4 * n_windows])


def chunked_run(callbacks):
    x, y, _, _ = data(t=40)
    est = Estimator(
        model(),
        "mse",
        keras.optimizers.Adam(1e-2),
        epochs=3,
        batch_size=12,
        seq_len=4,
        shuffle=False,
        verbose=0,
        windows_per_call=3,
    )
    return est, x, y


@pytest.mark.tf_in_full
@pytest.mark.exact
def test_stop_training_acts_between_chunks():
    est, x, y = chunked_run(None)
    cb = Steps(stop_at=1)
    est.fit(x, y, callbacks=[cb])
    assert cb.begins == [0, 1] and est.n_epochs_ == 1
    assert same_weights(est, truncated_reference(6))


@pytest.mark.tf_in_full
@pytest.mark.exact
def test_ctrl_c_between_chunks_keeps_the_last_finished_chunk():
    est, x, y = chunked_run(None)
    with pytest.raises(KeyboardInterrupt):
        est.fit(x, y, callbacks=[Steps(interrupt_at=1)])
    ref = truncated_reference(6)
    assert same_weights(est, ref)
    np.testing.assert_array_equal(est.predict(x), ref.predict(x))


@pytest.mark.tf_in_full
@pytest.mark.exact
def test_ctrl_c_during_a_call_waits_for_its_update(monkeypatch):
    """SIGINT while a chunk runs: the call ends, its update is assigned (JAX donated the old
    buffers), then KeyboardInterrupt is raised; the weights are valid and up to date."""
    backend = trainer._backend()
    real, seen = backend.to_numpy, []

    def to_numpy(t):
        if len(seen) == 1:  # inside the second call's block
            signal.raise_signal(signal.SIGINT)  # (to this thread, now: not to any thread)
        out = real(t)
        seen.append("returned")  # not reached if Ctrl-C were raised at once
        return out

    monkeypatch.setattr(backend, "to_numpy", to_numpy)
    est, x, y = chunked_run(None)
    # Python's own Ctrl-C handler before the fit (a test runner's worker may have set another)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            est.fit(x, y)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(backend, "to_numpy", real)
    assert seen == ["returned", "returned"], seen
    ref = truncated_reference(6)
    assert same_weights(est, ref)
    np.testing.assert_array_equal(est.predict(x), ref.predict(x))


def sqrt_gap(yt, yp):
    """The squared error, plus nothing where ``y >= 0`` and NaN where ``y < 0``."""
    return keras.ops.mean(keras.ops.square(yt - yp), -1) + 0.0 * keras.ops.mean(
        keras.ops.sqrt(yt), -1
    )


@pytest.mark.tf_in_full  # make test: on JAX; make test-full: on both
@pytest.mark.exact
def test_nonfinite_window_is_counted_from_the_minibatch_start():
    x, y, _, _ = data(t=40)
    y = np.abs(y)
    y[:, 26] = -1.0  # window 7 (steps 24..27), in the third chunk of 3 windows
    runs = []
    for windows, _t in ((3, 40), (ONE_CALL, 24)):  # chunked; one call on windows 1..6
        runs.append(
            Estimator(
                model(),
                sqrt_gap,
                keras.optimizers.Adam(1e-2),
                epochs=1,
                batch_size=12,
                seq_len=4,
                shuffle=False,
                verbose=0,
                windows_per_call=windows,
            )
        )
    with pytest.raises(trainer.NonFiniteLossError, match="minibatch 1, window 7"):
        runs[0].fit(x, y)
    assert same_weights(runs[0], runs[1].fit(x[:, :24], y[:, :24]))


def test_windows_per_call_is_a_checked_hyper_parameter():
    est = Estimator(model(), windows_per_call="auto")
    assert est.get_params()["windows_per_call"] == "auto"
    assert Estimator(model()).get_params()["windows_per_call"] == "auto"
    x, y, _, _ = data()
    for bad, error in (("many", ValueError), (0, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="windows_per_call"):
            Estimator(model(), windows_per_call=bad).fit(x, y)


def test_auto_keeps_short_minibatches_one_call_and_cuts_long_ones():
    # The seed workload (LSTM(10), batch 20, windows of 10: 0.17 M per window) has 100
    # windows per minibatch: one call. A language model's 400 windows of 50 steps (32 streams,
    # ~120 k weights: 190 M per window) is cut into calls of about a second.
    assert calls.auto_windows(20 * 10 * 851) >= 100 * 5
    lm = calls.auto_windows(32 * 50 * 120_000)
    assert calls.MIN_WINDOWS_PER_CALL <= lm < 400
    whole = Steps()
    fit("auto", t=47, epochs=1, callbacks=[whole])
    assert whole.steps == 2  # 12 windows: one call per minibatch


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the row split is JAX's")
@pytest.mark.exact
def test_chunks_of_rows_split_over_devices_train_as_one_call():
    from keraseq.backend.jax import rows as kj

    rule = kj.MIN_WORK_PER_DEVICE
    kj.MIN_WORK_PER_DEVICE = 0
    try:
        for case in (dict(), dict(per_series=True, lengths=True)):
            before = kj.split_calls[0]
            one = fit(ONE_CALL, **case)
            middle = kj.split_calls[0]
            chunked = fit(3, **case)
            # Every call split: 2 epochs of 2 minibatches, then of several chunks each.
            assert middle - before == 4 and kj.split_calls[0] - middle > 8
            assert same_weights(one, chunked)
            assert one.history_["loss"] == chunked.history_["loss"]
            # The metrics' increments are summed over the devices per call: float rounding.
            np.testing.assert_allclose(one.history_["mae"], chunked.history_["mae"], rtol=1e-6)
    finally:
        kj.MIN_WORK_PER_DEVICE = rule


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's warning")
def test_no_retracing_warning_for_keraseqs_own_programs(caplog):
    """keraseq compiles a program per shape on purpose: TensorFlow's "triggered tf.function
    retracing" warning about them would point users at their own code (issue 32); about a
    user's own function it still comes."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 12, 3)).astype("float32")
    est = Estimator(
        keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(3, return_sequences=True)]),
        epochs=1,
        batch_size=8,
        seq_len=4,
        verbose=0,
    ).fit(x, x[..., :3])
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for t in range(5, 13):  # a new predict program per length
            est.predict(rng.normal(size=(3 + t % 3, t, 3)).astype("float32"))
        own = tf.function(lambda a: a * 2)
        for n in range(1, 9):
            own(tf.zeros((n,)))
    retracing = [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
    assert retracing and all("TensorFlowSteps" not in m for m in retracing), retracing
