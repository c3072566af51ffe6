"""Transcripts people can read: plain text by speaker turn, and SRT and WebVTT subtitles, rendered
from Recall's data (a list of segments, each a participant and its timed words).

Subtitle cues follow the usual broadcast conventions: at most 7 seconds, at most two lines of at
most 42 characters, and a new cue at every change of speaker and at every pause over 1.5 seconds.
The speaker is named from the participant's name, else "Speaker <id>", else "Unknown speaker"
(someone spoke before the bot joined). The renderers are ours, a few lines each: the work is in
cutting cues, which no library does for us; `srt` and `webvtt-py` parse what we write in the
tests, as independent readers, which they could not be if they had written it too.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from html import escape
from typing import IO, Any

log = logging.getLogger(__name__)
MAX_CUE_S = 7.0
MAX_LINE = 42
MAX_LINES = 2
PAUSE_S = 1.5
MAX_NAME = 30  # a speaker's label leaves room on the first line
MAX_TIME_S = 10_000_000.0  # about 115 days: a timestamp past it is not a recording's


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
        return {
            Format.JSON: "application/json",
            Format.TEXT: "text/plain; charset=utf-8",
            Format.SRT: "application/x-subrip; charset=utf-8",
            Format.VTT: "text/vtt; charset=utf-8",
        }[self]


class UnreadableTranscript(ValueError):
    """The data is not Recall's list of participants and words."""


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
    """`data` (as downloaded from Recall) in `fmt`."""
    if fmt is Format.JSON:
        return data
    return RENDERERS[fmt](words(data)).encode()


def words(data: bytes) -> list[Word]:
    """Every word of the transcript with its speaker, in the order Recall gives them."""
    try:
        segments = json.loads(data)
        out = []
        for segment in segments:
            speaker = speaker_name(segment.get("participant"))
            for word in segment.get("words") or []:
                text = " ".join(str(word.get("text") or "").split())  # a newline ends a cue
                if not text:
                    continue
                start = _seconds(word["start_timestamp"]["relative"])
                end_stamp = word.get("end_timestamp") or {}
                end = end_stamp.get("relative")
                end = max(start, _seconds(end) if end is not None else start)
                out += _pieces(speaker, start, end, text)
        return out
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UnreadableTranscript(f"not Recall's transcript data: {exc}") from None


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
    """The participant's name (at most MAX_NAME characters), else a readable fallback."""
    if not participant:
        return "Unknown speaker"
    name = " ".join(str(participant.get("name") or "").split())
    if name:
        return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"
    if participant.get("id") is not None:
        return f"Speaker {participant['id']}"
    return "Unknown speaker"


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
        blocks.append(f"{number}\n{_times(cue, ',')}\n" + "\n".join(lines) + "\n")
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
    """The files to persist beside a transcript's data (TRANSCRIPT_FORMATS), by suffix; none
    when the data cannot be read as a transcript (the data itself is kept whatever it holds)."""
    chosen = [Format(name) for name in formats if name != Format.JSON]
    if not chosen:
        return {}
    staged.flush()
    staged.seek(0)
    data = staged.read()
    try:
        return {fmt.suffix: render(data, fmt) for fmt in chosen}
    except UnreadableTranscript as exc:
        log.warning("transcript formats not written: %s", exc)
        return {}
