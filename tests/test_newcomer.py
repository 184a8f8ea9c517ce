"""scripts/newcomer reads the quick start from the README; the full run is a CI step of its own."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_newcomer() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("newcomer", str(ROOT / "scripts" / "newcomer"))
    spec = importlib.util.spec_from_loader("newcomer", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["newcomer"] = module
    loader.exec_module(module)
    return module


newcomer = load_newcomer()

SAMPLE = textwrap.dedent('''\
    # some-project

    ## Install

    ```bash
    # 1. not this one: it is not in the quick start
    pip install something-else
    ```

    ## Quick start

    ```bash
    # 1. install and serve
    python3 -m venv .venv && \\
      .venv/bin/pip install -e . && .venv/bin/serve --demo

    # 2. the tests
    ./scripts/test
    ```

    ### Trying it

    ```bash
    curl http://127.0.0.1:9090/v1/chat/completions \\
      -H "Authorization: Bearer k" -d '{"model": "m"}'
    ```

    ```python
    client = OpenAI(base_url="http://127.0.0.1:9090/v1", api_key="k")
    print(client.models.list())
    ```

    ## Configuration

    ```python
    print("not the quick start's example")
    ```
''')


def test_extract_reads_the_quick_start_and_nothing_else() -> None:
    quick = newcomer.extract(SAMPLE)
    assert quick.first_command == (
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/serve --demo")
    assert quick.curl == ("curl http://127.0.0.1:9090/v1/chat/completions \\\n"
                          "  -H \"Authorization: Bearer k\" -d '{\"model\": \"m\"}'")
    assert quick.python == ('client = OpenAI(base_url="http://127.0.0.1:9090/v1", api_key="k")\n'
                            "print(client.models.list())\n")


@pytest.mark.parametrize(("old", "new", "message"), [
    ("## Quick start", "## Quickly", "no '## Quick start' section"),
    ("# 1. install", "# install", "has no '# 1.' line"),
    ("curl http", "wget http", "no bash block with a curl command"),
    ("```python\nclient", "```text\nclient", "no python block"),
])
def test_extract_says_what_the_readme_lacks(old: str, new: str, message: str) -> None:
    assert old in SAMPLE
    with pytest.raises(newcomer.ReadmeError, match=message):
        newcomer.extract(SAMPLE.replace(old, new, 1))


def test_the_projects_readme_has_every_part_and_one_address() -> None:
    quick = newcomer.extract((ROOT / "README.md").read_text())
    host, port = newcomer.origin(quick.curl)
    assert quick.first_command and not quick.first_command.startswith("#")
    assert f"http://{host}:{port}/" in quick.python


def test_repoint_moves_only_the_readmes_address() -> None:
    example = "curl http://127.0.0.1:8080/v1 http://127.0.0.1:80801/v1 http://10.0.0.1:8080/v1"
    assert newcomer.repoint(example, "127.0.0.1", 8080, 5555) == (
        "curl http://127.0.0.1:5555/v1 http://127.0.0.1:80801/v1 http://10.0.0.1:8080/v1")


def test_the_curl_example_reports_its_status_last() -> None:
    assert newcomer.with_status("curl http://h:1/v1 \\\n  -d '{}'\n") == (
        "curl http://h:1/v1 \\\n  -d '{}' --silent --show-error --write-out '\\n%{http_code}'")


@pytest.mark.parametrize(("yaml", "grace"), [
    ("server:\n  port: 1\n  shutdown_grace: 12.5   # seconds\n", 12.5),
    ("server:\n  shutdown_grace: ${GRACE:-5}\n", newcomer.DEFAULT_SHUTDOWN_GRACE),
    ("server:\n  port: 1\n", newcomer.DEFAULT_SHUTDOWN_GRACE),
])
def test_shutdown_grace_is_read_from_gateway_yaml(tmp_path: Path, yaml: str, grace: float) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml)
    assert newcomer.shutdown_grace(path) == grace


def test_a_readme_without_a_quick_start_fails_the_first_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# a project\n\nNothing to run.\n")
    assert newcomer.main(["--readme", str(readme), "--repo", str(ROOT)]) == 1
    assert "FAILED at read the README: no '## Quick start' section" in capsys.readouterr().err
