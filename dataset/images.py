"""Reading images and label maps exactly: how preparation, training, evaluation and prediction read every file.

Images of any mode PIL opens become 8-bit RGB where that is exact: palette applied, alpha dropped (LA, RGBA,
PA), CMYK, YCbCr, LAB, HSV and 1-bit converted as PIL converts them; wider data (16-bit gray 'I;16', 32-bit
'I' and 'F', 16-bit RGB(A), of which PIL would keep only the high byte) only where 8 bits hold it exactly
(`to_8bit`). OpenCV reads the files PIL has no decoder for (TIFF pixel layouts it does not know, float RGB),
never a file PIL found damaged: OpenCV fills a truncated JPEG with grey without a word. Label maps are
single-channel class indices (mode L or P, or 16-bit with every value below 256). Anything else is one
DataError naming the file, and its mode or value range where that is the reason.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile

from util.catalog import IGNORE_INDEX
from util.errors import DataError, short_reason
from util.io import open_image

# Single-channel modes wider than 8 bits, as PIL names them.
WIDE_MODES = {**dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N"), "16-bit grayscale"),
              "I": "32-bit integer grayscale", "F": "32-bit float grayscale"}
# Label images: class indices in one channel. 16-bit ones are read when every value fits 8 bits.
LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I")


def _rawmode(im: Image.Image) -> str:
    """How the file stores the pixels (e.g. 'RGB;16B'), before PIL reduces them to its mode; '' if unknown."""
    if not isinstance(im, ImageFile.ImageFile) or not im.tile:  # an image read from a file
        return ""
    args = im.tile[0][3]  # (codec, extents, offset, args)
    first = args[0] if isinstance(args, tuple) and args else args
    return first if isinstance(first, str) else ""


def to_8bit(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """`array` as uint8 where that is exact (values 0..255, or 16-bit multiples of 257), else a DataError."""
    if array.dtype == np.uint8:
        return array
    if array.size and (array.dtype.kind in "iu" or np.isfinite(array).all()):
        low, high = array.min(), array.max()
        integral = array.dtype.kind in "iu" or np.array_equal(array, np.round(array))
        if integral and low >= 0 and high <= 255:
            return array.astype(np.uint8)
        # 16-bit exports of 8-bit images scale 255 to 65535; 11-, 12- or 16-bit sensor data and floats need a
        # scale only the user knows, so they are refused rather than guessed.
        if integral and low >= 0 and high <= 65535 and not (array % 257).any():
            return (array // 257).astype(np.uint8)
        values = f"values {low:g}..{high:g}"
    else:
        values = "values that are not finite numbers" if array.size else "no pixels"
    raise DataError(f"image {path} is {what} with {values}: only 8-bit data (0..255, or 16-bit multiples of 257) "
                    f"converts exactly; convert it to 8-bit RGB with the scale of your sensor")


def _opencv_array(path: Path) -> np.ndarray | None:
    """The file as OpenCV decodes it (all bits, BGR(A) order), or None where it cannot."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no TIFF warnings on the terminal
    try:
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    finally:
        cv2.utils.logging.setLogLevel(level)


def _rgb_from_opencv(path: Path, what: str | None, pil_error: BaseException | None = None) -> Image.Image:
    """Decode with OpenCV: all 16 bits of 16-bit colour files, and files PIL cannot decode (some TIFF compressions)."""
    array = _opencv_array(path)
    if array is None:
        reason = short_reason(pil_error) if pil_error is not None else f"{what} that OpenCV cannot decode"
        raise DataError(f"cannot read image {path}: {reason}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2 and not (array.ndim == 3 and array.shape[2] in (3, 4)):
        raise DataError(f"cannot read image {path}: {array.shape[-1]} channels, not gray, RGB or RGBA")
    channels = 1 if array.ndim == 2 else array.shape[2]
    kind = "float" if array.dtype.kind == "f" else "integer"
    array = to_8bit(array, path, what or f"{array.dtype.itemsize * 8}-bit {kind} data in {channels} channel(s), "
                                         f"a layout PIL has no mode for")
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    # Alpha is dropped.
    return Image.fromarray(cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB))


def _pil_to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """An opened PIL image decoded and converted to 8-bit RGB exactly (see the module docstring)."""
    mode, rawmode = im.mode, _rawmode(im)
    im.load()
    if mode in WIDE_MODES:
        return Image.fromarray(to_8bit(np.asarray(im), path, f"{WIDE_MODES[mode]} (mode {mode})")).convert("RGB")
    if rawmode.endswith((";16B", ";16L", ";16N")):
        # 16 bits per channel, of which PIL kept the high byte (decoded whole above, so the file is sound).
        im.close()
        return _rgb_from_opencv(path, f"16-bit {mode} (stored as {rawmode})")
    if mode == "RGB":
        return im
    # Premultiplied gray+alpha has no direct conversion to RGB.
    return (im.convert("LA") if mode == "La" else im).convert("RGB")


def open_rgb(path: Path) -> Image.Image:
    """Any image file as 8-bit RGB, exactly, or a DataError naming the file (and its mode where that is why)."""
    try:
        im = open_image(path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.UnidentifiedImageError as e:
        return _rgb_from_opencv(path, None, e)
    except Exception as e:  # noqa: BLE001 - a decoder may fail any way on a user's file; it is named
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None
    try:
        return _pil_to_rgb(im, path)
    except DataError:
        raise
    except ValueError as e:
        raise DataError(f"cannot convert image {path} (mode {im.mode}) to RGB: {short_reason(e)}") from None
    except OSError as e:
        if "not available" in str(e):  # "decoder jpeg2k not available": OpenCV may have one
            return _rgb_from_opencv(path, None, e)
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - a decoder may fail any way on a user's file; it is named
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None


def rgb_array(path: Path) -> np.ndarray:
    """`open_rgb` as a writable (H, W, 3) uint8 array: how training, evaluation and prediction read an image."""
    # Writable: torch.from_numpy refuses to share read-only memory.
    return np.array(open_rgb(path))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header where PIL can, else by decoding."""
    try:
        with open_image(path) as im:
            return im.height, im.width
    except OSError:
        return open_rgb(path).size[::-1]


def _check_label_values(array: np.ndarray, path: Path, mode: str) -> np.ndarray:
    """A wide label array as uint8, or a DataError naming the first value outside 0..255."""
    if array.dtype == np.uint8:
        return array
    wide = (array < 0) | (array > 255)
    if wide.any():
        raise DataError(f"mask {path} (mode {mode}) holds value {int(array[wide][0])}: label values must be "
                        f"0..255 ({IGNORE_INDEX} = ignore)")
    return array.astype(np.uint8)


def open_labels(path: Path) -> np.ndarray:
    """A label image (class indices, mode L or P, or 16-bit with every value below 256) as uint8 (H, W)."""
    try:
        with open_image(path) as im:
            mode = im.mode
            if mode not in LABEL_MODES:
                raise DataError(f"mask {path} must be single-channel (mode L or P, or 16-bit with values below 256), "
                                f"not mode {mode}")
            array = np.array(im)
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure on a user's file is reported as that file's
        raise DataError(f"cannot read mask {path}: {short_reason(e)}") from None
    return _check_label_values(array, path, mode)
