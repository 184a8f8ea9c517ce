"""The functions the gateway runs on Globus Compute endpoints, beside the inference server.

They are registered by value: their source text is what travels (``first-globus-compute
register``), and the endpoint runs it in a namespace of its own. So each function is
self-contained: it imports what it needs inside its body, from the standard library only,
and uses nothing else from this module. Their arguments and results are JSON. Keep to
syntax the endpoint's Python reads (3.9 and later): annotations that only 3.10 understands
are written as strings.
"""

__all__ = ["inference", "scheduler_status"]


def inference(endpoint: str, body: str, api_port: int, timeout: float,
              stream_to: "dict | None" = None, api_key: "str | None" = None) -> dict:
    """POST ``body`` to the inference server at ``http://127.0.0.1:{api_port}/v1/{endpoint}``.

    Returns ``{"status", "content_type", "body"}`` with the server's answer, whatever its
    status, or ``{"error"}`` when the server cannot be reached or breaks off. ``timeout``
    bounds each wait on the server and the whole call.

    With ``stream_to`` (``{"url", "secret", "max_bytes", "timeout"}``) a streamed answer is
    posted to the gateway while it is generated: the bytes read so far, in POSTs of at most
    ``max_bytes``, each saying in ``X-Stream-Offset`` how many bytes came before it, the last
    one marked ``X-Stream-Done: 1``. The result then carries ``offset``, the bytes the
    gateway took, and ``body``, the rest: all of it when the gateway could not be reached.
    A 404 saying ``stream_not_found`` means the caller has gone; generation stops there.
    """
    import http.client
    import queue
    import re
    import threading
    import time
    import urllib.error
    import urllib.request

    def reason(error):
        return str(getattr(error, "reason", None) or error) or type(error).__name__

    if not re.fullmatch(r"[a-z]+(/[a-z_]+)*", endpoint):
        return {"error": f"not an inference API path: {endpoint[:80]!r}"}
    deadline = time.monotonic() + timeout
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    request = urllib.request.Request(
        f"http://127.0.0.1:{int(api_port)}/v1/{endpoint}", data=body.encode(),
        headers=headers, method="POST")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        try:
            with e:
                return {"status": e.code, "content_type": e.headers.get("Content-Type", ""),
                        "body": e.read().decode("utf-8", "replace")}
        except (OSError, http.client.HTTPException) as broken:
            return {"error": f"the inference server broke off its answer ({reason(broken)})"}
    except (OSError, http.client.HTTPException) as e:
        return {"error": f"the inference server on port {int(api_port)} does not answer "
                         f"({reason(e)})"}

    with response:
        status = response.status
        content_type = response.headers.get("Content-Type", "")
        if stream_to is None or not content_type.startswith("text/event-stream"):
            try:
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                return {"error": f"the inference server broke off its answer ({reason(e)})"}
            return {"status": status, "content_type": content_type,
                    "body": data.decode("utf-8", "replace")}

        limit = max(1, int(stream_to["max_bytes"]))
        pending = queue.Queue()  # bytes read, then None at the end
        posted = {"offset": 0, "kept": [], "reachable": True, "gone": False}
        failure = []  # why reading stopped early, set before the None that ends ``pending``

        def post(data, done):
            """Send ``data`` to the gateway: "ok", "gone" (404) or "failed"."""
            headers = {"Authorization": "Bearer " + stream_to["secret"],
                       "Content-Type": "text/event-stream",
                       "X-Stream-Offset": str(posted["offset"])}
            if done:
                headers["X-Stream-Done"] = "1"
            request = urllib.request.Request(stream_to["url"], data=data, headers=headers,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=stream_to["timeout"]) as answer:
                    answer.read()
                return "ok"
            except urllib.error.HTTPError as e:
                # Only the callback route itself says a stream is gone; any other 404 (a
                # gateway without the route, a wrong URL) is a callback that cannot be used.
                with e:
                    return "gone" if e.code == 404 and b"stream_not_found" in e.read(4096) \
                        else "failed"
            except (OSError, http.client.HTTPException):
                return "failed"

        def relay():
            """Post what was read as it comes: all that waits goes in the next POST."""
            finished = False
            while not finished:
                parts = [pending.get()]
                size = len(parts[0] or b"")
                while parts[-1] is not None and size < limit:
                    try:
                        parts.append(pending.get_nowait())
                    except queue.Empty:
                        break
                    size += len(parts[-1] or b"")
                finished = parts[-1] is None
                data = b"".join(part for part in parts if part)
                if not posted["reachable"]:
                    posted["kept"].append(data)
                    continue
                if not data and not finished:
                    continue
                pieces = [data[i:i + limit] for i in range(0, len(data), limit)] or [b""]
                for i, piece in enumerate(pieces):
                    outcome = post(piece, finished and not failure and i == len(pieces) - 1)
                    if outcome == "ok":
                        posted["offset"] += len(piece)
                    elif outcome == "gone":
                        posted["gone"] = True
                        return
                    else:
                        posted["reachable"] = False
                        posted["kept"].append(b"".join(pieces[i:]))
                        break

        relay_thread = threading.Thread(target=relay, daemon=True)
        relay_thread.start()
        try:
            while not posted["gone"]:
                if time.monotonic() > deadline:
                    failure.append(f"no complete answer within {timeout:g} s")
                    break
                data = response.read1(65536)
                if not data:
                    break
                pending.put(data)
        except (OSError, http.client.HTTPException) as e:
            failure.append(f"the inference server broke off its answer ({reason(e)})")
        pending.put(None)
        relay_thread.join()
        rest = b"".join(posted["kept"]).decode("utf-8", "replace")
        if posted["gone"]:
            return {"status": status, "content_type": content_type, "offset": posted["offset"],
                    "body": "", "abandoned": True}
        if failure:
            return {"error": failure[0], "offset": posted["offset"], "body": rest}
        return {"status": status, "content_type": content_type, "offset": posted["offset"],
                "body": rest}


def scheduler_status(command: "list | str", timeout: float = 60.0,
                     stdin: "str | None" = None) -> dict:
    """Run a scheduler query on the cluster (``qstat -f -F json``, ``squeue --json``).

    ``stdin`` is the command's input (a job script for ``qsub``). Returns
    ``{"returncode", "stdout", "stderr"}``; a command that does not exist answers
    127 and one that runs past ``timeout`` seconds 124, as a shell would.
    """
    import shlex
    import subprocess

    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        return {"returncode": 2, "stdout": "", "stderr": "no command given"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=stdin)
    except FileNotFoundError:
        return {"returncode": 127, "stdout": "", "stderr": f"{argv[0]}: command not found"}
    except subprocess.TimeoutExpired:
        return {"returncode": 124, "stdout": "",
                "stderr": f"{argv[0]} did not finish within {timeout:g} s"}
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
