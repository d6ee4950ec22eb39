"""Keep a container's output within a size cap and store it safely as text."""

from collections.abc import Iterable, Iterator
from typing import AnyStr, Generic

from .conf import setting


class CappedOutput:
    """Collect a byte stream, keeping its head and its tail within ``limit`` bytes.

    Both ends matter: the head says how a job started, the tail usually says why it ended.
    What falls in between is counted and replaced by a marker.
    """

    def __init__(self, limit: int | None = None):
        self.limit = setting("MAX_OUTPUT_BYTES") if limit is None else limit
        self.head_limit = self.limit // 2
        self.tail_limit = self.limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.cut_reason = ""
        self.lost_reason = ""

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    def extend(self, chunks: Iterable[bytes]) -> "CappedOutput":
        for chunk in chunks:
            self.feed(chunk)
        return self

    def cut_short(self, reason: str) -> None:
        """Reading stopped before the end: ``text()`` says so, and why."""
        self.cut_reason = reason

    def lost_before(self, reason: str) -> None:
        """The source may have dropped output before what was fed: ``text()`` says so."""
        self.lost_reason = reason

    @property
    def omitted(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        if not self.omitted:
            text = decode_output(bytes(self.head + self.tail))
        else:
            marker = (
                f"\n[... container_manager: output truncated, {self.omitted} of {self.total} "
                "bytes omitted ...]\n"
            )
            text = decode_output(bytes(self.head)) + marker + decode_output(bytes(self.tail))
        if self.lost_reason:
            text = f"[... container_manager: {self.lost_reason} ...]\n" + text
        if self.cut_reason:
            text += (
                f"\n[... container_manager: output cut after {self.total} bytes: "
                f"{self.cut_reason} ...]\n"
            )
        return text


def capped_text(data: bytes, limit: int | None = None) -> str:
    return CappedOutput(limit).extend([data]).text()


def decode_output(data: bytes) -> str:
    """Decode output that may not be UTF-8, keeping the odd bytes visible as ``\\xNN``.

    NUL is escaped too: PostgreSQL text columns cannot hold it.
    """
    return storable(data.decode("utf-8", errors="backslashreplace"))


def storable(text: str) -> str:
    """``text`` as any database stores it: a NUL (in an engine's error, say) escaped."""
    return text.replace("\x00", "\\x00")


def split_incomplete_utf8(data: bytes) -> tuple[bytes, bytes]:
    """Split off a UTF-8 character cut at the end of ``data``, to decode it with what follows."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if 0x80 <= byte < 0xC0:  # a continuation byte: the character starts further back
            continue
        length = next((n for n, limit in ((2, 0xE0), (3, 0xF0), (4, 0xF8)) if byte < limit), 1)
        if byte >= 0xC0 and length > back:
            return data[:-back], data[-back:]
        break
    return data, b""


def without_cut_head(data: bytes) -> bytes:
    """``data`` from its first whole UTF-8 character: the end of one cut off ahead of it
    (continuation bytes, at most three) is dropped."""
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] < 0xC0:
        start += 1
    return data[start:]


class LastLine(Generic[AnyStr]):
    """What a stream gave after its last newline (text or bytes, as ``newline`` is).

    A follower that reads unfinished last lines again once a stream has ended (from the
    engine, from the job's record) gives only those the stream left out: ``unseen``.
    """

    def __init__(self, newline: AnyStr):
        self.newline: AnyStr = newline
        self.text: AnyStr = newline[:0]

    def feed(self, chunk: AnyStr) -> AnyStr:
        """Note ``chunk``, as given by the stream; returns it."""
        _, found, after = chunk.rpartition(self.newline)
        self.text = after if found else self.text + after
        return chunk

    def unseen(self, endings: Iterable[AnyStr]) -> Iterator[AnyStr]:
        """Those of ``endings`` that the stream's last line does not already hold."""
        for ending in endings:
            if ending and ending not in self.text:
                self.text += ending
                yield ending
