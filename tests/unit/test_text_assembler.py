"""TextAssembler: stop sequences are never shown, text that might become one is held back,
and ids travel with the text they produced."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from worker.generation import TextAssembler


@dataclass
class FakeDetok:
    """Each id maps to a fixed text piece (already UTF-8-safe)."""

    pieces: dict[int, str]
    tail: str = ""
    seen: list[int] = field(default_factory=list)

    def push(self, token_id: int) -> str:
        self.seen.append(token_id)
        return self.pieces[token_id]

    def flush(self) -> str:
        return self.tail


def run(pieces: list[str], stop: list[str]) -> tuple[list[tuple[str, int, list[int]]], bool]:
    detok = FakeDetok({i: p for i, p in enumerate(pieces)})
    asm = TextAssembler(detok, stop)  # type: ignore[arg-type]
    events = []
    for i in range(len(pieces)):
        ev = asm.push(i)
        if ev is not None:
            events.append((ev.text, ev.index, ev.ids))
        if asm.stopped:
            break
    last = asm.finish()
    if last is not None and (last.text or last.ids):
        events.append((last.text, last.index, last.ids))
    return events, asm.stopped


def test_no_stop_passes_every_piece_through() -> None:
    events, stopped = run(["Hello", ",", " world"], [])
    assert events == [("Hello", 0, [0]), (",", 1, [1]), (" world", 2, [2])]
    assert not stopped


def test_stop_sequence_inside_one_piece_is_cut() -> None:
    events, stopped = run(["Hello", " wor", "ld. END here"], ["END"])
    assert stopped
    assert "".join(t for t, _, _ in events) == "Hello world. "
    assert [i for _, _, ids in events for i in ids] == [0, 1, 2]


def test_stop_sequence_across_pieces_is_held_then_cut() -> None:
    events, stopped = run(["one\n", "two", "\n", "#", "##", "three"], ["\n###"])
    assert stopped
    text = "".join(t for t, _, _ in events)
    assert text == "one\ntwo"
    # The "\n" and "#" pieces were held back (they might start the stop) and never shown.
    assert all("#" not in t for t, _, _ in events)


def test_held_text_released_when_it_cannot_become_a_stop() -> None:
    events, stopped = run(["a", "\n", "#", "b", "c"], ["\n###"])
    assert not stopped
    assert "".join(t for t, _, _ in events) == "a\n#bc"
    # "\n" and "#" were held; their ids ride with the piece that released them.
    assert events[1] == ("\n#b", 1, [1, 2, 3])
    assert events[2] == ("c", 4, [4])


def test_held_text_flushed_at_the_end() -> None:
    events, stopped = run(["x", "EN"], ["END"])
    assert not stopped
    assert "".join(t for t, _, _ in events) == "xEN"
    assert [i for _, _, ids in events for i in ids] == [0, 1]


def test_empty_pieces_join_the_next_event() -> None:
    events, _ = run(["", "", "ab"], [])
    assert events == [("ab", 0, [0, 1, 2])]


@pytest.mark.parametrize("stops", [["END", "E"], ["E", "END"]])
def test_earliest_stop_wins(stops: list[str]) -> None:
    events, stopped = run(["aXE", "ND"], stops)
    assert stopped
    assert "".join(t for t, _, _ in events) == "aX"
