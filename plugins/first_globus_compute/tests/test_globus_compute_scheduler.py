"""first_pbs_status's ``via: globus_compute``: a cluster's scheduler asked on the cluster,
through its Compute endpoint, by this plugin's ``scheduler_status`` function (the real
function in the real endpoint engine, submitted by the real Executor)."""

from __future__ import annotations

import sys
from pathlib import Path

import first_pbs_status
import pytest
from first_globus_compute import remote
from first_pbs_status.commands import ComputeRunner
from globus_compute_support import MODEL, Site, register

from first_proxy.errors import ConfigError
from first_proxy.testing import eventually

pytest.importorskip("first_pbs_status", reason="first-pbs-status is not installed")

RECORDED = (Path(first_pbs_status.__file__).parents[2] / "tests" / "data"
            / "qstat-2022.1-running.json")


def fake_qstat(tmp_path: Path) -> list[str]:
    """A ``qstat`` for the engine's workers to run: the recorded output of a running job,
    renamed to serve the reference model."""
    script = tmp_path / "qstat.py"
    text = RECORDED.read_text().replace("first-Meta-Llama-3.1-8B-Instruct", f"first-{MODEL}")
    (tmp_path / "qstat.json").write_text(text)
    script.write_text(f"import sys\nsys.stdout.write(open({str(tmp_path / 'qstat.json')!r}).read())\n")
    return [sys.executable, str(script)]


async def test_a_cluster_is_polled_through_globus_compute(site: Site, tmp_path: Path) -> None:
    function = await register(site.service, remote.scheduler_status)
    cluster = {"status": "pbs", "via": "globus_compute", "endpoint": site.endpoint,
               "status_function": function, "qstat_command": fake_qstat(tmp_path),
               "pbsnodes_command": False, "poll_interval": 0.2, "timezone": "America/Chicago"}
    server = await site.gateway(site.target(cluster="polaris"), clusters={"polaris": cluster},
                                plugins=(first_pbs_status,))

    def state() -> str | None:
        status = server.gateway.cluster_statuses.get("polaris")
        return status.models.get(MODEL) if status is not None and status.reachable else None

    assert await eventually(state) == "running"
    assert server.gateway.statuses[f"{MODEL}/polaris"].models[MODEL] == "running"
    # The query ran as tasks of the status function, on the cluster's endpoint.
    ran = [t for t in site.service.tasks.values() if t.function_id == function]
    assert ran and {t.endpoint_id for t in ran} == {site.endpoint}


async def test_via_globus_compute_needs_the_endpoint_and_the_function(site: Site) -> None:
    with pytest.raises(ConfigError) as caught:
        await site.gateway(site.target(cluster="polaris"),
                           clusters={"polaris": {"status": "pbs", "via": "globus_compute"}},
                           plugins=(first_pbs_status,))
    messages = [message for path, message in caught.value.problems
                if path == "clusters.polaris.via"]
    assert messages and "status_function" in messages[0]


async def test_a_cold_start_job_script_reaches_the_clusters_qsub(site: Site) -> None:
    """The runner a cold start submits with: the job script travels as the command's input."""
    function = await register(site.service, remote.scheduler_status)
    server = await site.gateway()
    runner = ComputeRunner(server.gateway, site.endpoint, function)
    qsub = [sys.executable, "-c", "import sys; print('job.' + sys.stdin.read().split()[1])"]
    result = await runner.run(qsub, stdin=b"#PBS reference-model\n", time_limit=30.0)
    assert (result.exit_status, result.stdout.strip()) == (0, b"job.reference-model")
    missing = await runner.run(["qsub-not-here"], time_limit=30.0)
    assert missing.exit_status == 127 and b"command not found" in missing.stderr
