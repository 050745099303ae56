"""The results table (Markdown, aligned for a terminal) and the notes under it."""
from __future__ import annotations

from benchmarks.timing import LOSS_RTOL, loss_agreement

HEADER = ("workload", "contender", "median ms/step", "± (IQR/2)", "ratio to fusegrad",
          "ratio to GEMM floor", "compile s", "loss check", "status")


def _ms(seconds):
    return "-" if seconds is None else f"{1e3 * seconds:.3f}" if seconds < 0.01 \
        else f"{1e3 * seconds:.2f}"


def _ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def rows_for(workload, results):
    by_name = {r.name: r for r in results}
    fg = by_name.get("fusegrad")
    floor = by_name.get("GEMMs alone")
    fg_med = fg.median if fg and fg.ok else None
    floor_med = floor.median if floor and floor.ok else None
    agreement, ref = loss_agreement(results)
    rows = []
    for r in results:
        med = r.median if r.ok else None
        spread = r.spread() if r.ok else None
        if r.is_floor or not r.losses:
            check = "-"
        elif r.name == ref:
            check = "reference"
        else:
            rel, good = agreement.get(r.name, (None, False))
            check = f"ok {rel:.0e}" if good else f"WARN {rel:.1e}"
        rows.append((
            workload.name, r.name, _ms(med),
            "-" if spread is None else f"{100 * spread:.1f}%",
            _ratio(med, fg_med), _ratio(med, floor_med),
            "-" if r.compile_seconds is None or r.is_floor else f"{r.compile_seconds:.2f}",
            check, "ok" if r.ok else r.status,
        ))
    return rows


def format_table(rows) -> str:
    table = [HEADER] + list(rows)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(HEADER))]
    right = {2, 3, 4, 5, 6}

    def line(row):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(HEADER), sep] + [line(r) for r in table[1:]])


def notes_for(workload, results) -> list[str]:
    out = [f"{workload.name}: {workload.title}"]
    for r in results:
        if r.ok and (r.details or r.block):
            out.append(f"  {r.name}: {r.details + '; ' if r.details else ''}"
                       f"{r.rounds} rounds x {r.block} steps")
    agreement, ref = loss_agreement(results)
    bad = [n for n, (_, good) in agreement.items() if not good]
    if bad:
        losses = {r.name: r.losses for r in results if r.losses}
        out.append(f"  WARNING: losses differ from {ref}'s by more than {LOSS_RTOL:g} relative: "
                   + "; ".join(f"{n} {['%.6f' % v for v in losses[n]]}" for n in bad)
                   + f" vs {ref} {['%.6f' % v for v in losses[ref]]}")
    return out


def failures(all_results) -> list[str]:
    """Traceback summaries (last frames and the error) of every failed contender."""
    out = []
    for workload, results in all_results:
        for r in results:
            if r.traceback:
                tail = r.traceback.strip().splitlines()[-12:]
                out.append(f"--- {workload.name} / {r.name}: {r.status}")
                out += ["    " + t for t in tail]
    return out


def scaling_table(by_threads: dict) -> str:
    """Each workload's and contender's median step time per thread count, and its speed-up
    over the first count (run.py --threads 1 2 ...)."""
    counts = list(by_threads)
    base = counts[0]
    medians: dict = {}
    for n, all_results in by_threads.items():
        for w, results in all_results:
            for r in results:
                medians.setdefault((w.name, r.name), {})[n] = r.median if r.ok else None
    head = ["workload", "contender"] + [f"{n} thr ms" for n in counts] + \
        [f"x{n}/{base}" for n in counts[1:]]
    rows = []
    for (wname, cname), by_n in medians.items():
        row = [wname, cname] + [_ms(by_n.get(n)) for n in counts]
        for n in counts[1:]:
            a, b = by_n.get(base), by_n.get(n)
            row.append(f"{a / b:.2f}" if a and b else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if k < 2 else f"{{:>{w}}}" for k, w in enumerate(widths))
    lines = [f"scaling: median step time per thread count, speed-up over {base} thread(s)",
             fmt.format(*head)] + [fmt.format(*r) for r in rows]
    return "\n".join(lines)
