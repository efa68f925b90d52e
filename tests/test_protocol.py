from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sortline.hardware.protocol import (
    FIELD_RANGES,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    Ack,
    Encoder,
    ErrorReport,
    GateCommand,
    Heartbeat,
    ItemArrival,
    Parser,
    ScaleReading,
    TapReading,
    crc16,
)

MESSAGES = [
    ItemArrival(item_id=42, lane=1, t_ms=1500, deadline_ms=250),
    GateCommand(item_id=42, exit=3),
    Ack(item_id=42),
    Heartbeat(t_ms=99, last_item_id=41),
    ErrorReport(code=7, text="gate 2 jammed"),
    TapReading(item_id=42, index=0, count=5, peak_n=8.5, rebound=0.5, decay_ms=9.75, t_ms=1512),
    ScaleReading(t_ms=2000, grams=412.5, stable=1),
]


def test_crc_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1


def test_every_message_round_trips():
    frames = b"".join(Encoder().encode(m) for m in MESSAGES)
    parser = Parser()
    assert parser.feed(frames) == MESSAGES
    assert parser.stats.frames == len(MESSAGES)
    assert parser.stats.errors == 0 and parser.stats.garbage_bytes == 0


def test_documented_frame_layout():
    frame = Encoder().encode(GateCommand(item_id=42, exit=1))
    body = b"1,0,GATE,42,1"
    assert frame == b"$" + body + b"*%04X\n" % crc16(body)


def test_text_fields_cannot_break_framing():
    frame = Encoder().encode(ErrorReport(code=1, text="a,b*c$d\ne"))
    (message,) = Parser().feed(frame)
    assert message == ErrorReport(code=1, text="a b c d e")


def test_resynchronises_after_garbage_and_truncation():
    enc = Encoder()
    good1, cut, good2 = (enc.encode(m) for m in (MESSAGES[0], MESSAGES[1], MESSAGES[3]))
    stream = b"\x00\xffnoise" + good1 + cut[: len(cut) // 2] + good2 + b"tail"
    parser = Parser()
    assert parser.feed(stream) == [MESSAGES[0], MESSAGES[3]]
    assert parser.stats.malformed == 1  # the truncated frame
    assert parser.stats.garbage_bytes == len(b"\x00\xffnoise") + len(b"tail")
    assert parser.stats.seq_missing == 1  # the truncated frame's sequence number


def test_corrupted_byte_is_caught_by_crc():
    frame = bytearray(Encoder().encode(MESSAGES[0]))
    frame[10] ^= 0x01
    parser = Parser()
    assert parser.feed(bytes(frame)) == []
    assert parser.stats.bad_crc == 1


def test_wrong_version_and_unknown_type_are_counted():
    def framed(body: bytes) -> bytes:
        return b"$" + body + b"*%04X\n" % crc16(body)

    parser = Parser()
    assert parser.feed(framed(b"2,0,GATE,1,1") + framed(b"1,1,WHAT,1") + framed(b"1,2,GATE,x,1")) == []
    assert (parser.stats.bad_version, parser.stats.unknown_type, parser.stats.malformed) == (1, 1, 1)


def test_oversize_frame_is_dropped_without_unbounded_buffering():
    parser = Parser()
    parser.feed(b"$" + b"1" * (MAX_FRAME_BYTES * 4))
    assert parser.stats.oversize >= 1
    assert parser.feed(Encoder().encode(MESSAGES[1])) == [MESSAGES[1]]


def test_bytes_split_anywhere_parse_the_same():
    stream = b"".join(Encoder().encode(m) for m in MESSAGES)
    rng = random.Random(0)
    for _ in range(50):
        parser, out, i = Parser(), [], 0
        while i < len(stream):
            step = rng.randint(1, 20)
            out += parser.feed(stream[i : i + step])
            i += step
        assert out == MESSAGES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data):
    parser = Parser()
    parser.feed(data)
    parser.feed(data[::-1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(MESSAGES), st.binary(max_size=40).filter(lambda b: b"$" not in b)),
                max_size=12))
def test_frames_survive_interleaved_garbage(pairs):
    """Garbage between frames never costs a frame (garbage with no '$' cannot open a fake one)."""
    enc = Encoder()
    stream = b"".join(garbage + enc.encode(m) for m, garbage in pairs)
    assert Parser().feed(stream) == [m for m, _ in pairs]


@pytest.mark.parametrize("position", [0.1, 0.5, 0.9])
def test_mutated_frame_never_yields_a_wrong_message(position):
    enc = Encoder()
    frame = bytearray(enc.encode(MESSAGES[5]))
    rng = random.Random(position)
    wrong = 0
    for _ in range(500):
        mutated = bytearray(frame)
        i = int(position * (len(frame) - 2))
        mutated[i] = rng.randrange(256)
        got = Parser().feed(bytes(mutated))
        wrong += any(m != MESSAGES[5] for m in got)
    assert wrong == 0


