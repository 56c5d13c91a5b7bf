"""Length-prefixed frames over a libp2p stream: a 4-byte big-endian length, then that many bytes.

Every failure is a `FrameError` (an `AgoraError`): an announced length over `max_size`, a stream that ends
mid-frame, a read that takes longer than `timeout` seconds, or a transport error from libp2p. Callers reset
the stream and carry on; nothing here can take the host down.
"""

from __future__ import annotations

import struct
from typing import Any

import trio

from marketplace.errors import FrameError, FrameTimeoutError, FrameTooLargeError

MAX_FRAME = 1 << 20  # 1 MiB
DEFAULT_TIMEOUT = 10.0
_HEADER = struct.Struct(">I")


async def _read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - libp2p stream errors (EOF, reset, ...) have many types
            raise FrameError(f"stream error after {len(buf)}/{n} bytes: {type(err).__name__}: {err}") from None
        if not chunk:
            raise FrameError(f"stream ended mid-frame ({len(buf)}/{n} bytes)")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: Any, *, max_size: int = MAX_FRAME, timeout: float | None = DEFAULT_TIMEOUT) -> bytes:
    """Read one frame; raise `FrameError` (or a subclass) on anything but a complete frame of <= max_size."""
    try:
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            (size,) = _HEADER.unpack(await _read_exactly(stream, _HEADER.size))
            if size > max_size:
                raise FrameTooLargeError(f"frame of {size} bytes is over the {max_size}-byte limit",
                                         size=size, limit=max_size)
            return await _read_exactly(stream, size) if size else b""
    except trio.TooSlowError:
        raise FrameTimeoutError(f"no complete frame within {timeout} s") from None


async def write_frame(stream: Any, payload: bytes, *, max_size: int = MAX_FRAME,
                      timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """Write one frame; refuse payloads over `max_size` before sending anything."""
    if len(payload) > max_size:
        raise FrameTooLargeError(f"frame of {len(payload)} bytes is over the {max_size}-byte limit",
                                 size=len(payload), limit=max_size)
    try:
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            await stream.write(_HEADER.pack(len(payload)) + bytes(payload))
    except trio.TooSlowError:
        raise FrameTimeoutError(f"frame not written within {timeout} s") from None
    except trio.Cancelled:
        raise
    except Exception as err:  # noqa: BLE001 - any libp2p write error becomes a FrameError
        raise FrameError(f"stream error while writing: {type(err).__name__}: {err}") from None
