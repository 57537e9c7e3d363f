"""``python -m bench``: measure the whole path against baselines; print the table, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import compileall
import datetime
import platform
import sys
import tempfile
from pathlib import Path

import gradio
import torch
import transformers
from gradio_client import Client

from bench import batching, gate, gpu, models, relay, server, serving, streaming
from bench.stats import Row, Sample, table

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {len(__import__('os').sched_getaffinity(0))} cores, {mem:.0f} GiB; GPU: {gpu}. "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"gradio {gradio.__version__}."
    )


STREAMING = (  # model id, label, tokens, target
    ("tiny-llama", "99k-vocab Llama", 256, 0.95),
    ("tiny-mixtral", "2.2k-vocab Mixtral MoE", 1024, 0.90),
)


def _ms(sample: Sample) -> Sample:
    return Sample(tuple(v * 1000 for v in sample.values))


def streaming_rows(url: str, paths: dict[str, Path], runs: int) -> list[Row]:
    client = Client(url, verbose=False)
    _, receipt = client.predict(**gate.API_FORM, api_name="/accept_terms")
    floor = _ms(streaming.trivial_first_update(runs))
    rows = []
    for model_id, label, max_new, target in STREAMING:
        pairs = streaming.compare(client, url, receipt, model_id, paths[model_id], max_new, runs)
        ratio = pairs.ratio.median
        rows.append(
            Row(
                f"1. streaming, {label}, {pairs.tokens} tokens: tok/s a gradio_client consumer receives",
                f"{pairs.served_tok_s.show()} in {pairs.updates.median:.0f} updates",
                f"generate(): {pairs.plain_tok_s.show()}",
                pairs.ratio.show("{:.3f}"),
                f"≥ {target:.2f}",
                ratio >= target,
            )
        )
        rows.append(
            Row(
                f"1b. streaming, {label}: the same over Gradio's HTTP stream (curl, JavaScript clients)",
                f"{pairs.http_tok_s.show()}",
                f"generate(): {pairs.plain_tok_s.show()}",
                pairs.http_ratio.show("{:.3f}"),
                f"≥ {target:.2f}",
                pairs.http_ratio.median >= target,
            )
        )
        inside = streaming.in_process(model_id, paths[model_id], max_new, runs)
        for key, where in (("loop", "the decoding loop and sampler alone"),
                           ("engine", "Inference.stream: the model's thread, the mailbox, merged updates")):  # fmt: skip
            rows.append(
                Row(
                    f"1c. streaming, {label}, in-process (where a lone visitor's time goes): {where}",
                    f"{inside[key].show('{:.3f}')} of generate()",
                    "generate(): 1.000",
                    inside[key].show("{:.3f}"),
                    "(reported)",
                    True,
                )
            )
        prefill = _ms(pairs.prefill_s)
        http = _ms(streaming.http_first_update(url, model_id, receipt, max_new, runs))
        overhead = http.median - prefill.median
        rows.append(
            Row(
                f"2. time to first token, {label}, over HTTP (ms)",
                http.show(),
                f"prefill in generate(): {prefill.show()}",
                f"+{overhead:.1f} ms",
                "≤ +50 ms",
                overhead <= 50,
            )
        )
        client_first = _ms(pairs.first_update_s)
        rows.append(
            Row(
                f"2b. time to first token, {label}, through gradio_client (ms)",
                client_first.show(),
                f"trivial endpoint through gradio_client: {floor.show()}",
                f"+{client_first.median - prefill.median:.1f} ms over prefill, of which the client's floor is {floor.median:.0f}",
                "(reported)",
                True,
            )
        )
    return rows


def gate_rows(url: str, data_dir: Path) -> list[Row]:
    m = gate.micro(data_dir)
    rate, expected, stored, intact = gate.concurrent_http(url, data_dir / "llmjp-demo.sqlite3")
    return [
        Row("3a. gate check per request, p50 / p99 (ms)", "{:.3f} / {:.3f}".format(*m["check"]),
            "SELECT 1: {:.3f} / {:.3f}".format(*m["check_baseline"]), f"p99 {m['check'][1]:.3f} ms", "p99 ≤ 2 ms",
            m["check"][1] <= 2),
        Row("3b. recording an acceptance, p50 / p99 (ms)", "{:.2f} / {:.2f}".format(*m["record"]),
            "plain INSERT: {:.2f} / {:.2f}".format(*m["record_baseline"]), f"p99 {m['record'][1]:.2f} ms",
            "p99 ≤ 20 ms", m["record"][1] <= 20),
        Row("3c. 32 clients accepting at once over HTTP", f"{rate:.0f} events/s", f"{expected} sent",
            f"{stored} stored, chain {'intact' if intact else 'BROKEN'}", "zero lost", stored == expected and intact),
    ]  # fmt: skip


def startup_rows(data_dir: Path, runs: int) -> list[Row]:
    """Process start to HTTP 200: a first start (no database yet) and a restart, each beside hello-world."""
    # Installed packages come with their bytecode compiled (pip does it); a checkout's own modules
    # get theirs on the first start, unless PYTHONDONTWRITEBYTECODE forbids it (as on this machine).
    for package in ("webapp", "db", "inference"):
        compileall.compile_dir(ROOT / package, quiet=1)
    compileall.compile_file(ROOT / "app.py", quiet=1)
    first, again, plain, mem, plain_mem, idle, plain_idle = [], [], [], [], [], [], []
    kept = data_dir / "kept"
    server.app(kept).stop()  # the database a restart finds
    for n in range(runs):
        p = server.plain_gradio()
        plain.append(p.ready_s)
        plain_mem.append(server.rss_mib(p.process.pid))
        plain_idle.append(server.idle_cpu(p.process.pid) * 100)
        p.stop()
        s = server.app(data_dir / f"cold{n}")
        first.append(s.ready_s)
        s.stop()
        s = server.app(kept)
        again.append(s.ready_s)
        mem.append(server.rss_mib(s.process.pid))
        idle.append(server.idle_cpu(s.process.pid) * 100)
        s.stop()
    # Each start against the hello-world start just before it: a busy moment of the machine slows
    # the starts next to each other, where medians taken apart would set a busy moment against a quiet one.
    rows = []
    for label, times in (("first start, new database", first), ("restart, database kept", again)):
        t = Sample(tuple(times))
        ratio = Sample(tuple(a / b for a, b in zip(times, plain, strict=True)))
        rows.append(
            Row(f"4a. cold start, {label}: process start to HTTP 200 (s)", t.show("{:.2f}"),
                f"hello-world Gradio: {Sample(tuple(plain)).show('{:.2f}')}", ratio.show("{:.2f}×"), "≤ 1.3×",
                ratio.median <= 1.3)
        )  # fmt: skip
    m = Sample(tuple(mem))
    rows.append(
        Row("4b. idle memory, no model loaded (MiB RSS)", m.show("{:.0f}"),
            f"hello-world Gradio: {Sample(tuple(plain_mem)).show('{:.0f}')}", f"{m.median:.0f} MiB", "(reported)", True)
    )  # fmt: skip
    # At rest the server's only work is waiting: what it spends then is taken from the model's threads
    # on a CPU machine (Gradio's queue alone polls every millisecond, see webapp/boundary/serving.py).
    c = Sample(tuple(idle))
    rows.append(
        Row("4c. CPU at rest, no model loaded (% of one core)", c.show("{:.1f}"),
            f"hello-world Gradio: {Sample(tuple(plain_idle)).show('{:.1f}')}", f"{c.median:.1f} %", "(reported)", True)
    )  # fmt: skip
    return rows


SECTIONS = ("streaming", "gate", "startup", "batching", "concurrency", "models", "real", "relay", "gpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="repetitions per measurement (median and spread)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)} (default: all)"
    )
    parser.add_argument("--smoke", action="store_true", help="gpu section: tiny shapes on the CPU (the tests run it)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(chosen) - set(SECTIONS):
        parser.error(f"unknown sections: {sorted(unknown)}")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="llmjp-bench-") as tmp:
        data_dir = Path(tmp)
        if "streaming" in chosen or "gate" in chosen:
            paths = {
                "tiny-llama": models.real_vocab_llama(data_dir / "llama-99k"),
                "tiny-mixtral": models.small_vocab_mixtral(data_dir / "mixtral-2k"),
            }
            app = server.app(data_dir, {model_id: str(path) for model_id, path in paths.items()})
            try:
                if "streaming" in chosen:
                    rows += streaming_rows(app.url, paths, args.runs)
                if "gate" in chosen:
                    rows += gate_rows(app.url, data_dir)
            finally:
                app.stop()
        sections = {
            "startup": lambda: startup_rows(data_dir, max(args.runs, 5)),
            "batching": lambda: batching.rows(models.llama_110m(data_dir / "llama-110m")),
            "concurrency": lambda: serving.concurrency_rows(data_dir, min(args.runs, 3)),
            "models": lambda: serving.two_models_rows(data_dir) + serving.download_rows(data_dir),
            # Each run of the real shape is one pair (about 25 s): more pairs, a steadier ratio.
            "real": lambda: serving.real_shape_rows(data_dir, min(args.runs, 7)),
            "relay": lambda: relay.rows(data_dir),
            "gpu": lambda: gpu.rows(data_dir, smoke=args.smoke),
        }
        for name, measure in sections.items():
            if name not in chosen:
                continue
            try:
                rows += measure()
            except Exception as exc:  # one section failing must not lose the others' rows
                rows.append(Row(f"{name}: failed", f"{type(exc).__name__}: {exc}"[:200], "", "", "", False))

    result = table(rows)
    print(result)
    write(args.output, result)
    failed = [r.metric for r in rows if r.met is False]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rows met or reported; not met: {failed or 'none'}")
    return 0


def write(path: Path, result: str) -> None:
    """Replace the results section of BENCHMARKS.md, keeping the notes below it."""
    header = (
        "# Benchmarks\n\n"
        "Produced by `./dev bench` (`python -m bench`). Every row compares the project with a baseline measured\n"
        "in the same run on the same model and prompt; figures are medians over several runs, with the spread\n"
        "(min–max) in brackets.\n\n"
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- Machine: {machine()}\n\n"
    )
    notes = ""
    if path.exists() and "\n## Notes" in path.read_text(encoding="utf-8"):
        notes = path.read_text(encoding="utf-8").split("\n## Notes", 1)[1]
        notes = "\n## Notes" + notes
    path.write_text(header + "## Results\n\n" + result + "\n" + notes, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
