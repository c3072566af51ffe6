"""Transcripts people can read: plain text by speaker turn, and SRT and WebVTT subtitles, rendered
from Recall's data (a list of segments, each a participant and its timed words).

Subtitle cues follow the usual broadcast conventions: at most 7 seconds, at most two lines of at
most 42 characters, and a new cue at every change of speaker and at every pause over 1.5 seconds.
The speaker is named from the participant's name, else "Speaker <id>", else "Unknown speaker"
(someone spoke before the bot joined). The renderers are ours, a few lines each: the work is in
cutting cues, which no library does for us; `srt` and `webvtt-py` parse what we write in the
tests, as independent readers, which they could not be if they had written it too.

Names and words come from meeting participants, so they are made plain before they are written:
control characters (terminal escapes) become spaces, bidi controls go, whitespace runs are one
space (a blank line would end a cue), lone surrogates (a name cut inside a UTF-16 pair: no text,
nothing can encode them) become U+FFFD, and SRT's markup characters become parentheses (below).
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from html import escape
from typing import IO, TYPE_CHECKING, Any

from tasks.store.layout import DATA, MEDIA_TYPES, Stored

if TYPE_CHECKING:
    from tasks.store import Store

log = logging.getLogger(__name__)
MAX_CUE_S = 7.0
MAX_LINE = 42
MAX_LINES = 2
PAUSE_S = 1.5
MAX_NAME = 30  # a speaker's label leaves room on the first line
MAX_TIME_S = 10_000_000.0  # about 115 days: a timestamp past it is not a recording's
# Rendering holds about 6x the data in memory: past this, a format is served only if persisted.
RENDER_MAX_BYTES = 8 * 1024 * 1024  # about 50,000 words, five hours of speech

_CONTROLS = [*range(0x20), *range(0x7F, 0xA0)]  # C0, DEL and C1: ESC, BEL, NUL, CSI...
# Bidi marks, embeddings, overrides and isolates show text in another order than it is written.
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_SURROGATES = range(0xD800, 0xE000)
_PLAIN = str.maketrans(
    {
        **dict.fromkeys(_CONTROLS, " "),
        **dict.fromkeys(_BIDI),
        **dict.fromkeys(_SURROGATES, "\ufffd"),
    }
)
# SRT has no escapes, and players read `<b>`, `<font>` and `{\an8}` as markup: parentheses are
# shown as written everywhere, look like no markup, and turn `-->` into `--)`.
_SRT_PLAIN = str.maketrans("<>{}", "()()")
# For a terminal: a \u escape runs nothing, and JSON keeps its value (raw, these are valid only
# inside its strings); a carriage return, which would let text overwrite its line, is a space
# (JSON whitespace either way). Tab and newline stay.
_TERMINAL = str.maketrans(
    {c: f"\\u{c:04x}" for c in [*_CONTROLS, *_BIDI] if chr(c) not in "\t\n\r"} | {0x0D: " "}
)


class Format(StrEnum):
    JSON = "json"  # the data exactly as stored
    TEXT = "text"
    SRT = "srt"
    VTT = "vtt"

    @property
    def suffix(self) -> str:
        """The file beside `${transcript_id}.json` that holds this format."""
        return {Format.JSON: ".json", Format.TEXT: ".txt", Format.SRT: ".srt", Format.VTT: ".vtt"}[
            self
        ]

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.suffix]


# What reading data of another shape raises; RecursionError: JSON nested deeper than the parser
# goes, which a transcript never is. Any of them: the data is kept, and said to be unreadable.
_NOT_RECALLS = (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError)


class CannotRender(ValueError):
    """The transcript cannot be rendered in the format asked for (the message says why)."""


class UnreadableTranscript(CannotRender):
    """The data is not Recall's list of participants and words."""


class TooLargeToRender(CannotRender):
    """The data is over RENDER_MAX_BYTES, and the format was not persisted beside it."""


@dataclass(frozen=True)
class Word:
    speaker: str
    start: float
    end: float
    text: str


@dataclass
class Cue:
    speaker: str
    start: float
    end: float
    lines: list[str]


def render(data: bytes, fmt: Format) -> bytes:
    """`data` (as downloaded from Recall) in `fmt`; `CannotRender` when it cannot be."""
    if fmt is Format.JSON:
        return data
    all_words = words(data)
    try:
        return RENDERERS[fmt](all_words).encode()
    except Exception as exc:  # a fault of ours, whatever it is: said (409), the data kept
        why = plain(f"{type(exc).__name__}: {exc}")  # one line
        raise CannotRender(f"cannot be rendered as {fmt}: {why}") from None


