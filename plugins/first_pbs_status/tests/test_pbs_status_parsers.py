"""The parsers on recorded outputs of PBS Pro and Slurm (see data/README.md for each file)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from first_pbs_status.jobs import ModelNames, ModelRules, ModelState, Snapshot, summarize
from first_pbs_status.pbs import parse_pbsnodes, parse_qstat
from first_pbs_status.reading import OutputError
from first_pbs_status.settings import DEFAULT_JOB_NAME_PATTERN
from first_pbs_status.slurm import parse_sinfo, parse_squeue

from first_proxy import Target

DATA = Path(__file__).parent / "data"
#: The recorded outputs were taken at 2026-01-06 10:00:00 UTC; PBS wrote Chicago's local time.
NOW = datetime(2026, 1, 6, 10, 0, tzinfo=UTC).timestamp()
CHICAGO = ZoneInfo("America/Chicago")
LLAMA_8B, LLAMA_70B = "first-Meta-Llama-3.1-8B-Instruct", "first-Meta-Llama-3.1-70B-Instruct"
QWEN, MISTRAL = "first-Qwen2.5-72B-Instruct", "first-Mistral-7B-Instruct-v0.3"
SLURM_VERSIONS = [("squeue-21.08-v0.0.37.json", "Slurm 21.08.8-2 (data_parser v0.0.37)"),
                  ("squeue-22.05-v0.0.38.json", "Slurm 22.05.9 (data_parser v0.0.38)"),
                  ("squeue-23.02-v0.0.39.json", "Slurm 23.02.6 (data_parser v0.0.39)"),
                  ("squeue-23.11-v0.0.40.json", "Slurm 23.11.4 (data_parser v0.0.40)"),
                  ("squeue-24.05-v0.0.41.json", "Slurm 24.05.3 (data_parser v0.0.41)")]


def at(hour: int, minute: int, second: int = 0) -> float:
    """A UTC time on the day of the recordings."""
    return datetime(2026, 1, 6, hour, minute, second, tzinfo=UTC).timestamp()


def read(name: str) -> str:
    return (DATA / name).read_text()


def rules(**options: object) -> ModelRules:
    return ModelRules(re.compile(r"^(?P<model>first-.+)$"), **options)  # type: ignore[arg-type]


def models(jobs: list, **options: object) -> dict[str, ModelState]:
    """The models the jobs serve, named as in the job names."""
    return summarize(jobs, rules(**options), ModelNames([]), NOW)


# -- PBS ----------------------------------------------------------------------------------------


def test_pbs_running_jobs_and_their_start_times() -> None:
    jobs, version = parse_qstat(read("qstat-2022.1-running.json"), tz=CHICAGO)
    assert version == "PBS 2022.1.1.20220926110806"
    assert [(j.id.split(".")[0], j.name, j.state) for j in jobs] == [
        ("8101", LLAMA_8B, "running"), ("8105", MISTRAL, "running"),
        ("8110", "lammps_water", "running"), ("8111", "cosmo_sim", "queued")]
    found = models(jobs)
    assert set(found) == {LLAMA_8B, MISTRAL}  # other users' jobs serve no model
    llama = found[LLAMA_8B]
    assert (llama.state, llama.since, llama.nodes) == ("running", at(7, 45, 2), 2)
    assert llama.job_ids == ("8101.polaris-pbs-01.example.org",)
    assert llama.reason.startswith("Job run at")


def test_pbs_times_are_read_in_the_clusters_time_zone() -> None:
    chicago, = (j for j in parse_qstat(read("qstat-2022.1-running.json"), tz=CHICAGO)[0]
                if j.name == LLAMA_8B)
    utc, = (j for j in parse_qstat(read("qstat-2022.1-running.json"), tz=UTC)[0]
            if j.name == LLAMA_8B)
    assert chicago.started == at(7, 45, 2)
    assert chicago.started - utc.started == 6 * 3600  # Chicago is UTC-6 in January


def test_a_job_that_started_within_the_warm_up_is_starting() -> None:
    jobs, _ = parse_qstat(read("qstat-2022.1-running.json"), tz=CHICAGO)
    found = models(jobs, warm_up=600.0)  # Mistral started 90 s before the recording
    assert found[MISTRAL].state == "starting"
    assert found[MISTRAL].since == at(9, 58, 30)
    assert found[LLAMA_8B].state == "running"


def test_pbs_queued_and_held_jobs() -> None:
    jobs, _ = parse_qstat(read("qstat-2022.1-queued-held.json"), tz=CHICAGO)
    found = models(jobs)
    queued = found[LLAMA_70B]
    # Behind bob's older job in the same queue; carol's older job waits in another queue.
    assert (queued.state, queued.queue_position, queued.since) == ("queued", 2, at(9, 30))
    assert queued.expected_start == at(11, 30)
    assert queued.nodes == 4
    assert queued.reason.startswith("Not Running: Insufficient amount of resource: ngpus")
    held = found[QWEN]
    assert (held.state, held.queue_position) == ("held", None)
    assert held.reason.startswith("Job held by svcfirst")


def test_pbs_array_job_with_its_subjobs() -> None:
    jobs, _ = parse_qstat(read("qstat-2022.1-array-subjobs.json"), tz=CHICAGO)
    assert [j.id.split(".")[0] for j in jobs] == ["8300[0]", "8300[1]", "8300[2]"]  # no parent
    llama = models(jobs)[LLAMA_8B]
    assert (llama.state, llama.nodes, llama.since) == ("running", 2, at(8, 20))
    assert [i.split(".")[0] for i in llama.job_ids] == ["8300[0]", "8300[1]", "8300[2]"]


def test_pbs_array_parents_alone() -> None:
    jobs, _ = parse_qstat(read("qstat-2022.1-array-parents.json"), tz=CHICAGO)
    found = models(jobs)
    assert found[LLAMA_8B].state == "running"  # B, with subjobs running
    assert found[MISTRAL].state == "queued"  # Q, all of its subjobs waiting


def test_pbs_history_keeps_failed_jobs_only() -> None:
    jobs, _ = parse_qstat(read("qstat-2022.1-history.json"), tz=CHICAGO)
    assert [(j.name, j.state) for j in jobs] == [(MISTRAL, "failed")]


def test_pbs_no_jobs() -> None:
    assert parse_qstat(read("qstat-2022.1-empty.json")) == ([], "PBS 2022.1.1.20220926110806")


def test_pbs_output_cut_short() -> None:
    with pytest.raises(OutputError, match=r"ends in the middle of its JSON \(after 2853 bytes\)"):
        parse_qstat(read("qstat-2022.1-truncated.json"))


def test_pbs_output_after_a_login_banner() -> None:
    banner, plain = read("qstat-2022.1-banner.txt"), read("qstat-2022.1-queued-held.json")
    assert banner.startswith("####") and banner.endswith(plain)
    assert parse_qstat(banner, tz=CHICAGO) == parse_qstat(plain, tz=CHICAGO)


def test_old_pbs_bare_values_are_read_as_strings() -> None:
    text = read("qstat-19.2-bare-values.json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)  # as PBS Pro 19 printed it: "VLLM_GPU_MEMORY_UTILIZATION":.9
    (job,), version = parse_qstat(text, tz=CHICAGO)
    assert version == "PBS 19.2.8.20200925072534"
    assert job.attributes["VLLM_GPU_MEMORY_UTILIZATION"] == ".9"
    assert job.attributes["HF_HUB_OFFLINE"] == "1"
    # The job's name says nothing; its FIRST_MODEL variable names the model.
    assert models([job]) == {}
    found = models([job], model_attribute="FIRST_MODEL")
    assert found["meta-llama/Meta-Llama-3.1-8B-Instruct"].state == "running"


def test_pbsnodes_free_nodes() -> None:
    assert parse_pbsnodes(read("pbsnodes-2022.1.json")) == 3


@pytest.mark.parametrize(("text", "message"), [
    ("", "qstat printed nothing"),
    ("qstat: Unknown queue destination prod\n", "printed no JSON; it begins 'qstat: Unknown"),
    ('{"timestamp": 1, "Jobs": {}}', "without a pbs_version"),
    ('{"pbs_version": "18.1.4", "Jobs": {}}', "PBS 18.1.4, older than the PBS 19"),
    ('{"pbs_version": "2022.1.1", "Jobs": []}', "qstat's Jobs is a list, expected an object"),
    ('{"pbs_version": "2022.1.1", "Jobs": {"1.s": 5}}', r"qstat's Jobs\['1.s'\] is a number"),
    ('{"pbs_version": "2022.1.1",\n"Jobs": {"1.s": {]}}', "printed JSON that is not valid"),
])
def test_unreadable_qstat_output(text: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        parse_qstat(text)


# -- Slurm --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "version"), SLURM_VERSIONS)
def test_slurm_jobs_in_every_data_parser_version(name: str, version: str) -> None:
    jobs, found_version = parse_squeue(read(name))
    assert found_version == version
    found = models(jobs)
    assert set(found) == {LLAMA_8B, LLAMA_70B, QWEN, MISTRAL}
    llama = found[LLAMA_8B]  # its completed job 4090 is left out
    assert (llama.state, llama.since, llama.nodes, llama.job_ids) == (
        "running", at(7, 45, 2), 1, ("4101",))
    queued = found[LLAMA_70B]  # the highest priority in its partition
    assert (queued.state, queued.queue_position, queued.since, queued.expected_start) == (
        "queued", 1, at(9, 30), at(11, 30))
    assert queued.reason == "Resources"
    assert (found[QWEN].state, found[QWEN].reason) == ("held", "JobHeldUser")
    array = found[MISTRAL]  # two tasks running, the others pending in one record
    assert (array.state, array.nodes, array.job_ids) == (
        "running", 2, ("4105_0", "4105_1", "4105_[2-3]"))
    waiting = {j.id: j for j in jobs if j.state == "queued"}
    assert set(waiting) == {"4102", "4103", "4105_[2-3]", "4108"}


@pytest.mark.parametrize(("name", "state_is_list", "counts_are_objects", "times_are_objects"), [
    ("squeue-21.08-v0.0.37.json", False, False, False),
    ("squeue-22.05-v0.0.38.json", False, False, False),
    ("squeue-23.02-v0.0.39.json", False, True, False),
    ("squeue-23.11-v0.0.40.json", True, True, True),
    ("squeue-24.05-v0.0.41.json", True, True, True),
])
def test_the_recordings_differ_as_the_versions_do(name: str, state_is_list: bool,
                                                  counts_are_objects: bool,
                                                  times_are_objects: bool) -> None:
    job = json.loads(read(name))["jobs"][1]
    assert isinstance(job["job_state"], list) is state_is_list
    assert isinstance(job["node_count"], dict) is counts_are_objects
    assert isinstance(job["start_time"], dict) is times_are_objects


def test_slurm_starting_failed_and_a_model_named_in_the_comment() -> None:
    jobs, _ = parse_squeue(read("squeue-24.05-v0.0.41-starting-failed.json"))
    assert [(j.id, j.state) for j in jobs] == [  # the completing job 5204 is left out
        ("5201", "starting"), ("5202", "running"), ("5203", "failed")]
    found = models(jobs, model_attribute="model")
    assert found[LLAMA_8B].state == "starting"  # CONFIGURING: its nodes are booting
    assert found["mistralai/Mistral-7B-Instruct-v0.3"].state == "running"
    assert (found[QWEN].state, found[QWEN].reason) == ("failed", "NonZeroExitCode")
    # Told to wait for the job's own word: 5202 says ready=1 in its comment, 5201 does not.
    ready = models(jobs, model_attribute="model", ready_comment=re.compile(r"\bready=1\b"))
    assert ready["mistralai/Mistral-7B-Instruct-v0.3"].state == "running"


def test_slurm_no_jobs() -> None:
    assert parse_squeue(read("squeue-23.11-v0.0.40-empty.json")) == (
        [], "Slurm 23.11.4 (data_parser v0.0.40)")


def test_slurm_output_cut_short() -> None:
    with pytest.raises(OutputError, match="ends in the middle of its JSON"):
        parse_squeue(read("squeue-24.05-v0.0.41-truncated.json"))


def test_slurm_output_after_a_login_banner() -> None:
    banner = read("squeue-23.02-v0.0.39-banner.txt")
    assert banner.startswith("Welcome to Sophia")
    assert parse_squeue(banner) == parse_squeue(read("squeue-23.02-v0.0.39.json"))


def test_a_data_parser_version_it_does_not_read() -> None:
    with pytest.raises(OutputError) as caught:
        parse_squeue(read("squeue-24.11-v0.0.42.json"))
    assert str(caught.value) == (
        "squeue printed the JSON of data_parser v0.0.42; first_pbs_status reads v0.0.37 to "
        "v0.0.41. Ask for one of those, e.g. squeue_command: [squeue, --json=v0.0.41]")


@pytest.mark.parametrize("name", ["sinfo-21.08-v0.0.37.json", "sinfo-23.02-v0.0.39.json",
                                  "sinfo-24.05-v0.0.41.json"])
def test_sinfo_free_nodes(name: str) -> None:
    # gpu-a03 and gpu-a04 are idle; a05 drained, a07 reserved; a03 is in two partitions.
    assert parse_sinfo(read(name)) == 2


@pytest.mark.parametrize(("text", "message"), [
    ("  \n", "squeue printed nothing"),
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
     "printed no JSON"),
    ('{"jobs": []}', "without meta: is it Slurm's squeue --json"),
    ('{"meta": {"plugin": {"data_parser": "data_parser/v0.0.40"}}, "errors": '
     '[{"description": "Unable to contact slurm controller", "error_number": 1007}]}',
     "printed no jobs list: Unable to contact slurm controller"),
    ('{"meta": {"plugin": {"data_parser": "data_parser/v0.0.40"}}, "jobs": ["x"]}',
     r"squeue's jobs\[0\] is a string, expected an object"),
])
def test_unreadable_squeue_output(text: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        parse_squeue(text)


# -- models and status ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "parse"), [
    ("qstat-2022.1-running.json", lambda text: parse_qstat(text, tz=CHICAGO)),
    ("squeue-24.05-v0.0.41.json", parse_squeue),
])
def test_only_the_service_accounts_jobs_serve_models(name: str, parse: Any) -> None:
    jobs, _ = parse(read(name))
    assert {j.user for j in jobs if j.name == LLAMA_8B} == {"svcfirst"}
    assert LLAMA_8B in models(jobs, job_user="svcfirst")
    assert models(jobs, job_user="alice") == {}  # alice's jobs are not named first-...


def test_job_names_map_to_the_names_targets_use() -> None:
    target = Target(name="polaris", model="llama-8b", backend="reference",
                    upstream_model="meta-llama/Meta-Llama-3.1-8B-Instruct", cluster="polaris")
    jobs, _ = parse_qstat(read("qstat-2022.1-running.json"), tz=CHICAGO)
    found = summarize(jobs, ModelRules(re.compile(DEFAULT_JOB_NAME_PATTERN)), ModelNames([target]),
                      NOW)
    assert found["meta-llama/Meta-Llama-3.1-8B-Instruct"].state == "running"
    assert found["Mistral-7B-Instruct-v0.3"].state == "running"  # no target: kept as it is


def test_a_snapshot_as_the_status_of_its_targets() -> None:
    jobs, version = parse_squeue(read("squeue-24.05-v0.0.41.json"))
    snapshot = Snapshot(cluster="sophia", scheduler="slurm", checked_at=NOW, reachable=True,
                        models=models(jobs), free_nodes=2, version=version)
    status = snapshot.status()
    assert status.reachable and status.last_error is None
    assert status.models == {LLAMA_8B: "running", LLAMA_70B: "queued", QWEN: "held",
                             MISTRAL: "running"}
    assert status.detail["free_nodes"] == 2 and status.detail["state"] == "up"
    assert status.detail["models"][LLAMA_70B] == {
        "state": "queued", "jobs": ["4103"], "since": at(9, 30), "nodes": 4,
        "queue_position": 1, "expected_start": at(11, 30), "reason": "Resources"}
    down = Snapshot(cluster="sophia", scheduler="slurm", checked_at=NOW, reachable=False,
                    error="`squeue --json` did not finish within 30 s").status()
    assert (down.reachable, down.models, down.last_error) == (
        False, {}, "`squeue --json` did not finish within 30 s")
    assert down.detail["state"] == "unknown"
