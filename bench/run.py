"""Benchmark the gateway against direct-to-upstream and a minimal aiohttp pass-through proxy.

Starts a fast fixed-answer upstream (bench/upstream.py), the pass-through proxy
(bench/passthrough.py) and the gateway twice: as the README starts it
(`first-proxy serve -c bench/gateway.yaml`, its default log level, so with the access log
on) and quiet (`--log-level warning`, no access log); both with API-key auth and the
request log in SQLite. The proxies are pinned to one core (--proxy-core) and loaded one at
a time; the upstream and the load generators share another core (--load-core). Throughput,
plain and streamed, is measured in alternating rounds (pass-through, gateway, quiet
gateway, ...) so that drift in the machine's speed hits all alike. Prints markdown tables,
ready to paste into docs/benchmark.md, and whether each target is met. Loopback only; stops
by itself (about 4 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import LoadResult, TtftResult, find_wrk, measure_ttft, pin, run_wrk  # noqa: E402

KEY = "bench-key-not-a-secret"
WRONG_KEY = "not-the-bench-key"
BODY = (b'{"model": "bench-model", "messages": [{"role": "user", "content": '
        b'"Say hello in sixteen words."}], "max_tokens": 16}')
STREAM_BODY = BODY[:-1] + b', "stream": true}'
#: Milliseconds between streamed events in the time-to-first-token run.
TOKEN_INTERVAL_MS = 20
PACED_BODY = STREAM_BODY[:-1] + f', "bench_token_interval_ms": {TOKEN_INTERVAL_MS}}}'.encode()

#: The targets the gateway must meet.
GOALS = {
    "throughput": 0.80,  # of the pass-through proxy's requests/s, non-streaming, c=64
    "stream": 0.80,      # of the pass-through proxy's streams/s, c=64
    "latency": 1.0,      # ms added to the direct p50, non-streaming, c=1
    "ttft": 2.0,         # ms added to the direct p50 time to first token, streaming, c=16
    "rss": 80.0,         # MB resident after the run
}


def _median(results: list[LoadResult]) -> LoadResult:
    """The result with the median requests/s."""
    ranked = sorted(results, key=lambda r: r.rps)
    return ranked[(len(ranked) - 1) // 2]


@dataclass
class Row:
    name: str
    rounds: list[LoadResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    stream_rounds: list[LoadResult] = field(default_factory=list)
    stream_cpu_us: list[float] = field(default_factory=list)
    latency: LoadResult | None = None
    ttft: TtftResult | None = None
    rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> LoadResult:
        return _median(self.rounds)

    @property
    def stream(self) -> LoadResult:
        return _median(self.stream_rounds)

    def failures(self) -> int:
        results = [*self.rounds, *self.stream_rounds, self.latency, self.ttft]
        return sum(r.errors for r in results if r is not None)


class Process:
    """A child process pinned to one core, its output in a log file, stopped on exit."""

    def __init__(self, name: str, command: list[str], core: int | None, workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin(core),
                env={**os.environ, **(env or {})}, cwd=HERE.parent)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:g} s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """User and system CPU time used so far, all threads."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident set size in MB (10^6 bytes)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Bench:
    """The load runs, with the settings from the command line."""

    def __init__(self, args: argparse.Namespace, wrk: str, workdir: Path) -> None:
        self.args = args
        self.wrk = wrk
        self.workdir = workdir

    def load(self, url: str, body: bytes, connections: int, seconds: float) -> LoadResult:
        return run_wrk(self.wrk, url, body, KEY, connections=connections, seconds=seconds,
                       workdir=self.workdir, core=self.args.load_core)

    def throughput(self, row: Row, url: str, process: Process | None = None, *,
                   stream: bool = False) -> None:
        """One round at 64 connections, plain or streamed, and the proxy's CPU per request."""
        before = process.cpu_seconds() if process else 0.0
        result = self.load(url, STREAM_BODY if stream else BODY, 64, self.args.duration)
        rounds, cpu = (row.stream_rounds, row.stream_cpu_us) if stream else (row.rounds, row.cpu_us)
        if process:
            cpu.append((process.cpu_seconds() - before) / max(result.requests, 1) * 1e6)
        rounds.append(result)

    def rounds(self, proxies: list[tuple[Row, str, Process]], count: int, *,
               stream: bool) -> None:
        """``count`` rounds, each loading every proxy in turn."""
        for i in range(count):
            for row, url, process in proxies:
                self.throughput(row, url, process, stream=stream)
            results = [(row.stream_rounds if stream else row.rounds)[-1] for row, _, _ in proxies]
            print(f"  round {i + 1}: " + ", ".join(
                f"{row.name} {r.rps:,.0f} req/s" for (row, _, _), r in zip(proxies, results)),
                flush=True)

    def the_rest(self, row: Row, url: str) -> None:
        """Latency at c=1 and time to first token at c=16."""
        short = self.args.short
        print(f"  {row.name}: non-streaming, 1 connection, {short:g} s", flush=True)
        row.latency = self.load(url, BODY, 1, short)
        print(f"  {row.name}: time to first token, 16 connections, {short:g} s", flush=True)
        row.ttft = measure_ttft(url, PACED_BODY, KEY, concurrency=16, seconds=short)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def versions(wrk: str) -> str:
    """The versions the figures depend on, from the running interpreter's environment."""
    found = []
    for name in ("first-proxy", "aiohttp", "aiosqlite", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    found.append(f"SQLite {sqlite3.sqlite_version}")
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    words = (done.stdout or done.stderr).split()
    if words[:1] == ["wrk"] and len(words) > 1:
        found.append(f"wrk {words[1]}")
    return ", ".join(found)


def post(url: str, body: bytes, key: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def smoke(url: str) -> None:
    """One plain and one streamed request must come back whole before any load is sent."""
    status, body = post(url, BODY, KEY)
    if status != 200 or b'"chat.completion"' not in body:
        raise RuntimeError(f"{url}: expected a chat completion, got {status}: {body[:300]!r}")
    status, body = post(url, STREAM_BODY, KEY)
    if status != 200 or not body.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"{url}: expected a whole SSE stream, got {status}: {body[:300]!r}")


def gateway_command() -> list[str]:
    """``first-proxy``, from the running interpreter's environment when it has one."""
    beside = Path(sys.executable).parent / "first-proxy"
    found = str(beside) if beside.exists() else shutil.which("first-proxy")
    if found:
        return [found]
    return [sys.executable, "-c", "from first_proxy.cli import main; main()"]


def run(args: argparse.Namespace, wrk: str, workdir: Path) -> list[Row]:
    bench = Bench(args, wrk, workdir)
    direct, passthrough = Row("direct to upstream"), Row("pass-through proxy")
    gateway, quiet = Row("gateway"), Row("gateway, --log-level warning")
    ports = {name: free_port() for name in ("upstream", "passthrough", "gateway", "quiet")}
    upstream_url = f"http://127.0.0.1:{ports['upstream']}/v1"
    stores = {name: workdir / f"{name}.db" for name in ("gateway", "quiet")}

    def serve(name: str, *options: str) -> Process:
        """The gateway, started as the README starts it, plus ``options``."""
        return Process(name, [*gateway_command(), "serve", "--config", str(HERE / "gateway.yaml"),
                              "--port", str(ports[name]), *options],
                       args.proxy_core, workdir, env={"BENCH_UPSTREAM_URL": upstream_url,
                                                      "BENCH_STORE": str(stores[name]),
                                                      "BENCH_API_KEY": KEY})

    processes = [
        Process("upstream", [sys.executable, str(HERE / "upstream.py"), "--port",
                             str(ports["upstream"]), "--tokens", str(args.tokens)],
                args.load_core, workdir),
        Process("passthrough", [sys.executable, str(HERE / "passthrough.py"), "--port",
                                str(ports["passthrough"]), "--upstream", upstream_url],
                args.proxy_core, workdir),
        serve("gateway"),
        serve("quiet", "--log-level", "warning"),
    ]
    _, passthrough_process, gateway_process, quiet_process = processes
    try:
        for process, port in zip(processes, ports.values()):
            process.wait_ready(f"http://127.0.0.1:{port}/health")
        urls = {name: f"http://127.0.0.1:{port}/v1/chat/completions"
                for name, port in ports.items()}
        for url in urls.values():
            smoke(url)
        for name in ("gateway", "quiet"):
            status, body = post(urls[name], BODY, WRONG_KEY)
            if status != 401:
                raise RuntimeError(f"{name}: expected 401 for a wrong key, got {status}: "
                                   f"{body[:200]!r}")

        print("direct to the upstream", flush=True)
        bench.load(urls["upstream"], BODY, 64, args.warmup)
        bench.throughput(direct, urls["upstream"])
        bench.throughput(direct, urls["upstream"], stream=True)
        bench.the_rest(direct, urls["upstream"])

        proxies = [(passthrough, urls["passthrough"], passthrough_process),
                   (gateway, urls["gateway"], gateway_process),
                   (quiet, urls["quiet"], quiet_process)]
        print(f"warm-up, then {args.rounds} alternating rounds of non-streaming load, "
              f"64 connections, {args.duration:g} s each", flush=True)
        for _, url, _ in proxies:
            bench.load(url, BODY, 64, args.warmup)
        bench.rounds(proxies, args.rounds, stream=False)
        print(f"{args.stream_rounds} alternating rounds of streaming load, 64 connections, "
              f"{args.duration:g} s each", flush=True)
        bench.rounds(proxies, args.stream_rounds, stream=True)
        for row, url, process in proxies:
            print(row.name, flush=True)
            bench.the_rest(row, url)
            row.rss_mb = process.rss_mb()
    finally:
        for process in reversed(processes):
            process.stop()
    for row, name in ((gateway, "gateway"), (quiet, "quiet")):
        with sqlite3.connect(stores[name]) as db:
            logged = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        row.notes.append(f"{logged:,} request-log rows written to SQLite")
    access_lines = sum(1 for line in gateway_process.log.read_text(errors="replace").splitlines()
                       if " id=" in line and " tokens=" in line)
    gateway.notes.append(f"{access_lines:,} access-log lines written")
    for row in (direct, passthrough, gateway, quiet):
        if row.failures():
            row.notes.append(f"{row.failures()} failed request(s)")
    return [direct, passthrough, gateway, quiet]


def _ms(value: float) -> str:
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = ["| | req/s, c=64 | p50 ms | p99 ms | CPU µs/req | stream req/s, c=64 "
             "| CPU µs/stream | p50 ms, c=1 | p99 ms, c=1 | TTFT p50 ms, c=16 "
             "| TTFT p99 ms, c=16 | RSS MB |",
             "|---|" + "---:|" * 11]
    for r in rows:
        t, s, lat, f = r.throughput, r.stream, r.latency, r.ttft
        assert lat is not None and f is not None
        cpu = f"{statistics.median(r.cpu_us):.0f}" if r.cpu_us else "-"
        stream_cpu = f"{statistics.median(r.stream_cpu_us):.0f}" if r.stream_cpu_us else "-"
        rss = "-" if r.rss_mb is None else f"{r.rss_mb:.1f}"
        lines.append(
            f"| {r.name} | {t.rps:,.0f} | {_ms(t.p50_ms)} | {_ms(t.p99_ms)} | {cpu} "
            f"| {s.rps:,.0f} | {stream_cpu} | {_ms(lat.p50_ms)} | {_ms(lat.p99_ms)} "
            f"| {_ms(f.p50_ms)} | {_ms(f.p99_ms)} | {rss} |")
    return "\n".join(lines)


def _ratio(passthrough: list[LoadResult], proxy: list[LoadResult]) -> tuple[float, str]:
    """The median of the rounds' ratios, and each round's.

    Each round pairs a pass-through run with the proxy's run right after it; the median of
    the rounds' ratios is robust to a machine whose speed drifts during the benchmark.
    """
    ratios = [g.rps / p.rps for p, g in zip(passthrough, proxy)]
    return statistics.median(ratios), ", ".join(f"{r:.0%}" for r in ratios)


def verdicts(direct: Row, passthrough: Row, gateway: Row, quiet: Row) -> tuple[str, bool]:
    assert direct.latency and gateway.latency and direct.ttft and gateway.ttft
    assert gateway.rss_mb is not None
    checks = []
    for row, label in ((gateway, "gateway"), (quiet, "quiet gateway")):
        for kind, rounds, base, goal in (
                ("non-streaming", row.rounds, passthrough.rounds, GOALS["throughput"]),
                ("streaming", row.stream_rounds, passthrough.stream_rounds, GOALS["stream"])):
            ratio, per_round = _ratio(base, rounds)
            checks.append((f"{label} throughput vs pass-through, {kind}, c=64 "
                           "(median of rounds)", f"{ratio:.1%} ({per_round})",
                           f">= {goal:.0%}", ratio >= goal))
    added = gateway.latency.p50_ms - direct.latency.p50_ms
    added_ttft = gateway.ttft.p50_ms - direct.ttft.p50_ms
    checks += [
        ("gateway: added p50 latency vs direct, non-streaming, c=1", f"{added:.2f} ms",
         f"< {GOALS['latency']:g} ms", added < GOALS["latency"]),
        ("gateway: added p50 time to first token vs direct, streaming, c=16",
         f"{added_ttft:.2f} ms", f"< {GOALS['ttft']:g} ms", added_ttft < GOALS["ttft"]),
        ("gateway RSS after the run", f"{gateway.rss_mb:.1f} MB", f"< {GOALS['rss']:g} MB",
         gateway.rss_mb < GOALS["rss"]),
    ]
    lines = ["| target | measured | goal | |", "|---|---:|---:|---|"]
    lines += [f"| {what} | {got} | {goal} | {'pass' if ok else 'MISS'} |"
              for what, got, goal, ok in checks]
    cost = statistics.median(gateway.cpu_us) - statistics.median(quiet.cpu_us)
    lines += ["", f"The access log (the gateway's default, left out by --log-level warning) "
                  f"cost {cost:.0f} CPU µs per request here (median non-streaming rounds, "
                  f"{statistics.median(gateway.cpu_us):.0f} against "
                  f"{statistics.median(quiet.cpu_us):.0f})."]
    return "\n".join(lines), all(ok for *_, ok in checks)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, metavar="N",
                        help="Alternating non-streaming throughput rounds per proxy (default: 5).")
    parser.add_argument("--stream-rounds", type=int, default=5, metavar="N",
                        help="Alternating streaming throughput rounds per proxy (default: 5).")
    parser.add_argument("--duration", type=float, default=4.0, metavar="S",
                        help="Seconds of each c=64 throughput round (default: 4).")
    parser.add_argument("--short", type=float, default=5.0, metavar="S",
                        help="Seconds of each other run: c=1 and TTFT (default: 5).")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="S",
                        help="Seconds of warm-up load before measuring (default: 2).")
    parser.add_argument("--proxy-core", type=int, default=0, metavar="N",
                        help="The core the proxy under test is pinned to (default: 0).")
    parser.add_argument("--load-core", type=int, default=1, metavar="N",
                        help="The core of the upstream and the load generators (default: 1).")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin anything to cores.")
    parser.add_argument("--tokens", type=int, default=16,
                        help="Words in each upstream answer (default: 16).")
    parser.add_argument("--wrk", metavar="PATH", help="The wrk executable (default: from PATH).")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="Also write the report, in markdown, to FILE.")
    parser.add_argument("--check", action="store_true",
                        help="Exit with status 1 when the gateway misses a target.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.stream_rounds < 1:
        parser.error("--rounds and --stream-rounds must be at least 1")
    if args.no_pin:
        args.proxy_core = args.load_core = None
    elif {args.proxy_core, args.load_core} - os.sched_getaffinity(0):
        parser.error(f"cores {args.proxy_core} and {args.load_core} must both be available "
                     f"(this process may use {sorted(os.sched_getaffinity(0))}); or pass --no-pin")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk(args.wrk)
    if args.load_core is not None:
        os.sched_setaffinity(0, {args.load_core})  # the TTFT client runs in this process
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="first-proxy-bench-") as tmp:
        rows = run(args, wrk, Path(tmp))
    results, ok = verdicts(*rows)
    pinning = ("unpinned" if args.proxy_core is None else
               f"proxies on core {args.proxy_core}, upstream and load on core {args.load_core}")
    notes = [f"- {r.name}: {'; '.join(r.notes)}" for r in rows if r.notes]
    report = "\n".join([
        f"{os.cpu_count()} cores, {cpu_model()}; Python {sys.version.split()[0]}, "
        f"{versions(wrk)}; {pinning}; {time.monotonic() - started:.0f} s.", "", table(rows), "",
        results,
        *(["", *notes] if notes else []), ""])
    print("\n" + report)
    if args.output:
        args.output.write_text(report)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