def words(data: bytes) -> list[Word]:
    """Every word of the transcript with its speaker, in the order Recall gives them."""
    try:
        segments = json.loads(data)
        out = []
        for segment in segments:
            speaker = speaker_name(segment.get("participant"))
            for word in segment.get("words") or []:
                text = plain(str(word.get("text") or ""))
                if not text:
                    continue
                start = _seconds(word["start_timestamp"]["relative"])
                end_stamp = word.get("end_timestamp") or {}
                end = end_stamp.get("relative")
                end = max(start, _seconds(end) if end is not None else start)
                out += _pieces(speaker, start, end, text)
        return out
    except _NOT_RECALLS as exc:
        raise UnreadableTranscript(f"not Recall's transcript data: {exc}") from None


def plain(text: str) -> str:
    """`text` on one line, shown as written: no control characters, no bidi controls."""
    return " ".join(text.translate(_PLAIN).split())


def _seconds(value: Any) -> float:
    seconds = float(value)
    if not math.isfinite(seconds) or abs(seconds) > MAX_TIME_S:
        raise ValueError(f"a timestamp of {value!r} s")
    return seconds


def _pieces(speaker: str, start: float, end: float, text: str) -> list[Word]:
    """A word longer than a line, cut into lines, its time shared among them."""
    count = -(-len(text) // MAX_LINE)
    step = (end - start) / count
    return [
        Word(
            speaker,
            start + i * step,
            start + (i + 1) * step,
            text[i * MAX_LINE : (i + 1) * MAX_LINE],
        )
        for i in range(count)
    ]


def speaker_name(participant: dict[str, Any] | None) -> str:
    """The participant's name, else `Speaker <id>`: either plain and at most MAX_NAME long (an
    id is the participant's to choose too), else "Unknown speaker"."""
    if not participant:
        return "Unknown speaker"
    label = _label(str(participant.get("name") or ""))
    if not label and participant.get("id") is not None:
        label = _label(f"Speaker {participant['id']}")
    return label or "Unknown speaker"


def _label(text: str) -> str:
    label = plain(text)
    return label if len(label) <= MAX_NAME else label[: MAX_NAME - 1] + "…"


def turns(all_words: list[Word]) -> Iterator[list[Word]]:
    """Runs of words by one speaker."""
    run: list[Word] = []
    for word in all_words:
        if run and word.speaker != run[-1].speaker:
            yield run
            run = []
        run.append(word)
    if run:
        yield run


def cues(all_words: list[Word], label: Callable[[str], int]) -> list[Cue]:
    """Subtitle cues: a new one at a change of speaker, after a pause over PAUSE_S, and whenever
    the next word would make the cue longer than MAX_CUE_S or its text more than MAX_LINES lines
    of MAX_LINE characters, `label(speaker)` of them on the first line being the speaker's."""
    out: list[Cue] = []
    for turn in turns(all_words):
        cue: Cue | None = None
        taken = label(turn[0].speaker)
        for word in turn:
            lines = _placed(cue.lines, word.text, taken) if cue is not None else None
            if (
                cue is None
                or lines is None
                or word.start - cue.end > PAUSE_S
                or word.end - cue.start > MAX_CUE_S
            ):
                if cue is not None:
                    out.append(cue)
                cue = Cue(word.speaker, word.start, word.end, [])
                lines = _placed([], word.text, taken) or [word.text]  # a word fits an empty cue
            cue.lines, cue.end = lines, max(cue.end, word.end)
        if cue is not None:
            out.append(cue)
    return out


def _placed(lines: list[str], piece: str, taken: int) -> list[str] | None:
    """A cue's lines with `piece` added: on its last line, or on a new one; None if it does not
    fit. The first line has `taken` characters less (the speaker's label); when the label fills
    it, the text starts on the second."""

    def room(line: int) -> int:
        return MAX_LINE - (taken if line == 0 else 0)

    if lines:
        joined = f"{lines[-1]} {piece}" if lines[-1] else piece
        if len(joined) <= room(len(lines) - 1):
            return [*lines[:-1], joined]
    for line in range(len(lines), MAX_LINES):
        if len(piece) <= room(line):
            return [*lines, *[""] * (line - len(lines)), piece]
        if lines:
            break
    return None


def _millis(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _clock(millis: int, separator: str) -> str:
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _times(cue: Cue, separator: str) -> str:
    start = _millis(cue.start)
    end = _millis(cue.end) if cue.end > cue.start else start + 500  # an instant still shows
    end = min(end, start + round(MAX_CUE_S * 1000))  # a word spoken for longer still fits
    return f"{_clock(start, separator)} --> {_clock(end, separator)}"


def to_srt(all_words: list[Word]) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm`, the speaker as `Name: ` before the first line."""
    blocks = []
    for number, cue in enumerate(cues(all_words, lambda speaker: len(speaker) + 2), start=1):
        lines = [f"{cue.speaker}: {cue.lines[0]}".rstrip(), *cue.lines[1:]]
        text = "\n".join(lines).translate(_SRT_PLAIN)
        blocks.append(f"{number}\n{_times(cue, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(all_words: list[Word]) -> str:
    """WebVTT: `HH:MM:SS.mmm` cues, the speaker as a voice span `<v Name>`."""
    blocks = ["WEBVTT\n"]
    for cue in cues(all_words, lambda speaker: 0):
        text = "\n".join(escape(line, quote=False) for line in cue.lines)
        voice = escape(cue.speaker, quote=False)
        blocks.append(f"{_times(cue, '.')}\n<v {voice}>{text}\n")
    return "\n".join(blocks)


def to_text(all_words: list[Word]) -> str:
    """One paragraph per speaker turn: `[hh:mm:ss] Name: words`."""
    paragraphs = []
    for turn in turns(all_words):
        stamp = _clock(_millis(turn[0].start), ",").split(",")[0]
        paragraphs.append(f"[{stamp}] {turn[0].speaker}: " + " ".join(w.text for w in turn))
    return "\n\n".join(paragraphs) + ("\n" if paragraphs else "")


RENDERERS: dict[Format, Callable[[list[Word]], str]] = {
    Format.TEXT: to_text,
    Format.SRT: to_srt,
    Format.VTT: to_vtt,
}


def beside(staged: IO[bytes], formats: list[str]) -> dict[str, bytes]:
    """The files to persist beside a transcript's data (TRANSCRIPT_FORMATS), by suffix; a format
    that cannot be rendered, for whatever reason, is logged and left out: the data itself is
    kept whatever it holds (the route renders it on demand, or says why it cannot)."""
    chosen = [Format(name) for name in formats if name != Format.JSON]
    if not chosen:
        return {}
    staged.flush()
    staged.seek(0)
    data = staged.read()
    rendered = {}
    for fmt in chosen:
        try:
            rendered[fmt.suffix] = render(data, fmt)
        except UnreadableTranscript as exc:
            log.warning("transcript formats not written: %s", exc)
            return {}
        except Exception:  # any fault of a renderer: the data is persisted all the same
            log.exception("transcript not written as %s", fmt)
    return rendered


def open_transcript(store: Store, recording_id: str, transcript_id: str, fmt: Format) -> Stored:
    """The transcript in `fmt`, to read in chunks: the file persisted in that format (the data
    itself for json) as stored, else rendered from data of at most RENDER_MAX_BYTES, so a reader
    never holds a large transcript in memory. FileNotFoundError when the data is not there."""
    try:
        return store.open(recording_id, transcript_id, fmt.suffix)
    except FileNotFoundError:
        if fmt is Format.JSON:
            raise
    with store.open(recording_id, transcript_id, DATA) as stored:
        if stored.size > RENDER_MAX_BYTES:
            raise TooLargeToRender(
                f"{stored.size} bytes is over the {RENDER_MAX_BYTES} rendered on demand "
                f"(RENDER_MAX_BYTES): ask for json, or persist {fmt} with TRANSCRIPT_FORMATS"
            )
        data = b"".join(stored)
    body = render(data, fmt)
    return Stored(len(body), io.BytesIO(body))


def for_terminal(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """UTF-8 `chunks` as a terminal shows them: control and bidi characters as `\\u` escapes
    (a carriage return a space), whatever a stored file holds."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for chunk in chunks:
        yield decoder.decode(chunk).translate(_TERMINAL).encode()
    yield decoder.decode(b"", final=True).translate(_TERMINAL).encode()
