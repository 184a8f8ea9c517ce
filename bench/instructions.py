"""Count the machine instructions each proxy runs per request, with valgrind's callgrind.

A measure that does not move with the neighbours: where bench/run.py's requests per second
and CPU time depend on what else the machine runs, an instruction count depends only on
the code. Starts the fast upstream (bench/upstream.py, not counted), then one proxy at a
time under ``valgrind --tool=callgrind`` with counting off: the pass-through proxy, the
gateway as the README starts it, and the gateway with ``--log-level warning``. For each, and
for plain and streamed requests in turn, it sends a warm-up, counts the instructions of
every thread of the proxy over ``--requests`` requests on ``--connections`` connections,
and divides. Prints a markdown table. Loopback only; some minutes, as valgrind runs Python
about 50 times slower. Needs valgrind (``apt-get install -y valgrind``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import send  # noqa: E402
from run import BODY, KEY, STREAM_BODY, Process, free_port, gateway_command  # noqa: E402

_TOTAL = re.compile(r"^(?:summary|totals):\s*(\d+)", re.M)


class Counted:
    """A proxy running under callgrind, counting only while asked to."""

    def __init__(self, name: str, command: list[str], workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.out = workdir / f"{re.sub(r'[^a-z]+', '-', name)}.callgrind"
        self.process = Process(self.out.stem, [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={self.out}", *command], None, workdir, env)
        self.dumps = 0

    def control(self, *options: str) -> None:
        subprocess.run(["callgrind_control", *options, str(self.process.pid)], check=True,
                       capture_output=True, timeout=120)

    def count(self, url: str, body: bytes, args: argparse.Namespace, stream: bool) -> float:
        """Instructions per request over ``args.requests`` requests, after a warm-up."""
        if not self.dumps:
            self.control("--instr=on")  # once: switching it off and on again corrupts counts
        send(url, body, KEY, requests=args.warmup, connections=args.connections, stream=stream)
        self.control("--zero")
        failed = send(url, body, KEY, requests=args.requests, connections=args.connections,
                      stream=stream)
        self.control("--dump")
        self.dumps += 1
        if failed:
            raise RuntimeError(f"{self.process.name}: {failed} request(s) failed")
        found = _TOTAL.search(Path(f"{self.out}.{self.dumps}").read_text(errors="replace"))
        if found is None:
            raise RuntimeError(f"no instruction total in {self.out}.{self.dumps}")
        return int(found.group(1)) / args.requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, metavar="N",
                        help="Requests counted, plain and streamed each (default: 1000).")
    parser.add_argument("--warmup", type=int, default=300, metavar="N",
                        help="Requests sent before counting (default: 300).")
    parser.add_argument("--connections", type=int, default=16, metavar="N",
                        help="Keep-alive connections the requests share (default: 16).")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y valgrind")

    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="first-proxy-instructions-") as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        upstream = Process("upstream", [sys.executable, str(HERE / "upstream.py"), "--port",
                                        str(upstream_port)], None, workdir)
        try:
            upstream.wait_ready(f"http://127.0.0.1:{upstream_port}/health")
            proxies = [("pass-through proxy", [sys.executable, str(HERE / "passthrough.py"),
                                               "--upstream", upstream_url]),
                       ("gateway", [*gateway_command(), "serve", "--config",
                                    str(HERE / "gateway.yaml")]),
                       ("gateway, --log-level warning", [
                           *gateway_command(), "serve", "--config", str(HERE / "gateway.yaml"),
                           "--log-level", "warning"])]
            for name, command in proxies:
                port = free_port()
                print(f"{name}: starting under callgrind", flush=True)
                counted = Counted(name, [*command, "--port", str(port)], workdir, env={
                    "BENCH_UPSTREAM_URL": upstream_url, "BENCH_API_KEY": KEY,
                    "BENCH_STORE": str(workdir / f"{port}.db")})
                try:
                    counted.process.wait_ready(f"http://127.0.0.1:{port}/health", timeout=600)
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    plain = counted.count(url, BODY, args, stream=False)
                    streamed = counted.count(url, STREAM_BODY, args, stream=True)
                finally:
                    counted.process.stop()
                print(f"  {plain:,.0f} per request, {streamed:,.0f} per stream", flush=True)
                rows.append((name, plain, streamed))
        finally:
            upstream.stop()

    _, base_plain, base_stream = rows[0]
    lines = ["| | instructions per request | per stream | pass-through / this, plain "
             "| pass-through / this, streamed |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {plain:,.0f} | {streamed:,.0f} | {base_plain / plain:.2f} "
              f"| {base_stream / streamed:.2f} |" for name, plain, streamed in rows]
    print(f"\n{args.requests:,} requests each, plain and streamed, over {args.connections} "
          f"connections, after {args.warmup:,}; every thread of the proxy counted.\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
