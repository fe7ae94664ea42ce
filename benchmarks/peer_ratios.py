"""``ratio_lines``: the summary ratios that ``bench_peers.py`` and ``bench_lm.py`` print."""


def ratio_lines(stats: dict, systems: list) -> list[str]:
    """The fused loop's gain per backend, keraseq[jax] against torch and the JAX hand loop:
    each the other system's median s/epoch / keraseq's (> 1 = keraseq faster). A line for a
    pair whose systems ran; ``n/a`` when one of them has no result."""
    lines = []

    def ratio(label, num, den, note=""):
        if num not in systems or den not in systems:
            return
        if stats.get(num) and stats.get(den):
            value = f"{stats[num]['median'] / stats[den]['median']:.2f}x"
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
    return lines
