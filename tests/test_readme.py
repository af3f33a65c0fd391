"""The README shows what the code does: its IA3 example is the shipped file, its set-up is what CI runs."""

from pathlib import Path

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
