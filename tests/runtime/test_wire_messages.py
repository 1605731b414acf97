"""The sharded runtime's one codec: round trips, and a FrameError (never a crash) on bad frames."""

from __future__ import annotations

import hashlib
import struct

import msgpack
import pytest

from helix.runtime.messages import (
    VERSION,
    Forward,
    FrameError,
    Heartbeat,
    Sampled,
    SeqWork,
    Tensor,
    decode,
    encode,
)

DIGEST = hashlib.sha256(b"block").digest()


def work(**changes: object) -> SeqWork:
    fields = {
        "request_id": "r1", "start": 32, "num_tokens": 2, "token_ids": [5, 6],
        "route": ["a", "b"], "hop": 1, "sample": True, "params": {"temperature": 0.0},
        "layer_start": 3, "cache_cap": -1, "prefix_hashes": [DIGEST, DIGEST],
    }  # fmt: skip
    fields.update(changes)
    return SeqWork(**fields)  # type: ignore[arg-type]


def frames_of(message: object) -> list[bytes]:
    return [bytes(f) for f in encode(message)]  # type: ignore[arg-type]


def test_forward_round_trip_keeps_work_and_tensor_bytes() -> None:
    data = struct.pack("<4f", 1.0, -2.0, 3.5, 0.25)
    sent = Forward(7, [work()], Tensor("float32", (2, 2), data))
    got = decode(frames_of(sent))
    assert isinstance(got, Forward) and got.batch_id == 7
    assert got.work == [work()]
    assert got.hidden is not None and bytes(got.hidden.data) == data
    assert tuple(got.hidden.shape) == (2, 2) and got.hidden.dtype == "float32"


def test_sampled_round_trip_with_logprobs_cache_figures_and_misses() -> None:
    sent = Sampled(
        3, "b", {"r1": 9}, {"r1": 34}, {"r1": -0.5}, {"r2": "out of KV blocks"},
        {"r1": [[9, -0.5], [4, -1.25]]}, {"r1": 32}, {"r3": 16},
    )  # fmt: skip
    assert decode(frames_of(sent)) == sent


def _header(message: object) -> dict:
    return msgpack.unpackb(frames_of(message)[0], raw=False)


def _frames(header: dict, *rest: bytes) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *rest]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"v": VERSION - 1}, "version"),
        ({"type": "nope"}, "unknown message type"),
        ({"tokens_per_s": "fast"}, "tokens_per_s"),
        ({"num_running": True}, "num_running"),
    ],
)
def test_bad_heartbeat_headers_are_rejected(change: dict, complaint: str) -> None:
    header = _header(Heartbeat("a", 1, 10, 0, 1.5)) | change
    with pytest.raises(FrameError, match=complaint):
        decode(_frames(header))


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"prefix_hashes": [b"short"]}, "32-byte"),
        ({"cache_cap": "all"}, "cache_cap"),
        ({"token_ids": [1]}, "token range"),
        ({"hop": 2}, "outside its route"),
    ],
)
def test_bad_work_entries_are_rejected(changes: dict, complaint: str) -> None:
    header = _header(Forward(1, [work()], None))
    header["work"][0].update(changes)
    with pytest.raises(FrameError, match=complaint):
        decode(_frames(header))


def test_malformed_frames_are_rejected() -> None:
    with pytest.raises(FrameError):
        decode([b"\x93not a helix frame"])
    with pytest.raises(FrameError, match="frames"):
        decode([])
    header = _header(Forward(1, [work()], Tensor("float32", (2, 2), b"\0" * 16)))
    with pytest.raises(FrameError):  # 16 bytes promised, 8 given
        decode(_frames(header, b"\0" * 8))
    bad_pairs = _header(Sampled(1, "b", {}, top_logprobs={"r": [[1, -0.1]]}))
    bad_pairs["top_logprobs"] = {"r": [[1, -0.1, 7]]}
    with pytest.raises(FrameError, match="top_logprobs"):
        decode(_frames(bad_pairs))
