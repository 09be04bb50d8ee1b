"""Convert ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` fields to RGB arrays.

Everything the model sees enters through this module: the fields of an image message go in,
an owned, C-contiguous ``uint8`` array of shape ``(height, width, 3)`` in RGB order comes out,
or :class:`ImageRejected` is raised with a one-line reason that a node can log as is.

Design
------
* **No ROS here.** The functions take the message *fields* as keyword arguments, not the
  message, so the module imports neither rclpy nor sensor_msgs and works on a training box,
  in bag-reading scripts and in tests without a ROS install.
* **Zero-copy input.** rclpy hands ``Image.data`` over as ``array.array('B')`` (or ``bytes``);
  ``np.frombuffer`` wraps it without a copy (under 1 us; ``np.array(data)`` costs about 20 us
  for a 640x480 rgb8 frame). Rows are then sliced out of a ``(height, step)`` view, so row
  padding (``step > width * bytes_per_pixel``) costs nothing extra: OpenCV accepts the
  strided view directly.
* **One pass into fresh memory.** Every path ends in exactly one write into a new array (or
  into the caller's ``out`` array): ``cv2.cvtColor`` for channel swaps, alpha drops, gray
  expansion and YUV 4:2:2, a plain copy for rgb8. The result never aliases the message
  buffer, so the caller may keep it after the message is gone or reused.
* **Strict validation before any work.** Size limits are checked from the header fields
  (and, for PNG/JPEG, from the compressed header) before anything is allocated, so a
  malformed or hostile message costs microseconds, not memory. ``data`` must be exactly
  ``height * step`` bytes: a longer buffer usually means the publisher's fields disagree with
  its data, and guessing which one is right produces silently skewed images.
* **mono16 to 8 bit by the high byte** (``value >> 8``), honouring ``is_bigendian``. The same
  rule is applied to 16-bit PNGs, so a frame looks the same raw or compressed.
* **YUV 4:2:2** follows ROS ``sensor_msgs/image_encodings``: ``yuv422`` is UYVY byte order
  (alias ``uyvy``), ``yuv422_yuy2`` is YUYV (alias ``yuyv``). OpenCV converts them with the
  BT.601 limited-range ("video") coefficients.

Why not cv_bridge
-----------------
The PyPI ``cv-bridge`` (1.13.0.post0, the one installable here) was measured against this
module with ``python -m svlm_ros.benchmarks.image_conversion_bench`` (640x480 frames in a real
``sensor_msgs.msg.Image``, 2000 iterations, median, 2-core x86 box, OpenCV 4.14, numpy 2.4).
``imgmsg_to_cv2(msg, "rgb8")``: rgb8 4 us (it returns a view of the message buffer, no copy),
bgr8 28 us, rgba8 33 us, bgra8 36 us, mono8 22 us. This module: rgb8 24 us (with the copy that
makes the result independent of the message), bgr8 25 us, rgba8 30 us, bgra8 33 us, mono8 19 us,
mono16 86 us, YUV 4:2:2 105-110 us; rgb8 convert plus copy into a store slot 42 us. Both run
the same ``cv2.cvtColor`` underneath, so speed decides nothing; correctness does:

* it ignores ``step``: a padded frame is read as if unpadded, giving a sheared image with no
  error;
* ``mono16`` to ``rgb8`` and all YUV 4:2:2 encodings raise ``KeyError``;
* big-endian ``mono16`` raises ``AttributeError`` under numpy 2 (``ndarray.newbyteorder``);
* rgb8 output aliases the message buffer;
* it imports ``sensor_msgs``, which this module must not.

So cv_bridge is not used. ``test/test_image_conversion.py`` checks that both agree on every
raw encoding cv_bridge does support (rgb8, bgr8, rgba8, bgra8, mono8, little-endian mono16).
``python -m svlm_ros.benchmarks.image_conversion_bench`` prints the current numbers.
"""

from __future__ import annotations

import array
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_COMPRESSED_CODECS",
    "SUPPORTED_ENCODINGS",
    "ImageRejected",
    "compressed_image_to_rgb",
    "raw_image_to_rgb",
]

DEFAULT_MAX_PIXELS = 4096 * 4096

ByteData = bytes | bytearray | memoryview | array.array | np.ndarray


