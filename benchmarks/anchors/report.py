"""Turns the suite's results into a markdown table, the issue's targets (pass/fail) and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Results = dict[str, Any]


def _phase(anchor: Results, name: str) -> Results:
    value = anchor.get(name)
    return value if isinstance(value, dict) else {}


def _number(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "–"


def _cell(anchor: Results, phase: str, key: str, digits: int) -> str:
    if anchor.get("status") == "unavailable":
        return "n/a"
    measured = _phase(anchor, phase)
    if "error" in measured:
        return "timed out" if "timed out" in str(measured["error"]) else "failed"
    text = _number(measured.get(key), digits)
    if measured.get("errors"):
        text += f" ({len(measured['errors'])} err)"
    return text


def _loaded_cell(anchor: Results) -> str:
    measured = _phase(anchor, "long_prompt")
    if anchor.get("status") == "unavailable" or not measured:
        return "n/a"
    if measured.get("loaded_ttft_s") is None:
        return "–" if "not applicable" in str(measured.get("loaded_error")) else "failed"
    text = f"{measured['loaded_ttft_s']:.2f}"
    if isinstance(measured.get("loaded_over_idle"), float):
        text += f" ({measured['loaded_over_idle']:.2f}× idle)"
    decoding = measured.get("background_still_decoding")
    if isinstance(decoding, int) and decoding < 8:
        text += f" [{decoding}/8 still decoding]"
    return text


def _rss_cell(anchor: Results) -> str:
    rss = anchor.get("peak_rss_mb")
    if not isinstance(rss, dict):
        return "n/a"
    return ", ".join(f"{name.removeprefix('node ')} {value:.0f}" for name, value in rss.items())


def table(results: Results) -> str:
    anchors: dict[str, Results] = results["anchors"]
    plan = results["plan"]
    columns = list(anchors.values())
    lines = [
        f"{results['date']} · {results['machine']} · {results['model']} · {results['dtype']} · "
        f"{results['threads_per_process']} threads per process · {results['mode']} run, "
        f"{plan['completion_tokens']} completion tokens, "
        f"load average at end {results.get('load_average_at_end')}",
        "",
        "| metric | " + " | ".join(str(a["label"]) for a in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        "| status | " + " | ".join(str(a["status"]) for a in columns) + " |",
        "| TTFT, 1 stream (s) | " + " | ".join(_cell(a, "single", "ttft_s", 3) for a in columns) + " |",
        "| decode ms/token, 1 stream | "
        + " | ".join(_cell(a, "single", "tpot_ms", 1) for a in columns)
        + " |",
    ]
    for streams in plan["concurrency"]:
        cells = [_cell(a, f"concurrent@{streams}", "aggregate_tok_s", 1) for a in columns]
        lines.append(
            f"| aggregate tok/s, {streams} stream{'s' if streams > 1 else ''} | " + " | ".join(cells) + " |"
        )
    long_tokens = plan["long_prompt_tokens"]
    idle = [_cell(a, "long_prompt", "idle_ttft_s", 2) for a in columns]
    lines.append(f"| TTFT {long_tokens}-token prompt, idle (s) | " + " | ".join(idle) + " |")
    loaded = [_loaded_cell(a) for a in columns]
    lines.append("| same, while 8 streams decode (s) | " + " | ".join(loaded) + " |")
    lines.append("| peak RSS (MB) | " + " | ".join(_rss_cell(a) for a in columns) + " |")
    lines.append("")
    for anchor in columns:
        remarks = list(anchor.get("notes") or [])
        if anchor.get("reason"):
            remarks.insert(0, f"{anchor['status']}: {anchor['reason']}")
        for name, measured in anchor.items():
            if isinstance(measured, dict) and measured.get("errors"):
                remarks.append(f"{name} errors: {'; '.join(measured['errors'])[:300]}")
            if isinstance(measured, dict) and measured.get("error"):
                remarks.append(f"{name}: {measured['error']}")
        if remarks:
            lines.append(f"- {anchor['label']}: " + "; ".join(str(r) for r in remarks))
    return "\n".join(lines)


def _aggregate(results: Results, key: str, streams: int) -> float | None:
    anchor = results["anchors"].get(key, {})
    value = _phase(anchor, f"concurrent@{streams}").get("aggregate_tok_s")
    return float(value) if isinstance(value, int | float) and anchor.get("status") == "ok" else None


def _single_tpot(results: Results, key: str) -> float | None:
    anchor = results["anchors"].get(key, {})
    value = _phase(anchor, "single").get("tpot_ms")
    return float(value) if isinstance(value, int | float) and anchor.get("status") == "ok" else None


def _check(label: str, value: float | None, floor: float | None = None, ceiling: float | None = None) -> str:
    if value is None:
        return f"- {label}: not measured"
    passed = (floor is None or value >= floor) and (ceiling is None or value <= ceiling)
    bound = f"≥ {floor}" if floor is not None else f"≤ {ceiling}"
    return f"- {label}: {value:.3g}× (target {bound}) {'PASS' if passed else 'FAIL'}"


def _paired_ratio(results: Results, key: str) -> float | None:
    measured = results.get("paired", {}).get(key, {})
    return float(measured["ratio"]) if measured.get("status") == "ok" else None


def paired_lines(results: Results) -> str:
    """One line per alternating-rounds measurement: medians, the ratio and each round."""
    lines = []
    for key, measured in results.get("paired", {}).items():
        if measured.get("status") != "ok":
            lines.append(f"- {key}: {measured.get('status')}: {measured.get('reason')}")
            continue
        rounds = ", ".join(
            f"{r['reference_tpot_ms']:.1f}/{r['ours_tpot_ms']:.1f}" for r in measured["rounds"]
        )
        lines.append(
            f"- {key} ({'; '.join(measured.get('notes') or [])}): transformers "
            f"{measured['reference_tpot_ms']:.1f} ms/token, ours {measured['ours_tpot_ms']:.1f} ms/token, "
            f"median ratio {measured['ratio']:.3f}× (rounds, transformers/ours ms: {rounds})"
        )
    return (
        "\n".join(["Single stream, 2 nodes and transformers in alternating rounds:", *lines]) if lines else ""
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def targets(results: Results) -> str:
    """The issue's 'done when' checks, computed from this run only."""
    top = max(results["plan"]["concurrency"])
    suffix = "" if top == 16 else f" (quick run: at {top} streams, not 16)"
    reference_tpot, two_tpot = _single_tpot(results, "transformers"), _single_tpot(results, "this_2")
    pinned_reference, pinned_two = (
        _single_tpot(results, "transformers_1core"),
        _single_tpot(results, "this_2_1core"),
    )
    long_prompt = _phase(results["anchors"].get("this_2", {}), "long_prompt").get("loaded_over_idle")
    lines = [
        "Targets (issue 5), this run:" + suffix,
        _check("2-node single-stream decode vs transformers generate", _ratio(reference_tpot, two_tpot), 0.9),
        _check("same, measured in alternating rounds", _paired_ratio(results, "paired"), 0.9),
        _check(
            "same, one core per process (each node on a core of its own, reference on one core)",
            _ratio(pinned_reference, pinned_two),
            0.9,
        ),
        _check("same, one core per process, alternating rounds", _paired_ratio(results, "paired_1core"), 0.9),
        _check(
            f"2 nodes, {top} streams vs our single stream",
            _ratio(_aggregate(results, "this_2", top), _aggregate(results, "this_2", 1)),
            6.0,
        ),
        _check(
            f"2 nodes, {top} streams vs Language Pipes 2.5.0",
            _ratio(_aggregate(results, "this_2", top), _aggregate(results, "lp250", top)),
            5.0,
        ),
        _check(
            f"1 node, {top} streams vs transformers serve --continuous-batching",
            _ratio(_aggregate(results, "this_1", top), _aggregate(results, "transformers_serve", top)),
            1.0,
        ),
        _check(
            "2 nodes, long-prompt TTFT under load vs idle",
            float(long_prompt) if isinstance(long_prompt, int | float) else None,
            ceiling=1.5,
        ),
    ]
    return "\n".join(lines)


