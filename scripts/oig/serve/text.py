"""One answer's text as the engine hands its tokens over: decoded incrementally, held back while a stop
string may be forming or a character is half there, cut at the first stop string. Both ways of waiting
for the tokens use it: ``LocalModel.generate`` on a thread, ``LocalModel.agenerate`` on an event loop.
"""

from __future__ import annotations


class AnswerText:
    """The text so far of one answer and what of it has gone out. ``add`` takes each hand-over of token
    ids and returns the text that may go out now; ``end`` returns the rest once the tokens have ended.
    ``result`` (a ``Generation``) gets the final text and finish reason."""

    def __init__(self, tokenizer, stops: list[str], eos: set[int], result):
        self.tokenizer, self.stops, self.eos, self.result = tokenizer, stops, eos, result
        self.ids: list[int] = []
        # Decoding all ids after every token costs O(n^2): text up to a finished line is kept as it was
        # decoded and only the tokens after it are decoded again (as TextStreamer does).
        self.committed, self.anchor = "", 0
        self.sent = 0  # characters of the decoded text already returned
        self.hold = max((len(s) for s in stops), default=1) - 1  # a stop string may be forming at the end
        self.ended_on_eos = False
        self.stopped = False  # a stop string ended the answer: nothing more goes out

    def _decoded(self) -> str:
        return self.committed + self.tokenizer.decode(self.ids[self.anchor:], skip_special_tokens=True)

    def add(self, chunk: list[int]) -> str:
        """The text these tokens let out (may be empty); after a stop string, ``stopped`` is True."""
        self.ids.extend(chunk)
        self.result.completion_tokens = len(self.ids)
        self.ended_on_eos = bool(chunk) and chunk[-1] in self.eos
        text = self._decoded()
        if text.endswith("\ufffd"):
            return ""  # half of a multi-byte character: wait for the rest
        if text.endswith("\n"):
            self.committed, self.anchor = text, len(self.ids)
        cut = _first_stop(text, self.stops, self.sent)
        if cut is not None:
            piece = text[self.sent:cut] if cut > self.sent else ""
            self.result.text.append(text[:cut])
            self.result.finish_reason = "stop"
            self.stopped = True
            return piece
        safe = len(text) - self.hold
        if safe > self.sent:
            piece, self.sent = text[self.sent:safe], safe
            return piece
        return ""

    def end(self, max_new: int) -> str:
        """The rest of the text, once the engine has handed over its last token."""
        text = self._decoded()
        cut = _first_stop(text, self.stops, 0)
        final = text if cut is None else text[:cut]
        self.result.text.append(final)
        self.result.finish_reason = ("stop" if (self.ended_on_eos or cut is not None or len(self.ids) < max_new)
                                     else "length")
        return final[self.sent:] if len(final) > self.sent else ""


def _first_stop(text: str, stops: list[str], start: int) -> int | None:
    """Where the earliest stop string begins, searching from just before ``start``."""
    best = None
    for s in stops:
        i = text.find(s, max(0, start - len(s) + 1))
        if i >= 0 and (best is None or i < best):
            best = i
    return best
