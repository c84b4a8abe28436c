from __future__ import annotations

from typing import Any

from workers.engine.detokenizer import IncrementalDetokenizer

TEXT = "naïve café in 東京 🙂 and Straße"


def test_deltas_never_split_a_character(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    ids = tokenizer(TEXT)["input_ids"]
    # Byte-level BPE: multi-byte characters take several tokens.
    assert len(ids) > len(TEXT.split())
    detok = IncrementalDetokenizer(tokenizer.backend_tokenizer, [], [])
    deltas = []
    for token in ids:
        detok.add(token)
        deltas.append(detok.delta(final=False))
    deltas.append(detok.delta(final=True))
    assert "".join(deltas) == TEXT
    assert all("\ufffd" not in d for d in deltas)
    assert any(d == "" for d in deltas)  # held back until a character was complete


def test_stop_string_split_across_tokens_is_held_back(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    ids = tokenizer("one two STOP three")["input_ids"]
    detok = IncrementalDetokenizer(tokenizer.backend_tokenizer, [], ["STOP"])
    sent = ""
    for token in ids:
        detok.add(token)
        if detok.hit_stop():
            break
        sent += detok.delta(final=False)
    sent += detok.delta(final=True)
    assert sent == "one two "
    assert detok.text == "one two "


def test_earliest_stop_string_wins(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    detok = IncrementalDetokenizer(tokenizer.backend_tokenizer, [], ["three", "two"])
    for token in tokenizer("one two three")["input_ids"]:
        detok.add(token)
    assert detok.hit_stop()
    assert detok.text == "one "
