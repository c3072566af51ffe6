"""Transcripts whose names, ids and words are written to attack players and terminals: read
back by `srt` and `webvtt-py`, they hold exactly the cues we meant, and nothing runs."""

from __future__ import annotations

import contextlib
import html
import json
import unicodedata
from datetime import timedelta
from typing import Any

import pytest
import srt
import webvtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.formats import (
    MAX_NAME,
    Format,
    UnreadableTranscript,
    cues,
    for_terminal,
    render,
    speaker_name,
    turns,
    words,
)

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
HOSTILE = [
    "\n",
    "\n\n",
    "\r\n",
    "2\n00:00:00,000 --> 99:00:00,000",
    "-->",
    "1",
    '<font color="#00000000">',
    "<b>",
    "</i>",
    "{\\an8}",
    "<v Eve>",
    "<00:00:01.000>",
    "&lt;b&gt;",
    "WEBVTT",
    "NOTE",
    "\x1b[2J\x1b]0;owned\x07",
    "\x00",
    "\x9b31m",
    "\u202e",
    "\u2028",
    " ",
]
# A lone surrogate: a name cut inside a UTF-16 pair, as JSON's "\\ud83d" carries it.
surrogates = st.characters(categories=["Cs"])
texts = st.lists(st.sampled_from(HOSTILE) | st.text(max_size=8) | surrogates, max_size=6).map(
    "".join
)
SRT_MARKUP = str.maketrans("<>{}", "()()")


def segment(participant: Any, *texts: str, start: float = 0.0) -> dict[str, Any]:
    return {
        "participant": participant,
        "words": [
            {
                "text": text,
                "start_timestamp": {"relative": start + i, "absolute": None},
                "end_timestamp": {"relative": start + i + 0.5, "absolute": None},
            }
            for i, text in enumerate(texts)
        ],
    }


@st.composite
def transcripts(draw: st.DrawFn) -> bytes:
    """Segments of hostile names, ids and words, each segment a few seconds after the last."""
    participant = st.none() | st.fixed_dictionaries(
        {"id": st.none() | st.integers() | texts, "name": st.none() | texts}
    )
    count = draw(st.integers(1, 5))
    return json.dumps(
        [
            segment(draw(participant), *draw(st.lists(texts, max_size=6)), start=10.0 * k)
            for k in range(count)
        ]
    ).encode()


def unsafe(text: str) -> list[str]:
    """The characters a player or terminal could act on: controls (but a format's newline) and
    bidi controls; and lone surrogates, which no encoding writes."""
    return [
        c
        for c in text
        if (unicodedata.category(c) == "Cc" and c != "\n")
        or c in BIDI
        or unicodedata.category(c) == "Cs"
    ]


def millis(stamp: webvtt.models.Timestamp) -> int:
    return ((stamp.hours * 60 + stamp.minutes) * 60 + stamp.seconds) * 1000 + stamp.milliseconds


def srt_meant(data: bytes) -> list[tuple[timedelta, str]]:
    """Each cue's start and text, speaker included, as the cutting meant them."""
    meant = cues(words(data), lambda speaker: len(speaker) + 2)
    return [
        (
            timedelta(milliseconds=round(cue.start * 1000)),
            "\n".join([f"{cue.speaker}: {cue.lines[0]}".rstrip(), *cue.lines[1:]]).translate(
                SRT_MARKUP
            ),
        )
        for cue in meant
    ]


@PROPERTY
@given(data=transcripts())
def test_srt_reads_back_as_exactly_the_cues_meant_and_never_markup(data: bytes) -> None:
    written = render(data, Format.SRT).decode()
    parsed = list(srt.parse(written))  # raises on anything between blocks that is no cue
    assert [(cue.start, cue.content) for cue in parsed] == srt_meant(data)
    assert [cue.index for cue in parsed] == list(range(1, len(parsed) + 1))
    assert all(timedelta(0) < cue.end - cue.start <= timedelta(seconds=7) for cue in parsed)
    timing = [line for line in written.split("\n") if "-->" in line]
    assert len(timing) == len(parsed)  # no other line looks like a timing line
    assert not unsafe(written) and not set("<>{}") & set("".join(c.content for c in parsed))


@PROPERTY
@given(data=transcripts())
def test_vtt_reads_back_as_exactly_the_cues_meant(data: bytes) -> None:
    written = render(data, Format.VTT).decode()
    meant = cues(words(data), lambda speaker: 0)
    parsed = webvtt.from_string(written).captions
    assert [
        (millis(c.start_time), html.unescape(c.voice), html.unescape(c.text)) for c in parsed
    ] == [(round(cue.start * 1000), cue.speaker, "\n".join(cue.lines)) for cue in meant]
    assert sum("-->" in line for line in written.split("\n")) == len(parsed)
    assert not unsafe(written)