class ImageRejected(ValueError):
    """Raised with a one-line human reason.

    For example ``'data is 1000 bytes, expected height*step = 480*1920 = 921600'``. A subclass
    of ``ValueError``, so callers that treat any bad input alike need not import it.
    """


@dataclass(frozen=True)
class _RawEncoding:
    bytes_per_pixel: int
    # cv2.cvtColor code to RGB, or None where the path is special-cased below.
    cv2_code: int | None


_RAW_ENCODINGS: dict[str, _RawEncoding] = {
    "rgb8": _RawEncoding(3, None),
    "bgr8": _RawEncoding(3, cv2.COLOR_BGR2RGB),
    "rgba8": _RawEncoding(4, cv2.COLOR_RGBA2RGB),
    "bgra8": _RawEncoding(4, cv2.COLOR_BGRA2RGB),
    "mono8": _RawEncoding(1, cv2.COLOR_GRAY2RGB),
    "mono16": _RawEncoding(2, None),
    "uyvy": _RawEncoding(2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": _RawEncoding(2, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": _RawEncoding(2, cv2.COLOR_YUV2RGB_YUYV),
    "yuv422_yuy2": _RawEncoding(2, cv2.COLOR_YUV2RGB_YUYV),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_RAW_ENCODINGS)
"""Raw ``sensor_msgs/Image.encoding`` values that :func:`raw_image_to_rgb` accepts."""

_YUV422_ENCODINGS = frozenset({"uyvy", "yuv422", "yuyv", "yuv422_yuy2"})

SUPPORTED_COMPRESSED_CODECS: tuple[str, ...] = ("jpeg", "jpg", "png")
"""Codec names accepted in ``sensor_msgs/CompressedImage.format``."""

_FORMAT_TOKEN_SPLIT = re.compile(r"[;,\s]+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


def raw_image_to_rgb(
    *,
    encoding: str,
    width: int,
    height: int,
    step: int,
    is_bigendian: bool,
    data: ByteData,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Convert the fields of a ``sensor_msgs/Image`` to an RGB array.

    Args:
        encoding: ``Image.encoding``; one of :data:`SUPPORTED_ENCODINGS` (case-insensitive).
        width: ``Image.width`` in pixels, > 0 (even for YUV 4:2:2).
        height: ``Image.height`` in pixels, > 0.
        step: ``Image.step``, bytes per row including padding; >= width * bytes per pixel.
        is_bigendian: ``Image.is_bigendian``; only matters for mono16.
        data: ``Image.data``, exactly ``height * step`` bytes. Any C-contiguous buffer
            (``array.array``, ``bytes``, ``bytearray``, ``memoryview``, numpy array); it is
            read without a copy and never modified or aliased by the result.
        max_pixels: largest ``width * height`` accepted, to bound memory per frame.
        out: optional preallocated ``(height, width, 3)`` C-contiguous uint8 array to write
            into (e.g. a frame store slot), saving one allocation and copy.

    Returns:
        A C-contiguous ``uint8`` array of shape ``(height, width, 3)`` in RGB order that owns
        its memory (``out`` itself when given).

    Raises:
        ImageRejected: the fields or data do not describe a supported, well-formed image.
        TypeError: ``data`` is not a bytes-like object.
        ValueError: ``out`` has the wrong shape, dtype or layout.
    """
    normalized = encoding.strip().lower() if isinstance(encoding, str) else encoding
    spec = _RAW_ENCODINGS.get(normalized)
    if spec is None:
        raise ImageRejected(
            f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    _check_size(width, height, max_pixels)
    if normalized in _YUV422_ENCODINGS and width % 2:
        raise ImageRejected(
            f"width {width} is odd; {normalized} (YUV 4:2:2) stores pixels in pairs, "
            "so width must be even"
        )
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise ImageRejected(
            f"step {step} is less than width*bytes_per_pixel = {width}*{spec.bytes_per_pixel}"
            f" = {row_bytes} for {normalized}"
        )
    buffer = _as_uint8(data)
    expected = height * step
    if buffer.size != expected:
        raise ImageRejected(
            f"data is {buffer.size} bytes, expected height*step = {height}*{step} = {expected}"
        )
    target = _prepare_out(out, height, width)

    # A (height, row_bytes) view: padding bytes are skipped by the row stride, not copied.
    rows = buffer.reshape(height, step)[:, :row_bytes]

    if normalized == "rgb8":
        pixels = rows.reshape(height, width, 3)
        if target is None:
            return pixels.copy()
        np.copyto(target, pixels)
        return target

    if normalized == "mono16":
        # High byte of each sample: byte 0 big-endian, byte 1 little-endian. extractChannel
        # gathers it in C (about 10x faster than a numpy shift on a uint16 view).
        gray = cv2.extractChannel(rows.reshape(height, width, 2), 0 if is_bigendian else 1)
        return _cvt(gray, cv2.COLOR_GRAY2RGB, target)

    channels = spec.bytes_per_pixel
    pixels = rows if channels == 1 else rows.reshape(height, width, channels)
    assert spec.cv2_code is not None
    return _cvt(pixels, spec.cv2_code, target)


def image_message_to_rgb(
    message: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, out: np.ndarray | None = None
) -> np.ndarray:
    """``raw_image_to_rgb`` on the fields of a ``sensor_msgs/Image`` (or anything with them).

    Duck-typed, so this module still needs no ROS import.
    """
    return raw_image_to_rgb(
        encoding=message.encoding,
        width=message.width,
        height=message.height,
        step=message.step,
        is_bigendian=bool(message.is_bigendian),
        data=message.data,
        max_pixels=max_pixels,
        out=out,
    )


def compressed_image_to_rgb(
    *,
    format: str,  # shadows the builtin on purpose: the message field is called `format`
    data: ByteData,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/CompressedImage`` to an RGB array.

    ``format`` is read as ROS publishers write it: a bare codec (``"jpeg"``, ``"png"``) or
    image_transport's ``"<original encoding>; <codec> compressed <encoding>"`` (e.g.
    ``"rgb8; jpeg compressed bgr8"``). Files are taken to hold true colours (what
    image_transport writes, and what ``cv2.imdecode`` returns as BGR), except when the
    compressed encoding is ``rgb8``/``rgba8``: then the publisher wrote RGB memory through
    OpenCV and the decoded channel order is already RGB. 16-bit images keep their high byte,
    like raw mono16; alpha is dropped.

    Args:
        format: ``CompressedImage.format``; its codec must be one of
            :data:`SUPPORTED_COMPRESSED_CODECS`. ``compressedDepth`` is rejected.
        data: ``CompressedImage.data``; any C-contiguous bytes-like object, read without copy.
        max_pixels: largest ``width * height`` accepted. For PNG and JPEG the size is read
            from the file header and checked before decoding.
        out: optional preallocated ``(height, width, 3)`` C-contiguous uint8 array to write into.

    Returns:
        A C-contiguous ``uint8`` array of shape ``(height, width, 3)`` in RGB order.

    Raises:
        ImageRejected: unknown format, empty or undecodable data, or too many pixels.
        TypeError: ``data`` is not a bytes-like object.
        ValueError: ``out`` has the wrong shape, dtype or layout.
    """
    codec, decoded_is_rgb = _parse_compressed_format(format)
    buffer = _as_uint8(data)
    if buffer.size == 0:
        raise ImageRejected(f"compressed data is empty (format {format!r})")

    header_size = _peek_compressed_size(buffer)
    if header_size is not None:
        _check_size(header_size[0], header_size[1], max_pixels)

    try:
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        # Some corrupt streams make the codec throw rather than return None.
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise ImageRejected(
            f"could not decode {buffer.size} bytes as {codec}: {first_line}"
        ) from exc
    if decoded is None or decoded.size == 0:
        raise ImageRejected(f"could not decode {buffer.size} bytes as {codec} (corrupt data?)")

    height, width = decoded.shape[:2]
    _check_size(width, height, max_pixels)

    if decoded.dtype == np.uint16:
        # Same 16 -> 8 bit rule as raw mono16: keep the high byte.
        decoded = (decoded >> 8).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise ImageRejected(f"decoded {codec} has unsupported sample type {decoded.dtype}")

    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    target = _prepare_out(out, height, width)
    if channels == 1:
        return _cvt(decoded.reshape(height, width), cv2.COLOR_GRAY2RGB, target)
    if channels == 2:
        # Gray + alpha: drop alpha.
        return _cvt(np.ascontiguousarray(decoded[:, :, 0]), cv2.COLOR_GRAY2RGB, target)
    if channels == 3:
        if decoded_is_rgb:
            if target is None:
                return np.ascontiguousarray(decoded)
            np.copyto(target, decoded)
            return target
        return _cvt(decoded, cv2.COLOR_BGR2RGB, target)
    if channels == 4:
        code = cv2.COLOR_RGBA2RGB if decoded_is_rgb else cv2.COLOR_BGRA2RGB
        return _cvt(decoded, code, target)
    raise ImageRejected(f"decoded {codec} has unsupported channel count {channels}")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """Reject non-positive sizes and frames above ``max_pixels``."""
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image size {width}x{height} is empty; width and height must be > 0")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image {width}x{height} = {width * height} pixels exceeds max_pixels = {max_pixels}"
        )


def _as_uint8(data: ByteData) -> np.ndarray:
    """View ``data`` as a flat uint8 array, without copying when it is contiguous."""
    if isinstance(data, np.ndarray):
        # Reinterpreting the bytes of any dtype is what the message means: data is bytes.
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise TypeError(
            "data must be a C-contiguous bytes-like object (bytes, bytearray, memoryview, "
            f"array.array or numpy array), got {type(data).__name__}: {exc}"
        ) from exc


def _prepare_out(out: np.ndarray | None, height: int, width: int) -> np.ndarray | None:
    """Check a caller-provided output array; ``None`` means allocate a new one."""
    if out is None:
        return None
    if out.shape != (height, width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape ({height}, {width}, 3), got "
            f"shape {out.shape}, dtype {out.dtype}, c_contiguous={out.flags.c_contiguous}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    return out


def _cvt(src: np.ndarray, code: int, target: np.ndarray | None) -> np.ndarray:
    """``cv2.cvtColor`` into ``target`` when given, else into a new array."""
    if target is None:
        return cv2.cvtColor(src, code)
    result = cv2.cvtColor(src, code, dst=target)
    # OpenCV reallocates silently if dst does not fit; _prepare_out rules that out.
    assert result is target or np.shares_memory(result, target)
    return target


def _parse_compressed_format(format_string: str) -> tuple[str, bool]:
    """Return ``(codec, decoded_is_rgb)`` from a ``CompressedImage.format`` string."""
    text = format_string.strip().lower() if isinstance(format_string, str) else ""
    if "compresseddepth" in text:
        raise ImageRejected(
            f"compressed format {format_string!r} is a compressedDepth image, "
            "which is not supported"
        )
    tokens = [token for token in _FORMAT_TOKEN_SPLIT.split(text) if token]
    codec = next((token for token in tokens if token in SUPPORTED_COMPRESSED_CODECS), None)
    if codec is None:
        raise ImageRejected(
            f"unknown compressed format {format_string!r}; expected one of "
            f"{', '.join(SUPPORTED_COMPRESSED_CODECS)} (optionally as "
            "'<encoding>; <codec> compressed <encoding>')"
        )
    # image_transport writes "<codec> compressed <encoding of the compressed pixels>".
    compressed_encoding = ""
    if "compressed" in tokens:
        index = tokens.index("compressed")
        if index + 1 < len(tokens):
            compressed_encoding = tokens[index + 1]
    return codec, compressed_encoding.startswith("rgb")


def _peek_compressed_size(buffer: np.ndarray) -> tuple[int, int] | None:
    """Read ``(width, height)`` from a PNG or JPEG header without decoding; None if unknown."""
    view = memoryview(buffer)
    if len(view) >= 24 and bytes(view[:8]) == _PNG_SIGNATURE and bytes(view[12:16]) == b"IHDR":
        return int.from_bytes(view[16:20], "big"), int.from_bytes(view[20:24], "big")
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    # Walk JPEG segments to the first start-of-frame; each hop skips a whole segment
    # (EXIF and the like), so this is a handful of steps for real files.
    position = 2
    while position + 4 <= len(view):
        if view[position] != 0xFF:
            return None
        marker = view[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = int.from_bytes(view[position + 2 : position + 4], "big")
        if marker in _JPEG_SOF_MARKERS:
            if position + 9 > len(view):
                return None
            height = int.from_bytes(view[position + 5 : position + 7], "big")
            width = int.from_bytes(view[position + 7 : position + 9], "big")
            # Height 0 means "given later by a DNL marker": leave the check to the decoder.
            return (width, height) if height > 0 else None
        if length < 2:
            return None
        position += 2 + length
    return None
