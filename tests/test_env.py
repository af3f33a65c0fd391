"""The environment a result was made in: the lock that CI and the README install is what a run records."""

import os
import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKED = ("torch", "transformers", "lightning", "peft", "optuna", "hydra-core", "datasets")


def lock_pins() -> dict[str, str]:
    """name -> version of every `name==version` line of .ci/lock.txt (names normalised as PEP 503 does)."""
    pins = {}
    for line in (ROOT / ".ci" / "lock.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
    return pins


def test_the_lock_pins_every_dependency_once():
    pins = lock_pins()
    assert set(LOCKED) <= set(pins) and pins["torch"].startswith("2.13.0")
    assert not any(name.startswith("nvidia") for name in pins)  # the CPU wheel: no CUDA libraries


def test_a_run_records_the_versions_it_ran_with_and_those_are_the_locks(launch):
    (r,) = launch("backbone=tiny-bert", "task=synthetic_cls", "trainer.max_epochs=1", "task.max_train_samples=16",
                  "task.max_eval_samples=16")
    recorded = r["versions"]
    assert {name: recorded[name] for name in LOCKED} == {name: metadata.version(name) for name in LOCKED}
    if os.environ.get("PDSPACE_UNLOCKED") == "1":  # .ci/latest installs the newest releases on purpose
        return
    pins = lock_pins()
    assert {name: recorded[name] for name in LOCKED} == {name: pins[name] for name in LOCKED}, (
        "this environment was not installed from the lock: pip install -c .ci/lock.txt torch==2.13.0 -e '.[dev]'")