@PROPERTY
@given(data=transcripts())
def test_text_is_one_line_per_turn_and_nothing_a_terminal_runs(data: bytes) -> None:
    written = render(data, Format.TEXT).decode()
    meant = list(turns(words(data)))
    paragraphs = written.removesuffix("\n").split("\n\n") if meant else []
    assert len(paragraphs) == len(meant)
    for paragraph, turn in zip(paragraphs, meant, strict=True):
        assert "\n" not in paragraph and paragraph[11:].startswith(f"{turn[0].speaker}: ")
    assert not unsafe(written)


@PROPERTY
@given(name=st.none() | texts, participant_id=st.none() | st.integers() | texts)
def test_every_label_fallback_included_is_plain_and_short(
    name: str | None, participant_id: int | str | None
) -> None:
    label = speaker_name({"id": participant_id, "name": name})
    assert label and label == " ".join(label.split()) and len(label) <= MAX_NAME
    assert not unsafe(label) and "\n" not in label


def test_an_injected_cue_in_a_participant_id_stays_in_its_own_cue() -> None:
    """The reviewer's case: an id that opens a cue from 0 s to 99 h, hidden by an invisible font."""
    hostile = {"id": '7\n\n2\n00:00:00,000 --> 99:00:00,000\n<font color="#00000000">', "name": ""}
    data = json.dumps(
        [segment(hostile, "hello", start=5.0), segment({"id": 1, "name": "Ada"}, "hi", start=9)]
    ).encode()
    (first, second) = srt.parse(render(data, Format.SRT).decode())
    assert first.start == timedelta(seconds=5) and first.end <= timedelta(seconds=6)
    assert first.content.startswith("Speaker 7 2 00:00:00,000 --)")
    assert second.content == "Ada: hi"
    (one, two) = webvtt.from_string(render(data, Format.VTT).decode()).captions
    assert (one.text, two.voice, two.text) == ("hello", "Ada", "hi")


def test_srt_shows_markup_as_words() -> None:
    data = json.dumps(
        [segment({"id": 1, "name": "<b>Eve</b>"}, '<font color="#00000000">x', "{\\an8}y")]
    ).encode()
    (cue,) = srt.parse(render(data, Format.SRT).decode())
    assert cue.content == '(b)Eve(/b): (font color="#00000000")x\n(\\an8)y'


def test_no_format_passes_a_control_or_bidi_character() -> None:
    data = json.dumps(
        [segment({"id": "\x1b]0;x\x07", "name": None}, "a\x1b[31mb", "c\u202ed\x00", "\x9b2J")]
    ).encode()
    for fmt in (Format.TEXT, Format.SRT, Format.VTT):
        written = render(data, fmt).decode()
        assert not unsafe(written), fmt
        assert "a [31mb cd 2J" in written  # a control is a space, a bidi control nothing


@PROPERTY
@given(
    text=st.text(),
    cuts=st.lists(st.integers(0, 200), max_size=4),
)
def test_the_cli_shows_stored_json_with_escapes_in_place_of_controls(
    text: str, cuts: list[int]
) -> None:
    """`jobs transcript` prints any stored file through `for_terminal`, cut into chunks anywhere
    (in a UTF-8 sequence too): nothing a terminal runs, and JSON keeps its value."""
    data = json.dumps([{"participant": {"name": text}}], ensure_ascii=False).encode()
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    shown = b"".join(for_terminal(chunks)).decode()
    assert not unsafe(shown) and json.loads(shown) == json.loads(data)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 5000 + b"]" * 5000,
        json.dumps([segment({"id": 1, "name": "Ada"}, "hi")])
        .replace('"hi"', "[" * 5000 + "]" * 5000)
        .encode(),
        b'[{"words": [{"text": "x", "start_timestamp": {"relative": 1' + b"0" * 400 + b"}}]}]",
    ],
    ids=["nested", "nested-word", "huge-number"],
)
def test_data_the_renderer_cannot_handle_is_unreadable_not_a_crash(data: bytes) -> None:
    for fmt in (Format.TEXT, Format.SRT, Format.VTT):
        with pytest.raises(UnreadableTranscript):
            render(data, fmt)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | surrogates,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
recall_keys = st.sampled_from(
    ["participant", "words", "text", "start_timestamp", "end_timestamp", "relative", "id", "name"]
)
recall_like = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(recall_keys, inner),
    max_leaves=30,
)


@PROPERTY
@given(value=recall_like)
def test_any_json_renders_or_is_unreadable(value: Any) -> None:
    """Whatever shape the data has, rendering it ends in words or in UnreadableTranscript (which
    persisting logs and the route answers 409), never another error."""
    data = json.dumps(value).encode()
    for fmt in (Format.TEXT, Format.SRT, Format.VTT):
        with contextlib.suppress(UnreadableTranscript):
            render(data, fmt)
