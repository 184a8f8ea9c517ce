"""The documentation keeps up with the code: hooks, commands, configuration keys, links, and the
tutorial's excerpts of the example plugin."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from first_proxy import hookspecs
from first_proxy.cli import cli
from first_proxy.config import parse_config
from first_proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "plugins" / "first-example-backend"


def doc_files() -> list[Path]:
    """The Markdown under docs/, leaving out build and cache folders."""
    return sorted(p for p in DOCS.rglob("*.md")
                  if not any(part.startswith(".") or part.endswith(".egg-info")
                             for part in p.relative_to(DOCS).parts[:-1]))


def docs_text() -> str:
    return "\n".join(p.read_text() for p in doc_files())


def hook_headings() -> dict[str, str]:
    """Hook name → the argument list in its ``### `name(args)` `` heading in plugin_hooks.md."""
    text = (DOCS / "plugin_hooks.md").read_text()
    return {m["name"]: m["args"]
            for m in re.finditer(r"^### `(?P<name>\w+)\((?P<args>[^)]*)\)`$", text, re.M)}


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_section_with_its_exact_signature(name: str) -> None:
    expected = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    headings = hook_headings()
    assert name in headings, f"docs/plugin_hooks.md has no '### `{name}({expected})`' section"
    assert headings[name] == expected


def test_plugin_hooks_md_documents_no_hook_that_does_not_exist() -> None:
    assert set(hook_headings()) == set(hookspecs.HOOK_NAMES)


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_docstring(name: str) -> None:
    assert (inspect.getdoc(getattr(hookspecs, name)) or "").strip()


def test_hook_names_lists_every_hookspec() -> None:
    specs = {name for name, f in vars(hookspecs).items()
             if callable(f) and hasattr(f, "first_proxy_spec")}
    assert specs == set(hookspecs.HOOK_NAMES)


def test_every_core_command_is_documented() -> None:
    # Plugins may add commands to the same group; those are documented with the plugin.
    core = sorted(name for name, command in cli.commands.items()
                  if command.callback is not None
                  and command.callback.__module__.startswith("first_proxy."))
    assert core, "found no first-proxy commands"
    text = docs_text()
    missing = [name for name in core if f"first-proxy {name}" not in text]
    assert not missing, f"commands not in docs/: {missing}"


def top_level_config_keys() -> list[str]:
    """What parse_config accepts at the top of gateway.yaml, as its own error message says."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"no-such-key": 1})
    [(path, message)] = caught.value.problems
    assert path == "no-such-key" and "expected one of: " in message, message
    return message.split("expected one of: ", 1)[1].split(", ")


def test_every_top_level_config_key_is_in_configuration_md() -> None:
    page = DOCS / "configuration.md"
    if not page.exists():
        pytest.skip("docs/configuration.md is not written yet")
    text = page.read_text()
    keys = top_level_config_keys()
    assert {"models", "plugins"} <= set(keys)
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"gateway.yaml keys not in docs/configuration.md: {missing}"


def slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_links_lead_somewhere(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        found = (page.parent / target).exists() if target else anchor in anchors
        if not found:
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def tutorial_excerpts() -> list[tuple[str, str]]:
    """``(file, code)`` of each block in writing_plugins.md that starts ``# from <file>``."""
    text = (DOCS / "writing_plugins.md").read_text()
    return re.findall(r"^```\w*\n# from (\S+)\n(.*?)^```$", text, re.M | re.S)


def test_the_tutorial_quotes_the_example_plugin_as_it_is() -> None:
    excerpts = tutorial_excerpts()
    assert len(excerpts) >= 8
    for name, code in excerpts:
        source = (EXAMPLE / name).read_text()
        assert code in source, f"writing_plugins.md quotes {name} as it no longer is:\n{code}"
