"""Every frame the sharded runtime sends, and the one codec for all of them.

A message travels as ZeroMQ multipart frames:

    [ header: msgpack map {"v": VERSION, "type": NAME, ...fields} ][ tensor bytes ]?

Tensors never go through msgpack or pickle: the header names their dtype and shape and the raw bytes
follow in the second frame. `decode` checks the version, the type, every field's type, the dtype and
that the byte count matches the shape, and raises `FrameError` (never anything else) on a bad frame.
No torch here: tensors cross this module as (dtype name, shape, bytes) and `runtime/wire.py` turns
them into torch tensors.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

VERSION = 2
MAX_FRAME_BYTES = 256 << 20
"""Largest accepted frame; bigger ones are rejected (a 256 MiB activation batch is a bug)."""
DTYPE_SIZES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4}


class FrameError(ValueError):
    """A frame that cannot be decoded: wrong version, unknown type, bad field, size mismatch."""


@dataclass
class Tensor:
    """Raw tensor bytes with their dtype name and shape (row-major, contiguous)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview


@dataclass
class Message:
    TYPE: ClassVar[str] = ""


@dataclass
class Hello(Message):
    """node -> coordinator when it starts (and again when it comes back): who it is."""

    TYPE: ClassVar[str] = "hello"
    node: str
    layer_start: int
    layer_end: int
    num_kv_blocks: int
    block_size: int
    incarnation: int
    """Changes each time the node process starts, so the coordinator can tell a restart."""


@dataclass
class Heartbeat(Message):
    """node -> coordinator every `heartbeat_s`, from a thread of its own, so a long pass does not
    look like a dead node; `busy_s` tells a pass that has stopped making progress."""

    TYPE: ClassVar[str] = "heartbeat"
    node: str
    incarnation: int
    num_free_blocks: int
    num_running: int
    tokens_per_s: float
    busy_s: float = 0.0
    """How long the node's current pass has run (0 between passes)."""


@dataclass
class SeqWork:
    """One request's share of a forward pass: tokens [start, start + num_tokens) of its context."""

    request_id: str
    start: int
    num_tokens: int
    token_ids: list[int]
    """The tokens themselves (every stage gets them: cheap, and lets the first stage embed)."""
    route: list[str]
    """Nodes this request passes through, in order; fixed at admission (as in the paper)."""
    hop: int
    """Index in `route` of the node this message is for."""
    sample: bool
    """The last stage samples a token for this request after this pass."""
    params: dict[str, Any] | None = None
    """Sampling parameters, sent once with the request's first pass (the diff rule)."""
    layer_start: int = -1
    """First layer to run on this node (partial inference); -1 = the node's own start."""
    cache_cap: int = -1
    """On a pass from token 0: the most prompt tokens the route may take from its nodes' prefix
    caches (-1: compute everything). See node_prefix.py."""
    prefix_hashes: list[bytes] = field(default_factory=list)
    """Set by the route's first node: the cached blocks it skipped (the pass starts after them)."""

    def next_hop(self, layer_start: int) -> SeqWork:
        """This work as the next node of its route gets it (`dataclasses.replace` without its
        per-call field introspection: a node forwards one per sequence per pass)."""
        return SeqWork(
            self.request_id, self.start, self.num_tokens, self.token_ids, self.route,
            self.hop + 1, self.sample, self.params, layer_start, self.cache_cap,
            self.prefix_hashes,
        )  # fmt: skip


@dataclass
class Forward(Message):
    """coordinator -> first node, node -> next node: a micro-batch to run.

    `hidden` holds one row per token of every SeqWork, in order; it is absent for the first stage.
    """

    TYPE: ClassVar[str] = "forward"
    batch_id: int
    work: list[SeqWork]
    hidden: Tensor | None = None


@dataclass
class Sampled(Message):
    """last node -> coordinator: the tokens sampled for a micro-batch's requests."""

    TYPE: ClassVar[str] = "sampled"
    batch_id: int
    node: str
    tokens: dict[str, int]
    """Sampled token per request whose pass reached the end of its known tokens."""
    computed: dict[str, int] = field(default_factory=dict)
    """Tokens now in the route's KV, per request whose pass ended on this (last) node."""
    logprobs: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    """Requests the node could not run (e.g. out of KV blocks), with the reason."""
    top_logprobs: dict[str, list[list[float]]] = field(default_factory=dict)
    """Per request that asked for logprobs=k: the k best [token, logprob] pairs, best first."""
    cached: dict[str, int] = field(default_factory=dict)
    """Prompt tokens a request's first pass took from the route's prefix caches."""
    prefix_misses: dict[str, int] = field(default_factory=dict)
    """Requests dropped because this node lacked their skipped prefix: the tokens it holds."""


@dataclass
class Release(Message):
    """coordinator -> node: these requests are done (or rerouted); free their KV blocks."""

    TYPE: ClassVar[str] = "release"
    request_ids: list[str]


@dataclass
class Shutdown(Message):
    TYPE: ClassVar[str] = "shutdown"
    reason: str = ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Heartbeat, Forward, Sampled, Release, Shutdown)
}
_SEQ_FIELDS = {f.name for f in fields(SeqWork)}


