"""Transcripts people can read, read back by independent parsers: `srt` and `webvtt-py`."""

from __future__ import annotations

import html
import json
import random
from datetime import timedelta
from typing import Any

import pytest
import srt
import webvtt

from emulator.state import transcript_data
from tasks.formats import (
    MAX_CUE_S,
    MAX_LINE,
    PAUSE_S,
    Format,
    UnreadableTranscript,
    render,
    speaker_name,
    words,
)


def spoken(data: bytes) -> list[str]:
    return [word.text for word in words(data)]


def segment(name: str | None, *timed: tuple[str, float, float]) -> dict[str, Any]:
    participant = None if name is None else {"id": 7, "name": name}
    return {
        "participant": participant,
        "words": [
            {
                "text": text,
                "start_timestamp": {"relative": start, "absolute": None},
                "end_timestamp": {"relative": end, "absolute": None},
            }
            for text, start, end in timed
        ],
    }


def long_meeting(seed: int) -> bytes:
    """Turns of many words, long pauses and long words, overlapping nothing."""
    rng = random.Random(seed)
    clock, segments = 0.0, []
    for _ in range(20):
        name = rng.choice(
            ["Ada Lovelace", "Grace", "", None, "A Very Long Name Indeed For Someone"]
        )
        timed = []
        for _ in range(rng.randint(1, 60)):
            text = rng.choice(["so", "pipeline", "x" * rng.randint(1, 50), "numbers", "ok"])
            length = rng.uniform(0.1, 0.9)
            timed.append((text, clock, clock + length))
            clock += length + rng.choice([0.05, 0.2, 1.6, 3.0])
        segments.append(segment(name, *timed))
    return json.dumps(segments).encode()


CASES = [transcript_data(f"t-{i}") for i in range(5)] + [long_meeting(s) for s in range(5)]


@pytest.mark.parametrize("data", CASES)
def test_srt_parses_back_with_every_word_in_order_within_the_conventions(data: bytes) -> None:
    cues = list(srt.parse(render(data, Format.SRT).decode()))
    texts: list[str] = []
    previous: srt.Subtitle | None = None
    for cue in cues:
        lines = cue.content.split("\n")
        assert 1 <= len(lines) <= 2 and all(len(line) <= MAX_LINE for line in lines), lines
        assert cue.end - cue.start <= timedelta(seconds=MAX_CUE_S)
        speaker, _, first = lines[0].partition(": ")
        texts += (first + " " + " ".join(lines[1:])).split()
        if previous is not None and previous.start == cue.start:
            pytest.fail("two cues at one time")
        previous = cue
        assert speaker  # every cue names its speaker
    assert "".join(texts) == "".join(spoken(data))  # long words may wrap: compare letters


@pytest.mark.parametrize("data", CASES)
def test_vtt_parses_back_with_voices_and_every_word_in_order(data: bytes) -> None:
    captions = webvtt.from_string(render(data, Format.VTT).decode())
    names = {word.speaker for word in words(data)}
    texts: list[str] = []
    for caption in captions:
        assert caption.voice in names
        lines = caption.text.split("\n")
        assert 1 <= len(lines) <= 2 and all(len(line) <= MAX_LINE for line in lines), lines
        assert caption.end_in_seconds - caption.start_in_seconds <= MAX_CUE_S + 0.001
        texts += caption.text.split()
    assert "".join(texts) == "".join(spoken(data))


def test_a_cue_ends_at_a_change_of_speaker_and_at_a_pause_over_a_second_and_a_half() -> None:
    data = json.dumps(
        [
            segment("Ada", ("one", 0.0, 0.5), ("two", 0.6, 1.0)),
            segment("Grace", ("three", 1.1, 1.5)),
            segment("Grace", ("four", 1.6, 2.0), ("five", 2.0 + PAUSE_S + 0.1, 4.0)),
        ]
    ).encode()
    cues = list(srt.parse(render(data, Format.SRT).decode()))
    assert [cue.content for cue in cues] == ["Ada: one two", "Grace: three four", "Grace: five"]


