"""The suite's figures: each one a ratio against a reference measured in the same run, with the absolute numbers."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen before pyplot loads

BEFORE, AFTER, REFERENCE = "#c0504d", "#2f6fad", "#7f7f7f"


def _save(figure, folder: Path, name: str, machine: str) -> Path:
    figure.text(0.99, 0.005, machine, ha="right", va="bottom", fontsize=7, color=REFERENCE)
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    path = folder / name
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def grpc_concurrency(grpc: dict, folder: Path, machine: str) -> Path:
    """p99 against concurrency for each injected latency, before and after; below, before/after."""
    latencies = grpc["plan"]["latencies_ms"]
    figure, axes = plt.subplots(2, len(latencies), figsize=(4.2 * len(latencies), 6.4), sharex=True,
                                gridspec_kw={"height_ratios": [2, 1]}, squeeze=False)
    for column, latency in enumerate(latencies):
        rows = [row for row in grpc["rows"] if row["latency_ms"] == latency]
        concurrency = [row["concurrency"] for row in rows]
        top, bottom = axes[0][column], axes[1][column]
        top.plot(concurrency, [row["before"]["p99_ms"] for row in rows], "o-", color=BEFORE,
                 label="before: sync QdrantClient via asyncio.to_thread")
        top.plot(concurrency, [row["after"]["p99_ms"] for row in rows], "o-", color=AFTER,
                 label="after: AsyncQdrantClient (gRPC)")
        for row in rows:
            for design, colour in (("before", BEFORE), ("after", AFTER)):
                top.annotate(f"{row[design]['p99_ms']:.0f}", (row["concurrency"], row[design]["p99_ms"]),
                             textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7, color=colour)
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_title(f"injected server latency {latency} ms")
        top.set_ylabel("p99 from launch (ms)")
        top.grid(True, which="both", alpha=0.3)
        bottom.plot(concurrency, [row["p99_ratio"] for row in rows], "o-", color="black")
        for row in rows:
            bottom.annotate(f"{row['p99_ratio']:.1f}x", (row["concurrency"], row["p99_ratio"]),
                            textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        bottom.axhline(1.0, color=REFERENCE, linestyle="--", linewidth=1)
        bottom.set_ylabel("p99 before / after")
        bottom.set_xlabel("concurrent query_points")
        bottom.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    figure.suptitle(f"Qdrant client design, {grpc['points']} points x {grpc['dimensions']} dims, filtered query, "
                    f"loopback gRPC server")
    return _save(figure, folder, "grpc_p99_vs_concurrency.png", machine)


def grpc_throughput(grpc: dict, folder: Path, machine: str) -> Path:
    """Throughput at 100 and 500 concurrent per latency, before and after, with after/before."""
    rows = [row for row in grpc["rows"] if row["concurrency"] in (100, 500)]
    labels = [f"{row['latency_ms']} ms\n{row['concurrency']} conc." for row in rows]
    positions = range(len(rows))
    figure, axis = plt.subplots(figsize=(1.4 * len(rows) + 2, 4.6))
    width = 0.38
    before = [row["before"]["throughput_per_s"] for row in rows]
    after = [row["after"]["throughput_per_s"] for row in rows]
    axis.bar([p - width / 2 for p in positions], before, width, color=BEFORE, label="before (to_thread)")
    axis.bar([p + width / 2 for p in positions], after, width, color=AFTER, label="after (AsyncQdrantClient)")
    for p, row in zip(positions, rows):
        axis.annotate(f"{row['before']['throughput_per_s']:.0f}", (p - width / 2, before[p]), ha="center",
                      va="bottom", fontsize=7)
        axis.annotate(f"{row['after']['throughput_per_s']:.0f}\n{row['throughput_ratio']:.1f}x", (p + width / 2, after[p]),
                      ha="center", va="bottom", fontsize=7)
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_ylabel("queries per second (burst)")
    axis.set_ylim(0, max(after + before) * 1.25)
    axis.set_title("Throughput of a burst: before vs after (label: after / before)")
    axis.legend(fontsize=8)
    axis.grid(True, axis="y", alpha=0.3)
    return _save(figure, folder, "grpc_throughput.png", machine)


def service_kb_size(service: dict, folder: Path, machine: str) -> Path:
    """100 concurrent searches: p99 and the floor against KB size; below, p99 / floor."""
    rows = [row for row in service["results"] if not row.get("skipped")]
    sizes = [row["size"] for row in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.4), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for key, colour, label in (("p99_ms", AFTER, "p99 of 100 concurrent searches, from launch"),
                               ("p50_ms", "#86a9cf", "p50"),
                               ("floor_ms", REFERENCE, "floor: one model call for 100 + 100 bare queries")):
        values = [row["concurrent"][key] for row in rows]
        top.plot(sizes, values, "o-", color=colour, label=label)
        for size, value in zip(sizes, values):
            top.annotate(f"{value:.0f}", (size, value), textcoords="offset points", xytext=(0, 5), ha="center",
                         fontsize=7, color=colour)
    top.set_xscale("log")
    top.set_ylabel("ms")
    top.set_ylim(bottom=0)
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    top.set_title("Service level: SearchService.semantic_search x 100, embedded Qdrant Edge")
    ratios = [row["concurrent"]["ratio"] for row in rows]
    bottom.plot(sizes, ratios, "o-", color="black")
    for size, ratio in zip(sizes, ratios):
        bottom.annotate(f"{ratio:.2f}", (size, ratio), textcoords="offset points", xytext=(0, 5), ha="center",
                        fontsize=7)
    bottom.axhline(1.0, color=REFERENCE, linestyle="--", linewidth=1)
    bottom.set_ylabel("p99 / floor")
    bottom.set_xlabel("chunks in the knowledge base")
    bottom.grid(True, which="both", alpha=0.3)
    return _save(figure, folder, "service_p99_vs_kb_size.png", machine)


def ingestion(result: dict, folder: Path, machine: str) -> Path:
    figure, axis = plt.subplots(figsize=(5.5, 4))
    values = [result["embedder_chunks_per_s"], result["worker_chunks_per_s"]]
    axis.bar(["embedder alone\n(reference)", "end to end\nthrough the worker"], values, color=[REFERENCE, AFTER])
    axis.annotate(f"{values[0]:.1f}", (0, values[0]), ha="center", va="bottom", fontsize=8)
    axis.annotate(f"{values[1]:.1f} ({result['ratio']:.0%})", (1, values[1]), ha="center", va="bottom", fontsize=8)
    axis.set_ylabel("chunks per second")
    axis.set_ylim(0, max(values) * 1.2)
    axis.set_title(f"Ingestion: {result['chunks']} chunks of up to {result['chunk_tokens']} tokens")
    axis.grid(True, axis="y", alpha=0.3)
    return _save(figure, folder, "ingestion.png", machine)


def http(result: dict, folder: Path, machine: str) -> Path:
    names = ["health", "semantic", "hybrid"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    rates = [result[name]["requests_per_s"] for name in names]
    left.bar(names, rates, color=[REFERENCE, AFTER, "#5b9bd5"])
    for index, rate in enumerate(rates):
        left.annotate(f"{rate:.0f}/s\n{rate / rates[0]:.2f}x health", (index, rate), ha="center", va="bottom",
                      fontsize=8)
    left.set_ylim(0, max(rates) * 1.25)
    left.set_ylabel("requests per second")
    left.set_title(f"{result['clients']} clients for {result['seconds']:g} s, uvicorn, 1 worker")
    left.grid(True, axis="y", alpha=0.3)
    width = 0.38
    for offset, key, colour in ((-width / 2, "p50_ms", "#86a9cf"), (width / 2, "p99_ms", AFTER)):
        values = [result[name][key] or 0 for name in names]
        right.bar([i + offset for i in range(len(names))], values, width, color=colour, label=key.replace("_ms", ""))
        for index, value in enumerate(values):
            right.annotate(f"{value:.0f}", (index + offset, value), ha="center", va="bottom", fontsize=7)
    right.set_xticks(range(len(names)), [f"{n}\nerrors {result[n]['errors']}" for n in names])
    right.set_ylabel("latency per request (ms)")
    right.legend(fontsize=8)
    right.grid(True, axis="y", alpha=0.3)
    right.set_title("latency")
    return _save(figure, folder, "http.png", machine)
