"""``ratio_lines``: the summary ratios that ``bench_peers.py`` and ``bench_lm.py`` print."""

import statistics


def ratio_lines(stats: dict, systems: list) -> list[str]:
    """The fused loop's gain per backend, keraseq[jax] against torch and the JAX hand loop,
    keraseq[tensorflow] against torch, keraseq against the hand-written fused programs and
    those two against each other: each the second system's median s/epoch / the first's
    (> 1 = the first faster). A line for a pair whose systems ran; ``n/a`` when one of them
    has no result. Where both ran the same rounds (``stats[s]["rounds"]``: each round's median
    steady epoch), the ratio of each round too, the two systems' runs of one round side by
    side in time: its range says how much of a ratio is the machine's noise."""
    lines = []

    def ratio(label, num, den, note=""):
        if num not in systems or den not in systems:
            return
        if stats.get(num) and stats.get(den):
            value = f"{stats[num]['median'] / stats[den]['median']:.2f}x"
            a, b = stats[num].get("rounds") or [], stats[den].get("rounds") or []
            if len(a) == len(b) >= 2:
                per = sorted(x / y for x, y in zip(a, b))
                value += (
                    f" (per round {per[0]:.2f}-{per[-1]:.2f}x, median "
                    f"{statistics.median(per):.2f}x, {len(per)} rounds)"
                )
        else:
            value = "n/a"
        lines.append(f"{label} = {value}{note}")

    for be in ("jax", "tensorflow"):
        fused, unfused = f"keraseq[{be}]", f"keraseq[{be}]-unfused"
        ratio(f"fused gain: {fused} vs {unfused}", unfused, fused)
    threads = (stats.get("torch") or {}).get("threads")
    ratio(f"keraseq[jax] / torch ({threads or '?'} threads)", "torch", "keraseq[jax]")
    ratio("keraseq[jax] / torch (1 thread)", "torch-1t", "keraseq[jax]")
    ratio("keraseq[jax]-1dev / torch (1 thread)", "torch-1t", "keraseq[jax]-1dev")
    ratio("keraseq[jax] / jax hand loop", "jax", "keraseq[jax]", " (issue 29 target >= 1.0)")
    ratio(f"keraseq[tensorflow] / torch ({threads or '?'} threads)", "torch", "keraseq[tensorflow]")
    # bench_lm.py's hand-written fused programs: keraseq against the same maths by hand, and
    # TensorFlow's compiler against JAX's on that one program (one device each)
    ratio("keraseq[tensorflow] / tf fused loop (by hand)", "tf fused loop", "keraseq[tensorflow]")
    ratio("keraseq[jax] / jax fused loop (by hand, 1 device)", "jax fused loop", "keraseq[jax]")
    ratio("jax fused loop / tf fused loop (the same program)", "tf fused loop", "jax fused loop")
    ratio("tf fused loop / torch", "torch", "tf fused loop")
    return lines
