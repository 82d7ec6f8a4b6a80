"""`hivectl` itself: help, version, global options and configuration errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from hivectl import __version__
from hivectl.cli.main import NOUNS, VALUE_OPTIONS, mount, named_nouns

app = mount()


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "hivectl.toml"
    empty.write_text("")
    monkeypatch.setenv("HIVE_CONFIG", str(empty))
    for name in ("HIVE_NATS__URL", "HIVE_TIMEOUT", "HIVE_OUTPUT"):
        monkeypatch.delenv(name, raising=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_version() -> None:
    result = invoke("--version")
    assert (result.exit_code, result.stdout) == (0, f"hivectl {__version__}\n")


def test_root_help_explains_global_options_and_nouns() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("--config", "--nats-url", "--timeout", "--verbose", "--version", "node"):
        assert text in result.stdout
    assert "HIVE_NATS__URL" in result.stdout


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert "Usage" in result.stdout + result.stderr
    assert "node" in result.stdout + result.stderr


def test_node_help_lists_every_verb() -> None:
    result = invoke("node", "--help")
    assert result.exit_code == 0
    for verb in ("list", "describe", "approve", "reject", "delete"):
        assert verb in result.stdout


@pytest.mark.parametrize(
    ("verb", "expected"),
    [
        ("list", ["--filter-approval", "--filter-status", "--selector", "--no-headers", "-o"]),
        ("describe", ["ID", "json"]),
        ("approve", ["hivectl node approve node-1"]),
        ("reject", ["--message", 'hivectl node reject node-3 -m "malicious node?"']),
        ("delete", ["PENDING"]),
    ],
)
def test_verb_help(verb: str, expected: list[str]) -> None:
    result = invoke("node", verb, "--help")
    assert result.exit_code == 0
    for text in expected:
        assert text in result.stdout, f"{text!r} missing from `node {verb} --help`"


def test_list_help_has_examples() -> None:
    result = invoke("node", "list", "-h")
    assert "Examples" in result.stdout
    assert "hivectl node list --filter-approval pending" in result.stdout


def one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = invoke("--config", str(tmp_path / "nope.toml"), "node", "list")
    assert "does not exist" in one_line_error(result, 2)


def test_invalid_config_file_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('timeout = "soon"\n')
    result = invoke("--config", str(bad), "node", "list")
    assert "timeout" in one_line_error(result, 2)


def test_bad_timeout_flag_is_exit_2() -> None:
    result = invoke("--timeout", "later", "node", "approve", "node-1")
    assert "timeout" in one_line_error(result, 2)


def test_unreachable_nats_names_the_config_file_it_came_from(tmp_path: Path) -> None:
    conf = tmp_path / "mine.toml"
    conf.write_text('[nats]\nurl = "nats://127.0.0.1:1"\n')
    line = one_line_error(invoke("--config", str(conf), "node", "list"), 1)
    assert line.startswith(f"Error: cannot reach NATS at nats://127.0.0.1:1 (from {conf}): ")
    assert f"[nats] url in {conf}" in line


def test_help_as_a_process() -> None:
    exe = Path(sys.executable).parent / "hivectl"
    for args in (["--help"], ["node", "--help"], ["--version"]):
        done = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout


def test_version_as_a_process_imports_no_command_tree() -> None:
    """`hivectl --version` answers before Typer, pydantic or nats-py are imported."""
    code = (
        "import sys; sys.argv = ['hivectl', '--version'];"
        "from hivectl.cli.entry import run; run();"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'pydantic', 'nats'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == f"hivectl {__version__}\n[]\n"


def test_value_options_are_exactly_the_root_options_that_take_a_value() -> None:
    """`named_nouns` skips the word after these; a new root option must be listed."""
    import typer.main

    root = typer.main.get_command(app)
    takes_value = {
        name
        for param in root.params
        if not getattr(param, "is_flag", False) and param.param_type_name == "option"
        for name in param.opts
    }
    assert takes_value == VALUE_OPTIONS


@pytest.mark.parametrize(
    ("argv", "nouns"),
    [
        (["node", "list"], ["node"]),
        (["--config", "node", "job", "list"], ["job"]),  # a config file named `node`
        (["--nats-url", "nats://x:4222", "-v", "devstack"], ["devstack"]),
        (["--timeout=3", "config", "path"], ["config"]),
        (["--help"], list(NOUNS)),
        (["nod", "list"], list(NOUNS)),  # a typo: the error lists every noun
        ([], list(NOUNS)),
    ],
)
def test_a_command_imports_only_the_noun_it_names(argv: list[str], nouns: list[str]) -> None:
    assert named_nouns(argv) == nouns


def test_node_list_does_not_import_the_job_commands() -> None:
    code = (
        "import sys; from hivectl.cli import main; main.mount(main.named_nouns(['node']));"
        "print(sorted(m for m in sys.modules if m.startswith('hivectl.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "hivectl.cli.nodes" in out.stdout
    assert "hivectl.cli.jobs" not in out.stdout and "hivectl.cli.devstack" not in out.stdout


def test_the_installed_version_is_the_package_version() -> None:
    from importlib.metadata import version

    assert version("hive") == __version__
