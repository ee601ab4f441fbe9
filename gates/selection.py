"""Which scenarios make each gate, by their feature-file tags.

Gates are cumulative in meaning (gate 4 is "the whole suite"), but a scenario carries only
the tag of the gate that introduced it; gate 4's selection therefore names every gate tag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gate:
    name: str
    title: str
    tags: tuple[str, ...]  # a scenario with any of these tags belongs to the gate

    @property
    def marker_expression(self) -> str:
        return " or ".join(self.tags)

    def selects(self, tags: set[str] | frozenset[str]) -> bool:
        return any(t in tags for t in self.tags)


GATES: dict[str, Gate] = {
    g.name: g
    for g in (
        Gate("gate1", "Gate 1: the contract end to end (health, streaming, validation, cancel, GGUF, tokens)",
             ("gate1",)),
        Gate("gate2", "Gate 2: the Qwen model serves (haiku, determinism, seeds, health)", ("gate2",)),
        Gate("gate3", "Gate 3: every architecture is detected, routed and generates", ("gate3",)),
        Gate("gate4", "Gate 4: the whole suite, UTF-8 safety, out-of-memory recovery, MXFP4",
             ("gate1", "gate2", "gate3", "gate4")),
    )
}

# Tags that are not gates but change how a scenario runs (see gates/plugin.py).
OTHER_TAGS = {
    "cuda": "needs a CUDA worker (skipped on the CPU backend)",
    "reference": "checks the reference implementation itself (skipped against an external worker)",
}


def gate_names(choice: str) -> list[str]:
    """`--gate all` means every gate, in order."""
    if choice == "all":
        return list(GATES)
    if choice not in GATES:
        raise ValueError(f"unknown gate {choice!r}; choose from {', '.join([*GATES, 'all'])}")
    return [choice]


def marker_expression(choice: str) -> str:
    return " or ".join(dict.fromkeys(t for g in gate_names(choice) for t in GATES[g].tags))