def plot(results: Results, path: Path) -> None:
    """Aggregate tok/s against concurrent streams, one line per anchor that was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=110)
    concurrency = results["plan"]["concurrency"]
    for key, anchor in results["anchors"].items():
        points = [(c, _aggregate(results, key, c)) for c in concurrency]
        measured = [(c, v) for c, v in points if v is not None]
        if not measured:
            continue
        reference = key.startswith("transformers") and key != "transformers_serve"
        style = "--" if reference else "-"
        label = anchor["label"] + (" (batch = streams)" if reference else "")
        axes.plot([c for c, _ in measured], [v for _, v in measured], style, marker="o", label=label)
    missing = [a["label"] for a in results["anchors"].values() if a.get("status") != "ok"]
    axes.set_xscale("log", base=2)
    axes.set_xticks(concurrency, [str(c) for c in concurrency])
    axes.set_xlabel("concurrent streams")
    axes.set_ylabel("aggregate tok/s")
    title = f"{results['model']}, {results['threads_per_process']} threads/process, {results['mode']} run"
    axes.set_title(f"{title}\n{results['date']} · {results['machine']}", fontsize=8)
    if missing:
        figure.text(0.01, 0.01, "not measured: " + ", ".join(missing), fontsize=7)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path)
    pyplot.close(figure)