def test_text_is_a_paragraph_per_turn_with_its_time_and_speaker() -> None:
    data = json.dumps(
        [
            segment(None, ("hello", 3.2, 3.5)),
            segment("Ada", ("so", 3725.0, 3725.2), ("then", 3725.3, 3725.6)),
            segment("Ada", ("again", 3726.0, 3726.3)),
        ]
    ).encode()
    text = render(data, Format.TEXT).decode()
    assert text == "[00:00:03] Unknown speaker: hello\n\n[01:02:05] Ada: so then again\n"


def test_speakers_are_named_and_fall_back_readably() -> None:
    assert speaker_name({"id": 3, "name": "  Ada   Lovelace "}) == "Ada Lovelace"
    assert speaker_name({"id": 3, "name": ""}) == "Speaker 3"
    assert speaker_name(None) == "Unknown speaker"
    assert len(speaker_name({"id": 1, "name": "x" * 80})) <= 30


def test_json_is_the_data_as_stored_and_unreadable_data_is_said_to_be() -> None:
    data = transcript_data("t-1")
    assert render(data, Format.JSON) == data
    with pytest.raises(UnreadableTranscript):
        render(b'{"not": "a list"}', Format.SRT)


def test_vtt_escapes_markup_in_words_and_names() -> None:
    """A word or a name holding `<` or `&` is text, not a tag: escaped, and read back as it was."""
    data = json.dumps([segment("<b>Eve</b> & co", ("a<b", 0.0, 0.5), ("&", 0.6, 1.0))]).encode()
    (caption,) = webvtt.from_string(render(data, Format.VTT).decode())
    assert html.unescape(caption.voice) == "<b>Eve</b> & co"
    assert html.unescape(caption.text) == "a<b &"
    assert caption.raw_text.count("<") == 1  # the voice span alone


def test_a_word_spoken_longer_than_a_cue_still_fits_one_after_rounding() -> None:
    """Start and end are rounded to milliseconds each: the cue is cut after rounding, so a
    start that rounds down never leaves a cue a millisecond too long."""
    data = json.dumps(
        [segment("Ada", *[(f"w{k}", k * 30 + 0.0005, k * 30 + 20.0) for k in range(40)])]
    ).encode()
    for cue in srt.parse(render(data, Format.SRT).decode()):
        assert cue.end - cue.start <= timedelta(seconds=MAX_CUE_S)
    for caption in webvtt.from_string(render(data, Format.VTT).decode()):
        assert round((caption.end_in_seconds - caption.start_in_seconds) * 1000) <= 7000


def test_a_word_holding_newlines_stays_inside_its_cue() -> None:
    """A blank line ends an SRT or WebVTT cue: whitespace inside a word is one space."""
    data = json.dumps([segment("Ada", ("one\n\n2\n00:00:00,000 --> 00:00:01,000", 0, 1))])
    (cue,) = srt.parse(render(data.encode(), Format.SRT).decode())
    assert cue.content == "Ada: one 2 00:00:00,000 --) 00:00:01,000"
    (caption,) = webvtt.from_string(render(data.encode(), Format.VTT).decode())
    assert caption.text.split() == ["one", "2", "00:00:00,000", "--&gt;", "00:00:01,000"]


@pytest.mark.parametrize("stamp", ["NaN", "Infinity", "-Infinity", "1e300"])
def test_a_timestamp_that_is_no_time_makes_the_data_unreadable(stamp: str) -> None:
    data = json.dumps([segment("Ada", ("one", 0.0, 0.5))]).replace("0.5", stamp).encode()
    for fmt in (Format.SRT, Format.VTT, Format.TEXT):
        with pytest.raises(UnreadableTranscript):
            render(data, fmt)
