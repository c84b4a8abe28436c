"""Incremental detokenization and stop strings, per sequence.

Text is produced with `tokenizers`' `DecodeStream`, which holds back tokens until they form
whole UTF-8 characters (so a delta never carries half a character), primed with the end of
the prompt so leading spaces decode as they would in context. While a request has stop
strings, the last `max(len(stop)) - 1` characters are held back from the stream: they could
be the start of a stop string, which is never sent.
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

#: Prompt tokens used as decoding context.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: list[str]) -> None:
        """`tokenizer`: a `tokenizers.Tokenizer` (a fast HF tokenizer's `backend_tokenizer`)."""
        self._tokenizer = tokenizer
        self._stream = DecodeStream(ids=prompt_ids[-_CONTEXT_TOKENS:], skip_special_tokens=True)
        self._stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self._sent = 0

    def add(self, token_id: int) -> None:
        piece = self._stream.step(self._tokenizer, token_id)
        if piece:
            self.text += piece

    def hit_stop(self) -> bool:
        """True (and the text cut before it) if the text now contains a stop string."""
        if not self._stop:
            return False
        window = max(0, self._sent - self._holdback)
        cut = -1
        for stop in self._stop:
            at = self.text.find(stop, window)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut == -1:
            return False
        self.text = self.text[:cut]
        return True

    def delta(self, final: bool) -> str:
        """Text not sent yet, minus what might still turn into a stop string."""
        end = len(self.text) if final else max(self._sent, len(self.text) - self._holdback)
        out = self.text[self._sent : end]
        self._sent = end
        return out
