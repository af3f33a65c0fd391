"""The strategy registry: every PEFT strategy pdspace knows, by letter (the one registry).

`pdspace.peft.strategies` registers the shipped five (Adapter A, Prefix P, BitFit B, LoRA L,
IA3 I) with `register`, and a plug-in registers itself the same way; designs, spaces, the
budget solver, `apply_design` and the `peft:` config block read `strategies()`. This module
needs no torch: it holds what designs and the solver know of a strategy (`StrategyInfo`);
what the peft layer registers is a `pdspace.peft.strategies.Strategy`, which has more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

# the paper's four strategies (Adapter, Prefix, BitFit, LoRA): the canonical order, and the letters a space
# draws from by default
STRATEGY_LETTERS = "APBL"


class StrategyInfo(Protocol):
    """What designs and the solver need to know of a strategy (`pdspace.peft.strategies.Strategy` has more)."""

    letter: str
    name: str
    title: str
    size_name: str | None


S = TypeVar("S", bound=StrategyInfo)

_REGISTRY: dict[str, StrategyInfo] = {}
_LISTENERS: list[Callable[[], None]] = []
_shipped: Callable[[], object] | None = None  # registers the shipped strategies (`load_shipped_with`), called once


def load_shipped_with(load: Callable[[], object]) -> None:
    """Have the registry call `load()` (which registers the shipped strategies) once, when it is first read or
    written: a process that only reads designs (`pdspace-refine`, a notebook) then knows A, P, B, L and I, and this
    torch-free module needs no import of the peft layer. `pdspace/__init__.py` sets it."""
    global _shipped
    _shipped = load


def _load_shipped() -> None:
    global _shipped
    load, _shipped = _shipped, None  # first, so that the strategies' own `register` calls do not load again
    if load is not None:
        try:
            load()
        except BaseException:
            _shipped = load
            raise


def register(info: S) -> S:
    """Make a strategy known to designs, spaces, the solver and the config (re-registering the same letter and
    name replaces it); returns it. Raises ValueError for a letter that is not one of A-Z, a taken letter, or a
    name or size name another strategy has."""
    _load_shipped()  # a plug-in's letter is checked against the shipped ones
    letter = info.letter
    if len(letter) != 1 or not ("A" <= letter <= "Z"):
        raise ValueError(f"strategy letter {letter!r} must be one upper-case letter A-Z")
    for other in _REGISTRY.values():
        clash = other.name == info.name or (info.size_name and other.size_name == info.size_name)
        if other.letter != letter and clash:
            raise ValueError(f"strategy {info.letter} ({info.name}) clashes with {other.letter} ({other.name}): "
                             "names and size names must be unique")
    if letter in _REGISTRY and _REGISTRY[letter].name != info.name:
        raise ValueError(f"strategy letter {letter!r} is taken by {_REGISTRY[letter].name}; choose another letter")
    _REGISTRY[letter] = info
    _changed()
    return info


def unregister(letter: str) -> None:
    """Forget the strategy registered as `letter` (a plug-in tried out for a while); KeyError if there is none."""
    _load_shipped()
    if letter not in _REGISTRY:
        raise KeyError(f"no strategy is registered as {letter!r}; registered: {', '.join(strategies())}")
    del _REGISTRY[letter]
    _changed()


def strategies() -> dict[str, StrategyInfo]:
    """Registered strategies by letter, in canonical order: A, P, B, L, then the others as registered."""
    _load_shipped()
    order = {ch: i for i, ch in enumerate(STRATEGY_LETTERS)}
    letters = sorted(_REGISTRY, key=lambda ch: (order.get(ch, len(order)), list(_REGISTRY).index(ch)))
    return {ch: _REGISTRY[ch] for ch in letters}


def on_change(listener: Callable[[], None]) -> None:
    """Call `listener()` after every change of the registry, e.g. to rebuild what is derived from it
    (`pdspace.config` re-stores the `peft:` schema, so a strategy registered late has its config keys)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def _changed() -> None:
    for listener in _LISTENERS:
        listener()