def encode(message: Message) -> list[bytes | memoryview]:
    """Message -> multipart frames."""
    import msgpack

    header: dict[str, Any] = {"v": VERSION, "type": message.TYPE}
    frames: list[bytes | memoryview] = []
    for f in fields(message):
        value = getattr(message, f.name)
        if isinstance(value, Tensor):
            header[f.name] = {"dtype": value.dtype, "shape": list(value.shape)}
            frames.append(value.data)
        elif f.name == "work":  # a SeqWork's __dict__ is exactly its fields
            header[f.name] = [w.__dict__ for w in value]
        else:
            header[f.name] = value
    return [msgpack.packb(header, use_bin_type=True), *frames]


def decode(frames: list[bytes] | list[memoryview]) -> Message:
    """Multipart frames -> Message; FrameError on anything malformed."""
    import msgpack

    if not frames or len(frames) > 2:
        raise FrameError(f"expected 1 or 2 frames, got {len(frames)}")
    total = sum(len(f) for f in frames)
    if total > MAX_FRAME_BYTES:
        raise FrameError(f"message of {total} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    try:
        header = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise FrameError(f"header is not msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a map")
    if header.get("v") != VERSION:
        raise FrameError(f"version {header.get('v')!r} != {VERSION}")
    cls = MESSAGE_TYPES.get(header.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise FrameError(f"unknown message type {header.get('type')!r}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in header:
            if f.default is MISSING and f.default_factory is MISSING:
                raise FrameError(f"{cls.TYPE}: missing field {f.name!r}")
            continue
        kwargs[f.name] = header[f.name]
    if "work" in kwargs:
        kwargs["work"] = [_seq_work(item) for item in _list(kwargs["work"], "work")]
    if "hidden" in kwargs and kwargs["hidden"] is not None:
        kwargs["hidden"] = _tensor(kwargs["hidden"], frames[1] if len(frames) == 2 else None)
    elif len(frames) == 2:
        raise FrameError("unexpected payload frame")
    try:
        message = cls(**kwargs)
    except TypeError as exc:
        raise FrameError(f"{cls.TYPE}: {exc}") from None
    _check_types(message)
    return message


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise FrameError(f"{name} must be a list")
    return value


def _seq_work(item: Any) -> SeqWork:
    # Written for speed (a node decodes one per sequence per pass): exact type checks (msgpack
    # gives plain ints, bools and lists) and no set built per entry.
    if type(item) is not dict or item.keys() != _SEQ_FIELDS:
        raise FrameError("work entries must carry exactly the SeqWork fields")
    work = SeqWork(**item)
    if not (
        type(work.start) is int
        and type(work.num_tokens) is int
        and type(work.hop) is int
        and type(work.layer_start) is int
    ):
        raise FrameError(f"work {work.request_id!r}: start/num_tokens/hop must be integers")
    token_ids = work.token_ids
    if type(token_ids) is not list or type(work.route) is not list:
        raise FrameError(f"work {work.request_id!r}: token_ids and route must be lists")
    if work.num_tokens < 1 or work.start < 0 or len(token_ids) != work.num_tokens:
        raise FrameError(f"work {work.request_id!r}: bad token range")
    if not all(type(t) is int for t in token_ids):
        raise FrameError(f"work {work.request_id!r}: token_ids and route must be lists")
    if not 0 <= work.hop < len(work.route):
        raise FrameError(f"work {work.request_id!r}: hop {work.hop} outside its route")
    hashes = work.prefix_hashes
    if type(work.cache_cap) is not int or type(hashes) is not list:
        raise FrameError(f"work {work.request_id!r}: bad cache_cap or prefix_hashes")
    if hashes and not all(type(h) is bytes and len(h) == 32 for h in hashes):
        raise FrameError(f"work {work.request_id!r}: prefix_hashes must be 32-byte digests")
    return work


def _tensor(meta: Any, payload: bytes | memoryview | None) -> Tensor:
    if payload is None:
        raise FrameError("tensor header without a payload frame")
    if not isinstance(meta, dict) or meta.get("dtype") not in DTYPE_SIZES:
        raise FrameError(f"tensor dtype must be one of {sorted(DTYPE_SIZES)}")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise FrameError("tensor shape must be a list of non-negative ints")
    expected = DTYPE_SIZES[meta["dtype"]]
    for d in shape:
        expected *= d
    if expected != len(payload):
        raise FrameError(
            f"tensor of shape {shape} {meta['dtype']} needs {expected} bytes, got {len(payload)}"
        )
    return Tensor(meta["dtype"], tuple(shape), payload)


def _check_types(message: Message) -> None:
    for f in fields(message):
        value = getattr(message, f.name)
        expected: Any = {
            "str": str,
            "int": int,
            "float": (int, float),
            "list[str]": list,
            "dict[str, int]": dict,
            "dict[str, float]": dict,
            "dict[str, str]": dict,
        }.get(str(f.type))
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise FrameError(
                f"{message.TYPE}.{f.name}: expected {f.type}, got {type(value).__name__}"
            )
        if str(f.type) == "dict[str, list[list[float]]]" and not _is_pair_lists(value):
            raise FrameError(f"{message.TYPE}.{f.name}: expected {{id: [[token, logprob], ...]}}")


def _is_pair_lists(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(pairs, list)
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, (int, float)) for x in p)
            for p in pairs
        )
        for pairs in value.values()
    )
