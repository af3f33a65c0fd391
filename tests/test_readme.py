"""The README shows what the code does: its IA3 example is the shipped file, its set-up is what CI runs, its
`pdspace-train` commands compose and pass the config checks."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_add_a_strategy_example_is_the_shipped_ia3_file():
    readme = (ROOT / "README.md").read_text()
    ia3 = (ROOT / "pdspace" / "peft" / "strategies" / "ia3.py").read_text().rstrip("\n")
    assert f"```python\n{ia3}\n```" in readme


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -c .ci/lock.txt torch==2.13.0 -e ".[dev]" && pytest'
    assert f"```bash\n{command}\n```" in readme and command in (ROOT / ".ci" / "run").read_text()


def test_both_set_up_commands_install_through_the_lock():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in setup.splitlines() if line.startswith("pip install")]
    assert len(commands) == 2 and all(c.startswith("pip install -c .ci/lock.txt torch==2.13.0 -e ") for c in commands)
    assert (ROOT / ".ci" / "lock.txt").is_file()


def readme_commands(prog: str) -> list[str]:
    """Every `prog` command of the README's bash blocks (continuation lines joined, comments dropped), but those
    that elide their arguments (`...`)."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for body in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in body.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].strip()
            if command.split(" ")[0] == prog and "..." not in command and "--help" not in command:
                commands.append(command)
    return commands


def job_overrides(command: str) -> list[list[str]]:
    """The overrides of the jobs a command launches, one job per sweep value (the other sweeps at their first)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, flags = shlex.split(command)[1:], {"-m", "--multirun", "--cfg", "job"}
    overrides = OverridesParser.create().parse_overrides([a for a in args if a not in flags])
    first = [o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
             for o in overrides]
    jobs = [first]
    for i, o in enumerate(overrides):
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())[1:]
            jobs += [first[:i] + [f"{o.get_key_element()}={v}"] + first[i + 1:] for v in values]
    return jobs


def test_the_readme_has_commands_to_check():
    commands = readme_commands("pdspace-train")
    assert len(commands) >= 10 and "pdspace-train" in commands  # the main job, bare
    assert len(readme_commands("pdspace-search")) >= 4


@pytest.mark.parametrize("command", readme_commands("pdspace-train"))
def test_every_readme_train_command_composes_and_passes_the_config_checks(command):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pdspace.config import CONF_DIR, check_config, check_overrides

    check_overrides(shlex.split(command)[1:])  # what the console script checks before Hydra parses
    for overrides in job_overrides(command):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        check_config(cfg)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("command", readme_commands("pdspace-search"))
def test_every_readme_search_command_passes_the_search_checks(command, tmp_path):
    """Its flags parse and `check_spec` (tasks, space, the jobs' composed config and budget) accepts it, as the
    search checks before it launches anything."""
    from pdspace.search.cli import parse
    from pdspace.search.engine import check_spec

    spec = parse(shlex.split(command)[1:])
    setting = check_spec(spec, tmp_path / "conf")
    assert setting.num_layers > 0
