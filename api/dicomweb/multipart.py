"""A streaming ``multipart/related`` parser (RFC 2046 §5.1, RFC 2387).

:class:`MultipartParser` is fed the body chunk by chunk as it arrives and turns
it into events: :class:`PartStart` (with the part's headers), :class:`PartData`
(a slice of the part's content, never the whole part) and :class:`PartEnd`.
It holds at most one chunk plus a delimiter's length of bytes, so a body of
many gigabytes goes through in flat memory. It does no I/O: the caller decides
where the content goes.

Anything that is not a well-formed body raises :class:`MultipartError`: a
boundary followed by garbage, part headers that never end or are too long, and
(from :meth:`MultipartParser.close`) a body that stops before its closing
delimiter. A part only counts as complete when the delimiter after it has been
seen, so a truncated body can never pass a cut-off part as whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from enum import Enum, auto

MAX_HEADER_BYTES = 16 * 1024  # all of one part's headers together
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_PADDING = b" \t"  # transport padding allowed after a delimiter


class MultipartError(ValueError):
    """The body is not well-formed multipart."""


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"; boundary=x'`` ->
    ``('multipart/related', {'type': 'application/dicom', 'boundary': 'x'})``.

    The media type and parameter names are lower-cased; values keep their case
    and lose their quotes.
    """
    message = Message()
    message["content-type"] = value
    params = message.get_params(failobj=[]) or []
    if not params:
        return "", {}
    media_type = params[0][0].strip().lower()
    values = {name.strip().lower(): collapse_rfc2231_value(raw).strip() for name, raw in params[1:]}
    return media_type, values


def valid_boundary(boundary: str) -> bool:
    """RFC 2046 §5.1.1: 1 to 70 characters from a small set, not ending in a space."""
    return _BOUNDARY.fullmatch(boundary) is not None


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]  # names lower-cased

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = auto()
    AFTER_DELIMITER = auto()  # "--" (the end) or padding + CRLF (a part follows)
    HEADERS = auto()
    BODY = auto()
    EPILOGUE = auto()


class MultipartParser:
    """Feed body chunks with :meth:`feed`, then call :meth:`close` at the end."""

    def __init__(self, boundary: str, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        if not valid_boundary(boundary):
            raise MultipartError(f"invalid multipart boundary {boundary[:80]!r}")
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._max_header_bytes = max_header_bytes
        # The first delimiter may open the body without the CRLF before it: supply one.
        self._buffer = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self.parts = 0  # parts started so far

    @property
    def finished(self) -> bool:
        """The closing delimiter has been seen."""
        return self._state is _State.EPILOGUE

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events that ``chunk`` completes, in order."""
        if self._state is _State.EPILOGUE:
            return  # the epilogue is ignored
        self._buffer += chunk
        while True:
            if self._state is _State.PREAMBLE:
                if not self._skip_preamble():
                    return
            elif self._state is _State.AFTER_DELIMITER:
                if not self._after_delimiter():
                    return
            elif self._state is _State.HEADERS:
                headers = self._headers()
                if headers is None:
                    return
                self.parts += 1
                yield PartStart(headers)
            elif self._state is _State.BODY:
                data, ended = self._body()
                if data:
                    yield PartData(data)
                if not ended:
                    return
                yield PartEnd()
            else:
                self._buffer.clear()
                return

    def close(self) -> None:
        """The body has ended: raise :class:`MultipartError` unless it was complete."""
        if self._state is _State.EPILOGUE:
            return
        if self._state is _State.PREAMBLE:
            raise MultipartError("no multipart boundary found in the body")
        if self._state is _State.HEADERS:
            raise MultipartError(f"the body ends inside part {self.parts + 1}")
        if self._state is _State.BODY:
            raise MultipartError(f"the body ends inside part {self.parts}")
        raise MultipartError("the body ends without the closing boundary")

    def _skip_preamble(self) -> bool:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return False
        del self._buffer[: index + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = _State.EPILOGUE
            self._buffer.clear()
            return True
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            if len(self._buffer) > 1024 or self._buffer.strip(_PADDING):
                raise MultipartError("a boundary is followed by something other than a line end")
            return False
        if self._buffer[:line_end].strip(_PADDING):
            raise MultipartError("a boundary is followed by something other than a line end")
        del self._buffer[:line_end]  # keep the CRLF: an empty header block is then "\r\n\r\n"
        self._state = _State.HEADERS
        return True

    def _headers(self) -> dict[str, str] | None:
        end = self._buffer.find(b"\r\n\r\n")
        if (end < 0 and len(self._buffer) > self._max_header_bytes) or end > self._max_header_bytes:
            limit = self._max_header_bytes
            raise MultipartError(f"part {self.parts + 1} has headers over {limit} bytes")
        if end < 0:
            return None
        block = bytes(self._buffer[2:end]).decode("latin-1")
        del self._buffer[: end + 4]
        self._state = _State.BODY
        return _parse_headers(block, self.parts + 1)

    def _body(self) -> tuple[bytes, bool]:
        index = self._buffer.find(self._delimiter)
        if index >= 0:
            data = bytes(self._buffer[:index])
            del self._buffer[: index + len(self._delimiter)]
            self._state = _State.AFTER_DELIMITER
            return data, True
        # Everything but a possible start of the delimiter is the part's content.
        safe = len(self._buffer) - (len(self._delimiter) - 1)
        if safe <= 0:
            return b"", False
        data = bytes(self._buffer[:safe])
        del self._buffer[:safe]
        return data, False


def _parse_headers(block: str, part: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    name = ""
    for line in block.split("\r\n") if block else []:
        if line[:1] in (" ", "\t") and name:  # obsolete line folding
            headers[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise MultipartError(f"part {part} has a malformed header line {line[:80]!r}")
        headers[name] = value.strip()
    return headers
