"""Tests for svlm_ros.image_conversion.

Each raw encoding is checked the same way: a known RGB image is encoded into that encoding's
bytes by hand with numpy (never through the code under test), converted back, and compared --
exactly for lossless encodings, within a rounding tolerance for YUV 4:2:2 (expected values from
the BT.601 limited-range formula written out below) and JPEG. Padding in ``step``, big-endian
mono16, every input buffer type rclpy or a caller may pass, and every rejection with its
message are covered. A second group builds real ``sensor_msgs.msg.Image`` messages and checks
agreement with cv_bridge on every encoding cv_bridge converts.
"""

from __future__ import annotations

import array
import re
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from svlm_ros.image_conversion import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageRejected,
    compressed_image_to_rgb,
    image_message_to_rgb,
    raw_image_to_rgb,
)

HEIGHT, WIDTH = 5, 8  # small, even width (YUV), height and width differ to catch transposes
PADDING_FILL = 0xA5  # padding bytes are garbage in real messages; make mistakes visible

# --------------------------------------------------------------------------------------------
# Hand-written encoders: known RGB image -> (expected RGB, packed rows without padding)
# --------------------------------------------------------------------------------------------


def known_rgb(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """A random RGB image: every channel and pixel differs, so swaps and shifts show."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth, distinct-per-channel image that JPEG reproduces within a few levels."""
    y, x = np.mgrid[0:height, 0:width]
    red = 40 + 160 * x / (width - 1)
    green = 30 + 180 * y / (height - 1)
    blue = 200 - 150 * (x + y) / (width + height - 2)
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def rgb_to_yuv_bt601(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited range ("video" levels, Y in 16..235), as float planes."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return y, u, v


def yuv_to_rgb_bt601(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse BT.601 limited range, per pixel; u and v already upsampled to full width."""
    c, d, e = y.astype(np.float64) - 16, u.astype(np.float64) - 128, v.astype(np.float64) - 128
    r = 1.164 * c + 1.596 * e
    g = 1.164 * c - 0.391 * d - 0.813 * e
    b = 1.164 * c + 2.018 * d
    return np.clip(np.stack([r, g, b], axis=-1).round(), 0, 255).astype(np.uint8)


def pack_yuv422(y: np.ndarray, u: np.ndarray, v: np.ndarray, order: str) -> np.ndarray:
    """Pack Y (H, W) and per-pair U, V (H, W/2) into 4:2:2 rows of 2*W bytes."""
    height, width = y.shape
    quads = np.empty((height, width // 2, 4), dtype=np.uint8)
    y0, y1 = y[:, 0::2], y[:, 1::2]
    if order == "uyvy":
        quads[..., 0], quads[..., 1], quads[..., 2], quads[..., 3] = u, y0, v, y1
    else:  # yuyv
        quads[..., 0], quads[..., 1], quads[..., 2], quads[..., 3] = y0, u, y1, v
    return quads.reshape(height, width * 2)


def encode_rgb8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rgb, rgb.reshape(rgb.shape[0], -1)


def encode_bgr8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rgb, rgb[..., ::-1].reshape(rgb.shape[0], -1)


def encode_rgba8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    alpha = np.full(rgb.shape[:2] + (1,), 77, dtype=np.uint8)
    return rgb, np.concatenate([rgb, alpha], axis=-1).reshape(rgb.shape[0], -1)


def encode_bgra8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    alpha = np.full(rgb.shape[:2] + (1,), 200, dtype=np.uint8)
    return rgb, np.concatenate([rgb[..., ::-1], alpha], axis=-1).reshape(rgb.shape[0], -1)


def encode_mono8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gray = rgb[..., 0]
    return np.repeat(gray[..., None], 3, axis=-1), gray.copy()


def encode_mono16(rgb: np.ndarray, big_endian: bool = False) -> tuple[np.ndarray, np.ndarray]:
    # Distinct high and low bytes; the expected 8-bit value is the high byte only.
    high, low = rgb[..., 0].astype(np.uint16), rgb[..., 1].astype(np.uint16)
    samples = (high << 8) | low
    raw = samples.astype(">u2" if big_endian else "<u2").view(np.uint8)
    return np.repeat(rgb[..., :1], 3, axis=-1), raw.reshape(rgb.shape[0], -1)


def encode_yuv(order: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Expected RGB from the independent inverse formula applied to the packed samples."""

    def encode(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, u, v = rgb_to_yuv_bt601(rgb)
        y8 = np.clip(y.round(), 0, 255).astype(np.uint8)
        # 4:2:2 shares chroma across a horizontal pair: average it.
        u8 = np.clip(((u[:, 0::2] + u[:, 1::2]) / 2).round(), 0, 255).astype(np.uint8)
        v8 = np.clip(((v[:, 0::2] + v[:, 1::2]) / 2).round(), 0, 255).astype(np.uint8)
        expected = yuv_to_rgb_bt601(y8, np.repeat(u8, 2, axis=1), np.repeat(v8, 2, axis=1))
        return expected, pack_yuv422(y8, u8, v8, order)

    return encode


ENCODERS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "rgb8": encode_rgb8,
    "bgr8": encode_bgr8,
    "rgba8": encode_rgba8,
    "bgra8": encode_bgra8,
    "mono8": encode_mono8,
    "mono16": encode_mono16,
    "uyvy": encode_yuv("uyvy"),
    "yuv422": encode_yuv("uyvy"),  # ROS yuv422 is UYVY byte order
    "yuyv": encode_yuv("yuyv"),
    "yuv422_yuy2": encode_yuv("yuyv"),
}
YUV_ENCODINGS = ("uyvy", "yuv422", "yuyv", "yuv422_yuy2")
# OpenCV's fixed-point YUV path rounds differently from the float formula by at most 1 level.
YUV_TOLERANCE = 1


def with_padding(rows: np.ndarray, padding: int) -> tuple[bytes, int]:
    """Append ``padding`` garbage bytes to each row; return (data, step)."""
    height, row_bytes = rows.shape
    padded = np.full((height, row_bytes + padding), PADDING_FILL, dtype=np.uint8)
    padded[:, :row_bytes] = rows
    return padded.tobytes(), row_bytes + padding


INPUT_TYPES: dict[str, Callable[[bytes], object]] = {
    "bytes": bytes,
    "array.array": lambda raw: array.array("B", raw),  # what rclpy gives for uint8[]
    "memoryview": memoryview,
    "bytearray": bytearray,
    "ndarray": lambda raw: np.frombuffer(raw, dtype=np.uint8),
}


def assert_output_contract(result: np.ndarray, height: int, width: int, data: object) -> None:
    assert result.dtype == np.uint8
    assert result.shape == (height, width, 3)
    assert result.flags.c_contiguous
    assert result.flags.writeable
    # The result must survive the message: it may not alias the input buffer.
    assert not np.shares_memory(result, np.frombuffer(data, dtype=np.uint8))


def assert_matches(encoding: str, result: np.ndarray, expected: np.ndarray) -> None:
    if encoding in YUV_ENCODINGS:
        difference = np.abs(result.astype(np.int16) - expected.astype(np.int16))
        assert difference.max() <= YUV_TOLERANCE, f"max difference {difference.max()}"
    else:
        np.testing.assert_array_equal(result, expected)


# --------------------------------------------------------------------------------------------
# Raw images: correctness per encoding
# --------------------------------------------------------------------------------------------


def test_every_supported_encoding_has_an_encoder() -> None:
    assert set(SUPPORTED_ENCODINGS) == set(ENCODERS)


@pytest.mark.parametrize("padding", [0, 7])
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_raw_encoding_round_trip(encoding: str, padding: int) -> None:
    expected, rows = ENCODERS[encoding](known_rgb())
    data, step = with_padding(rows, padding)
    result = raw_image_to_rgb(
        encoding=encoding, width=WIDTH, height=HEIGHT, step=step, is_bigendian=False, data=data
    )
    assert_output_contract(result, HEIGHT, WIDTH, data)
    assert_matches(encoding, result, expected)


@pytest.mark.parametrize("input_type", INPUT_TYPES)
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_raw_accepts_every_buffer_type(encoding: str, input_type: str) -> None:
    expected, rows = ENCODERS[encoding](known_rgb(seed=1))
    raw, step = with_padding(rows, 3)
    data = INPUT_TYPES[input_type](raw)
    result = raw_image_to_rgb(
        encoding=encoding, width=WIDTH, height=HEIGHT, step=step, is_bigendian=False, data=data
    )
    assert_output_contract(result, HEIGHT, WIDTH, data)
    assert_matches(encoding, result, expected)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_raw_vga_frame(encoding: str) -> None:
    """A realistic 640x480 frame, padded to a 64-byte row alignment as some drivers do."""
    height, width = 480, 640
    expected, rows = ENCODERS[encoding](known_rgb(height, width, seed=2))
    padding = -rows.shape[1] % 64 or 64
    data, step = with_padding(rows, padding)
    result = raw_image_to_rgb(
        encoding=encoding,
        width=width,
        height=height,
        step=step,
        is_bigendian=False,
        data=array.array("B", data),
    )
    assert result.shape == (height, width, 3)
    assert_matches(encoding, result, expected)


@pytest.mark.parametrize("padding", [0, 5])
def test_mono16_big_endian_takes_high_byte(padding: int) -> None:
    expected, rows = encode_mono16(known_rgb(), big_endian=True)
    data, step = with_padding(rows, padding)
    result = raw_image_to_rgb(
        encoding="mono16", width=WIDTH, height=HEIGHT, step=step, is_bigendian=True, data=data
    )
    np.testing.assert_array_equal(result, expected)
    # Read with the wrong byte order it would come out as the low byte: prove they differ.
    wrong = raw_image_to_rgb(
        encoding="mono16", width=WIDTH, height=HEIGHT, step=step, is_bigendian=False, data=data
    )
    assert not np.array_equal(wrong, expected)


def test_mono16_is_bigendian_accepts_message_integer() -> None:
    """sensor_msgs/Image.is_bigendian is a uint8 field: 1 must mean big-endian."""
    expected, rows = encode_mono16(known_rgb(), big_endian=True)
    result = raw_image_to_rgb(
        encoding="mono16",
        width=WIDTH,
        height=HEIGHT,
        step=rows.shape[1],
        is_bigendian=1,
        data=rows.tobytes(),
    )
    np.testing.assert_array_equal(result, expected)


def test_mono16_extremes() -> None:
    samples = np.array([[0x0000, 0x00FF, 0x0100, 0x7FFF, 0x8000, 0xFF00, 0xFFFF, 0x1234]])
    data = samples.astype("<u2").tobytes()
    result = raw_image_to_rgb(
        encoding="mono16", width=8, height=1, step=16, is_bigendian=False, data=data
    )
    np.testing.assert_array_equal(result[0, :, 0], [0x00, 0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFF, 0x12])


def convert_rows(encoding: str, rows: np.ndarray) -> np.ndarray:
    """Convert a little-endian HEIGHT x WIDTH image given as its packed byte rows."""
    return raw_image_to_rgb(
        encoding=encoding,
        width=WIDTH,
        height=HEIGHT,
        step=rows.shape[1],
        is_bigendian=False,
        data=rows.tobytes(),
    )


@pytest.mark.parametrize("encoding", YUV_ENCODINGS)
def test_yuv_independent_samples(encoding: str) -> None:
    """Arbitrary in-range Y/U/V samples against the BT.601 formula, not via an RGB source."""
    rng = np.random.default_rng(3)
    y = rng.integers(16, 236, (HEIGHT, WIDTH), dtype=np.uint8)
    u = rng.integers(16, 241, (HEIGHT, WIDTH // 2), dtype=np.uint8)
    v = rng.integers(16, 241, (HEIGHT, WIDTH // 2), dtype=np.uint8)
    order = "uyvy" if encoding in ("uyvy", "yuv422") else "yuyv"
    rows = pack_yuv422(y, u, v, order)
    expected = yuv_to_rgb_bt601(y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1))
    result = convert_rows(encoding, rows)
    assert_matches(encoding, result, expected)


@pytest.mark.parametrize("encoding", YUV_ENCODINGS)
def test_yuv_recovers_source_colours(encoding: str) -> None:
    """Pairs of equal pixels lose nothing to chroma subsampling: the source comes back."""
    source = np.repeat(known_rgb(HEIGHT, WIDTH // 2, seed=4), 2, axis=1)
    # Keep colours inside the BT.601 gamut so nothing clips on the way back.
    source = (16 + source.astype(np.uint16) * 219 // 255).astype(np.uint8)
    _, rows = ENCODERS[encoding](source)
    result = convert_rows(encoding, rows)
    difference = np.abs(result.astype(np.int16) - source.astype(np.int16))
    assert difference.max() <= 3, f"max difference {difference.max()}"


def test_yuv422_is_uyvy_byte_order() -> None:
    """ROS defines yuv422 as UYVY: a pure-luma frame decodes to gray only in that order."""
    quad = np.array([[128, 200, 128, 200]], dtype=np.uint8)  # U Y V Y: neutral chroma
    uyvy = raw_image_to_rgb(
        encoding="yuv422", width=2, height=1, step=4, is_bigendian=False, data=quad.tobytes()
    )
    assert np.ptp(uyvy) == 0  # gray
    yuyv = raw_image_to_rgb(
        encoding="yuv422_yuy2", width=2, height=1, step=4, is_bigendian=False, data=quad.tobytes()
    )
    assert np.ptp(yuyv) > 0  # same bytes read as YUYV are coloured


def test_encoding_is_case_insensitive() -> None:
    expected, rows = encode_bgr8(known_rgb())
    result = raw_image_to_rgb(
        encoding="BGR8",
        width=WIDTH,
        height=HEIGHT,
        step=rows.shape[1],
        is_bigendian=False,
        data=rows.tobytes(),
    )
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_raw_writes_into_out(encoding: str) -> None:
    expected, rows = ENCODERS[encoding](known_rgb(seed=5))
    data, step = with_padding(rows, 2)
    slot = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    result = raw_image_to_rgb(
        encoding=encoding,
        width=WIDTH,
        height=HEIGHT,
        step=step,
        is_bigendian=False,
        data=data,
        out=slot,
    )
    assert result is slot
    assert_matches(encoding, slot, expected)


def test_out_of_wrong_shape_is_refused() -> None:
    _, rows = encode_rgb8(known_rgb())
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape \(5, 8"):
        raw_image_to_rgb(
            encoding="rgb8",
            width=WIDTH,
            height=HEIGHT,
            step=rows.shape[1],
            is_bigendian=False,
            data=rows.tobytes(),
            out=np.zeros((HEIGHT, WIDTH + 1, 3), dtype=np.uint8),
        )


# --------------------------------------------------------------------------------------------
# Raw images: rejections
# --------------------------------------------------------------------------------------------


def convert_rgb8(**overrides: object) -> np.ndarray:
    """raw_image_to_rgb on a valid 8x5 rgb8 frame, with some fields overridden."""
    fields: dict[str, object] = {
        "encoding": "rgb8",
        "width": WIDTH,
        "height": HEIGHT,
        "step": WIDTH * 3,
        "is_bigendian": False,
        "data": bytes(HEIGHT * WIDTH * 3),
    }
    fields.update(overrides)
    return raw_image_to_rgb(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "8UC3", "rgb16", "", "nv12"])
def test_rejects_unknown_encoding_listing_supported(encoding: str) -> None:
    supported = re.escape(", ".join(SUPPORTED_ENCODINGS))
    with pytest.raises(
        ImageRejected,
        match=rf"unsupported encoding {re.escape(repr(encoding))}; supported: {supported}",
    ):
        convert_rgb8(encoding=encoding)


@pytest.mark.parametrize(("width", "height"), [(0, HEIGHT), (WIDTH, 0), (-8, HEIGHT), (0, 0)])
def test_rejects_empty_or_negative_size(width: int, height: int) -> None:
    with pytest.raises(
        ImageRejected, match=rf"image size {width}x{height} is empty; width and height must be > 0"
    ):
        convert_rgb8(width=width, height=height)


def test_rejects_step_shorter_than_row() -> None:
    with pytest.raises(
        ImageRejected, match=r"step 23 is less than width\*bytes_per_pixel = 8\*3 = 24 for rgb8"
    ):
        convert_rgb8(step=23, data=bytes(23 * HEIGHT))


def test_rejects_step_shorter_than_row_mono16() -> None:
    with pytest.raises(ImageRejected, match=r"step 8 is less than .* = 8\*2 = 16 for mono16"):
        convert_rgb8(encoding="mono16", step=8, data=bytes(8 * HEIGHT))


@pytest.mark.parametrize("size", [HEIGHT * WIDTH * 3 - 1, HEIGHT * WIDTH * 3 - 24, 0])
def test_rejects_short_data(size: int) -> None:
    with pytest.raises(
        ImageRejected, match=rf"data is {size} bytes, expected height\*step = 5\*24 = 120$"
    ):
        convert_rgb8(data=bytes(size))


@pytest.mark.parametrize("size", [HEIGHT * WIDTH * 3 + 1, HEIGHT * WIDTH * 3 * 2])
def test_rejects_long_data(size: int) -> None:
    with pytest.raises(
        ImageRejected, match=rf"data is {size} bytes, expected height\*step = 5\*24 = 120$"
    ):
        convert_rgb8(data=array.array("B", bytes(size)))


def test_rejects_data_sized_for_unpadded_rows_when_step_is_padded() -> None:
    with pytest.raises(ImageRejected, match=r"data is 120 bytes, expected height\*step = 5\*32"):
        convert_rgb8(step=32, data=bytes(120))


def test_rejects_too_many_pixels_with_default_limit() -> None:
    # Checked before the data length, so no 192 MB buffer is needed (or allocated).
    with pytest.raises(
        ImageRejected,
        match=rf"image 8000x8000 = 64000000 pixels exceeds max_pixels = {DEFAULT_MAX_PIXELS}",
    ):
        convert_rgb8(width=8000, height=8000, step=24000, data=b"")


def test_max_pixels_is_inclusive_and_configurable() -> None:
    convert_rgb8(max_pixels=WIDTH * HEIGHT)  # exactly at the limit: accepted
    with pytest.raises(ImageRejected, match=r"image 8x5 = 40 pixels exceeds max_pixels = 39"):
        convert_rgb8(max_pixels=WIDTH * HEIGHT - 1)


@pytest.mark.parametrize("encoding", YUV_ENCODINGS)
def test_rejects_odd_width_for_yuv422(encoding: str) -> None:
    with pytest.raises(ImageRejected, match=rf"width 7 is odd; {encoding} \(YUV 4:2:2\)"):
        convert_rgb8(encoding=encoding, width=7, step=14, data=bytes(14 * HEIGHT))


def test_rejects_non_buffer_data_with_type_error() -> None:
    with pytest.raises(TypeError, match=r"data must be a C-contiguous bytes-like object.*list"):
        convert_rgb8(data=[0] * (HEIGHT * WIDTH * 3))


# --------------------------------------------------------------------------------------------
# Compressed images
# --------------------------------------------------------------------------------------------


def encode_file(extension: str, pixels: np.ndarray, *params: int) -> bytes:
    """Write an image file in memory (cv2 stores its input as BGR, like image_transport)."""
    ok, encoded = cv2.imencode(extension, pixels, list(params))
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("input_type", ["bytes", "array.array", "memoryview"])
@pytest.mark.parametrize(
    "format_string", ["png", "bgr8; png compressed bgr8", "rgb8; png compressed bgr8", " PNG "]
)
def test_png_colour_is_exact(format_string: str, input_type: str) -> None:
    rgb = known_rgb(13, 17, seed=6)
    data = INPUT_TYPES[input_type](encode_file(".png", rgb[..., ::-1].copy()))
    result = compressed_image_to_rgb(format=format_string, data=data)
    assert_output_contract(result, 13, 17, data)
    np.testing.assert_array_equal(result, rgb)


@pytest.mark.parametrize("input_type", ["bytes", "array.array", "memoryview"])
@pytest.mark.parametrize(
    "format_string", ["jpeg", "jpg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8"]
)
def test_jpeg_colour_within_tolerance(format_string: str, input_type: str) -> None:
    rgb = smooth_rgb()
    data = INPUT_TYPES[input_type](
        encode_file(".jpg", rgb[..., ::-1].copy(), cv2.IMWRITE_JPEG_QUALITY, 95)
    )
    result = compressed_image_to_rgb(format=format_string, data=data)
    assert_output_contract(result, *rgb.shape[:2], data)
    difference = np.abs(result.astype(np.int16) - rgb.astype(np.int16))
    assert difference.mean() < 2.0
    assert difference.max() <= 16
    # Channel order: each channel must be closest to its own source channel.
    for channel in range(3):
        errors = [np.abs(result[..., channel].astype(int) - rgb[..., c]).mean() for c in range(3)]
        assert int(np.argmin(errors)) == channel


def test_jpeg_mono8() -> None:
    gray = smooth_rgb()[..., 1]
    data = encode_file(".jpg", gray, cv2.IMWRITE_JPEG_QUALITY, 95)
    result = compressed_image_to_rgb(format="mono8; jpeg compressed mono8", data=data)
    assert result.shape == gray.shape + (3,)
    assert np.array_equal(result[..., 0], result[..., 1])
    assert np.array_equal(result[..., 0], result[..., 2])
    assert np.abs(result[..., 0].astype(int) - gray).max() <= 4


def test_png_mono8_exact() -> None:
    gray = known_rgb(seed=7)[..., 0]
    result = compressed_image_to_rgb(
        format="mono8; png compressed mono8", data=encode_file(".png", gray)
    )
    np.testing.assert_array_equal(result, np.repeat(gray[..., None], 3, axis=-1))


def test_png_mono16_keeps_high_byte_like_raw() -> None:
    rgb = known_rgb(seed=8)
    samples = (rgb[..., 0].astype(np.uint16) << 8) | rgb[..., 1]
    result = compressed_image_to_rgb(
        format="mono16; png compressed mono16", data=encode_file(".png", samples)
    )
    np.testing.assert_array_equal(result, np.repeat(rgb[..., :1], 3, axis=-1))


def test_png_bgr16_keeps_high_byte() -> None:
    rgb = known_rgb(seed=9)
    samples = (rgb.astype(np.uint16) << 8) | 0x7F
    result = compressed_image_to_rgb(
        format="bgr16; png compressed bgr16", data=encode_file(".png", samples[..., ::-1].copy())
    )
    np.testing.assert_array_equal(result, rgb)


def test_png_with_alpha_drops_alpha() -> None:
    rgb = known_rgb(seed=10)
    bgra = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=-1)
    result = compressed_image_to_rgb(
        format="bgra8; png compressed bgra8", data=encode_file(".png", bgra)
    )
    np.testing.assert_array_equal(result, rgb)


def test_compressed_rgb8_payload_is_not_swapped() -> None:
    """'compressed rgb8' means RGB memory went through OpenCV unswapped: keep the order."""
    rgb = known_rgb(seed=11)
    result = compressed_image_to_rgb(
        format="rgb8; png compressed rgb8", data=encode_file(".png", rgb)
    )
    np.testing.assert_array_equal(result, rgb)


def test_compressed_writes_into_out() -> None:
    rgb = known_rgb(seed=12)
    slot = np.zeros_like(rgb)
    result = compressed_image_to_rgb(
        format="png", data=encode_file(".png", rgb[..., ::-1].copy()), out=slot
    )
    assert result is slot
    np.testing.assert_array_equal(slot, rgb)


@pytest.mark.parametrize("data", [b"", bytearray(), array.array("B"), memoryview(b"")])
def test_rejects_empty_compressed_data(data: object) -> None:
    with pytest.raises(ImageRejected, match=r"compressed data is empty \(format 'jpeg'\)"):
        compressed_image_to_rgb(format="jpeg", data=data)


@pytest.mark.parametrize(
    ("format_string", "data"),
    [
        ("jpeg", b"not an image at all"),
        ("png", b"\x89PNG\r\n\x1a\n" + bytes(40)),
        ("jpeg", b"\xff\xd8\xff" + bytes(200)),
        ("jpeg", encode_file(".jpg", smooth_rgb())[:40]),
        ("png", encode_file(".png", smooth_rgb())[:60]),
    ],
    ids=["garbage", "png-signature-then-zeros", "jpeg-marker-then-zeros", "jpeg-cut", "png-cut"],
)
def test_rejects_undecodable_compressed_data(format_string: str, data: bytes) -> None:
    with pytest.raises(
        ImageRejected, match=rf"could not decode {len(data)} bytes as {format_string}"
    ):
        compressed_image_to_rgb(format=format_string, data=data)


@pytest.mark.parametrize("format_string", ["", "bmp", "h264", "rgb8; theora", "raw"])
def test_rejects_unknown_compressed_format(format_string: str) -> None:
    with pytest.raises(
        ImageRejected,
        match=rf"unknown compressed format {re.escape(repr(format_string))}; "
        r"expected one of jpeg, jpg, png",
    ):
        compressed_image_to_rgb(format=format_string, data=encode_file(".png", known_rgb()))


def test_rejects_compressed_depth() -> None:
    with pytest.raises(ImageRejected, match=r"compressedDepth image, which is not supported"):
        compressed_image_to_rgb(
            format="16UC1; compressedDepth png", data=encode_file(".png", known_rgb())
        )


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_compressed_max_pixels(extension: str) -> None:
    data = encode_file(extension, known_rgb())
    with pytest.raises(ImageRejected, match=r"image 8x5 = 40 pixels exceeds max_pixels = 39"):
        compressed_image_to_rgb(format=extension[1:], data=data, max_pixels=39)


def test_png_header_size_is_checked_before_decoding() -> None:
    """A header claiming 100000x100000 is refused from the header alone (no 30 GB decode)."""
    huge = bytearray(encode_file(".png", known_rgb()))
    huge[16:20] = (100_000).to_bytes(4, "big")
    huge[20:24] = (100_000).to_bytes(4, "big")
    with pytest.raises(ImageRejected, match=r"image 100000x100000 = 10000000000 pixels exceeds"):
        compressed_image_to_rgb(format="png", data=bytes(huge))


def test_jpeg_header_size_is_checked_before_decoding() -> None:
    huge = bytearray(encode_file(".jpg", smooth_rgb()))
    sof = huge.find(b"\xff\xc0")
    assert sof > 0
    huge[sof + 5 : sof + 7] = (60_000).to_bytes(2, "big")  # height
    huge[sof + 7 : sof + 9] = (50_000).to_bytes(2, "big")  # width
    with pytest.raises(ImageRejected, match=r"image 50000x60000 = 3000000000 pixels exceeds"):
        compressed_image_to_rgb(format="jpeg", data=bytes(huge))


# --------------------------------------------------------------------------------------------
# Agreement with cv_bridge on real sensor_msgs/Image messages
# --------------------------------------------------------------------------------------------

# What cv_bridge's imgmsg_to_cv2(msg, "rgb8") converts. (The PyPI port cannot convert mono16 to
# rgb8 nor any YUV 4:2:2 encoding, and ignores step; see the image_conversion docstring.)
CV_BRIDGE_RGB8_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def make_image_message(encoding: str, rows: np.ndarray, is_bigendian: bool = False) -> object:
    # Only these tests need ROS; on a training box without it they skip, the rest run.
    Image = pytest.importorskip("sensor_msgs.msg", reason="needs ROS 2 sensor_msgs").Image

    message = Image()
    message.height, message.width = HEIGHT, WIDTH
    message.encoding = encoding
    message.is_bigendian = is_bigendian
    message.step = rows.shape[1]
    message.data = rows.tobytes()
    return message


def convert_message(message: object) -> np.ndarray:
    """The node's call: pass the message fields straight through."""
    return image_message_to_rgb(message)


def test_message_data_is_array_array() -> None:
    """The zero-copy path assumes rclpy's array.array('B'); fail loudly if that changes."""
    _, rows = encode_rgb8(known_rgb())
    message = make_image_message("rgb8", rows)
    assert isinstance(message.data, array.array)
    assert message.data.typecode == "B"


@pytest.mark.parametrize("encoding", CV_BRIDGE_RGB8_ENCODINGS)
def test_matches_cv_bridge(encoding: str) -> None:
    CvBridge = pytest.importorskip("cv_bridge", reason="needs cv_bridge (ROS)").CvBridge

    _, rows = ENCODERS[encoding](known_rgb(seed=13))
    message = make_image_message(encoding, rows)
    bridged = CvBridge().imgmsg_to_cv2(message, desired_encoding="rgb8")
    np.testing.assert_array_equal(convert_message(message), bridged)


def test_matches_cv_bridge_mono16_passthrough() -> None:
    CvBridge = pytest.importorskip("cv_bridge", reason="needs cv_bridge (ROS)").CvBridge

    _, rows = encode_mono16(known_rgb(seed=14))
    message = make_image_message("mono16", rows)
    samples = CvBridge().imgmsg_to_cv2(message, desired_encoding="passthrough")
    assert samples.dtype == np.uint16
    expected = np.repeat((samples >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(convert_message(message), expected)