def _frames(n: int) -> list[bytes]:
    enc = Encoder()
    return [enc.encode(GateCommand(item_id=i, exit=1)) for i in range(n)]


def test_sequence_numbers_tell_lost_from_duplicated_from_reordered():
    f = _frames(10)
    parser = Parser()
    # 3 lost; 5 sent twice; 7 and 8 swapped.
    stream = f[0] + f[1] + f[2] + f[4] + f[5] + f[5] + f[6] + f[8] + f[7] + f[9]
    assert [m.item_id for m in parser.feed(stream)] == [0, 1, 2, 4, 5, 5, 6, 8, 7, 9]
    s = parser.stats
    assert (s.seq_missing, s.seq_duplicates, s.seq_reordered, s.seq_restarts) == (1, 1, 1, 0)


def test_sequence_wraps_and_sender_restarts():
    parser = Parser()
    enc = Encoder()
    enc._seq = 0xFFFE
    parser.feed(b"".join(enc.encode(Heartbeat(t_ms=i)) for i in range(4)))  # 65534, 65535, 0, 1
    assert parser.stats.seq_missing == 0
    parser.feed(b"".join(f for f in _frames(2)))  # a new sender starting again at 0, 1
    assert parser.stats.seq_restarts == 0 and parser.stats.seq_duplicates == 2  # 0, 1 were just seen
    far = Encoder()
    far._seq = 30000
    parser.feed(far.encode(Heartbeat(t_ms=1)))  # a jump of 30000: a reset counter, not 29999 losses
    parser.feed(_frames(1)[0])  # and back to 0: restarted again
    assert parser.stats.seq_restarts == 2 and parser.stats.seq_missing == 0


def test_parser_survives_100k_random_and_mutated_inputs():
    """Random bytes, and valid frames with bytes flipped, cut, inserted or doubled."""
    rng = random.Random(2026)
    valid = [Encoder().encode(m) for m in MESSAGES]
    parser = Parser()
    delivered = 0
    for n in range(100_000):
        kind = n % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 48))
        else:
            frame = bytearray(rng.choice(valid))
            i = rng.randrange(len(frame))
            if kind == 1:
                frame[i] = rng.randrange(256)
            elif kind == 2:
                del frame[i:]
            else:
                frame[i:i] = rng.randbytes(rng.randrange(1, 4))
            data = bytes(frame)
        for message in parser.feed(data):
            assert message in MESSAGES  # whatever got through is a message someone sent
            delivered += 1
    s = parser.stats
    assert delivered > 1000 and s.bad_crc > 1000 and s.garbage_bytes > 0


def test_acknowledgements_do_not_use_up_sequence_numbers():
    enc = Encoder()
    frames = [enc.encode(m) for m in (Heartbeat(t_ms=1), Ack(item_id=1), Heartbeat(t_ms=2))]
    assert [f.split(b",")[1] for f in frames] == [b"0", b"1", b"1"]
    parser = Parser()
    parser.feed(frames[0] + frames[2] + frames[1])  # an ACK late or early is no sequence event
    assert (parser.stats.seq_missing, parser.stats.seq_duplicates, parser.stats.seq_reordered) == (0, 0, 0)


_NUMBER_TEXT = st.one_of(st.integers(min_value=-(10**40), max_value=10**40).map(str),
                         st.floats(allow_nan=True, allow_infinity=True).map(repr),
                         st.text(alphabet="0123456789-+.eE", max_size=30))


@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.lists(_NUMBER_TEXT, min_size=1, max_size=8))
@settings(max_examples=400, deadline=None)
def test_crc_valid_frames_yield_only_in_range_messages(type_name, fields):
    """What a hostile device that computes CRCs can send: any field text in a valid frame.
    Whatever parses lies within the protocol's ranges; everything else is counted."""
    body = ",".join(["1", "5", type_name, *fields]).encode()
    frame = b"$" + body + b"*%04X\n" % crc16(body)
    parser = Parser()
    for message in parser.feed(frame):
        for name, (lo, hi) in FIELD_RANGES[message.TYPE].items():
            assert lo <= getattr(message, name) <= hi
    parser.feed(b"$")  # ends an oversize frame's wait
    assert parser.stats.frames + parser.stats.errors >= 1  # parsed, or counted as rejected


def test_the_station_cannot_send_an_out_of_range_frame():
    with pytest.raises(ValueError, match="GATE.exit"):
        Encoder().encode(GateCommand(item_id=1, exit=300))
    with pytest.raises(ValueError, match="ITEM.item_id"):
        Encoder().encode(ItemArrival(item_id=10**18, lane=0, t_ms=0, deadline_ms=100))
