"""Open one file the way a hostile upload deserves, and learn everything the dataset phase needs.

One pass per file gives the audit entry (format, size, problems in plain words), the content hash,
the perceptual hash used to find duplicates and a small
thumbnail for confirming duplicates and judging variety. JPEGs are decoded at reduced scale
(``draft``): every byte is still decoded, so a truncated file is still caught, at a fraction of the cost.

Safety: the format is sniffed from the first bytes and only allowlisted decoders run; the pixel count
is checked from the header before any decoding; Pillow's decompression-bomb guard stays on.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from core.dataset.buckets import bucket_for
from core.dataset.likeness import mirror_proof_phash
from core.dataset.models import ImageAudit, Issue
from core.dataset.sniff import HEAD_BYTES, sniff

THUMB = 64  # side of the square thumbnail kept for duplicate confirmation and diversity features
WORK_SIDE = 256  # long side of the working copy the hashes are computed from
DRAFT_SIDE = 2 * THUMB  # JPEGs are decoded at the smallest scale (down to 1/8) that stays above this
EXTREME_ASPECT = 2.0  # wider or taller than 2:1 lands in a stretched training bucket
LOW_JPEG_QUALITY = 65  # below this, block artefacts are visible and can be learned as "style"

# libjpeg's standard luminance quantisation table (ITU T.81, Annex K), used to estimate quality.
_STD_LUMA_SUM = sum(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ]
)
_EXIF_ORIENTATION = 0x0112


@dataclass
class Inspection:
    audit: ImageAudit
    sha256: str | None = None
    phash: int | None = None  # 64-bit mirror-proof pHash of the picture as used (orientation applied)
    thumb: np.ndarray | None = None  # THUMB×THUMB×3 uint8, orientation applied, alpha on white


@dataclass(frozen=True)
class Limits:
    resolution: int  # the model family's native training size
    max_pixels: int


def _error(audit: ImageAudit, code: str, message: str) -> None:
    audit.issues.append(Issue(code=code, severity="error", message=message))
    audit.ok = False


def _warn(audit: ImageAudit, code: str, message: str, severity: str = "warning") -> None:
    audit.issues.append(Issue(code=code, severity=severity, message=message))


def _describe_unknown(head: bytes) -> str:
    if not head:
        return "This file is empty (0 bytes) — it probably failed to upload or save. Please send it again."
    try:
        head.decode("utf-8")
        return "This is a text file, not a picture — perhaps the wrong file was picked."
    except UnicodeDecodeError:
        return "This file isn't a picture in any format I know — perhaps the wrong file was picked."


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bit_depth(im: Image.Image, head: bytes) -> int:
    if im.format == "PNG" and len(head) > 24:
        return head[24]  # IHDR bit depth
    if im.format == "TIFF":
        bits = im.tag_v2.get(258) or (8,)
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 16 if im.mode.startswith("I;16") else 8


def _jpeg_quality(im: Image.Image) -> int | None:
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        return None
    scale = 100.0 * sum(tables[0]) / _STD_LUMA_SUM
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(round(max(1.0, min(100.0, quality))))


def to_rgb(im: Image.Image) -> Image.Image:
    """The picture as training will see it: 8-bit RGB, transparency composited onto white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if im.mode == "CMYK":
        im = im.convert("RGB")
    if im.mode != "RGB":
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    return im


def _has_real_alpha(im: Image.Image) -> bool:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return im.getchannel("A").getextrema()[0] < 255
    if im.mode == "P" and "transparency" in im.info:
        return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def _check_properties(audit: ImageAudit, im: Image.Image, head: bytes, limits: Limits) -> None:
    """Warnings and notes about a picture that decodes: each says what it means for training."""
    w, h = audit.width, audit.height
    depth = _bit_depth(im, head)
    if im.mode == "CMYK":
        _warn(
            audit,
            "color_mode",
            "This picture is in CMYK (print colours); I'll convert it to screen "
            "colours (RGB) for training, and some colours may shift slightly.",
        )
    elif depth > 8:
        _warn(
            audit,
            "color_mode",
            f"This picture uses {depth}-bit colour; training uses 8-bit, so I'll "
            "convert it. Fine gradients may band slightly.",
        )
    elif im.mode in ("L", "LA", "1", "I", "F"):
        _warn(
            audit,
            "color_mode",
            "This picture is black-and-white (grayscale); I'll convert it to colour "
            "for training. If most of your pictures are in colour, it will pull the model towards grey.",
        )
    elif im.mode in ("P", "PA"):
        _warn(
            audit,
            "color_mode",
            "This picture uses a limited colour palette (like a GIF); I'll convert it to full colour for training.",
        )
    if _has_real_alpha(im):
        _warn(
            audit,
            "alpha",
            "This picture has a transparent background; I'll put it on white unless you'd like another colour.",
        )
    if getattr(im, "n_frames", 1) > 1:
        _warn(
            audit,
            "animated",
            f"This is an animation ({im.n_frames} frames); only its first frame will be used for training.",
        )
    if min(w, h) < limits.resolution:
        _warn(
            audit,
            "too_small",
            f"This picture is {w}×{h}; its short side is below {limits.resolution} px, "
            "the size this model trains at, so it would look soft after training. Upscale it or leave "
            "it out.",
        )
    aspect = max(w, h) / min(w, h)
    if aspect > EXTREME_ASPECT:
        bw, bh = bucket_for(w, h, limits.resolution)
        shape = "wide" if w > h else "tall"
        _warn(
            audit,
            "extreme_aspect",
            f"This picture is very {shape} ({aspect:.1f} : 1). Training sorts "
            f"pictures into standard shapes, and this one lands in {bw}×{bh}, so it loses detail. "
            "Consider cropping it into two pictures.",
        )
    quality = _jpeg_quality(im) if im.format == "JPEG" else None
    if quality is not None and quality < LOW_JPEG_QUALITY:
        _warn(
            audit,
            "low_quality_jpeg",
            f"This JPEG is heavily compressed (quality about {quality} of 100); "
            "its blocky artefacts can be learned as part of your style. A less compressed export or a "
            "PNG would be better.",
        )


def inspect_file(path: Path, name: str, limits: Limits) -> Inspection:
    """Audit one file and, when it decodes, hash it and keep a thumbnail. Never raises for bad input."""
    audit = ImageAudit(file=name, ok=True)
    result = Inspection(audit=audit)
    try:
        st = os.lstat(path)
    except OSError:
        _error(audit, "not_an_image", "This file disappeared or can't be read (check its permissions).")
        return result
    if not stat.S_ISREG(st.st_mode):
        what = "a link to another file or folder" if stat.S_ISLNK(st.st_mode) else "not an ordinary file"
        _error(audit, "not_an_image", f"This is {what}, not a picture; copy the picture itself in instead.")
        return result
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    kind = sniff(head)
    if kind is None:
        _error(audit, "not_an_image", _describe_unknown(head))
        return result
    if kind.format is None:
        _error(
            audit,
            "unsupported_format",
            f"This is {kind.label}, which training tools can't read. Export it as PNG or JPEG and send it again.",
        )
        return result
    result.sha256 = sha256_of(path)
    audit.format = kind.format
    w = h = 0
    try:
        with warnings.catch_warnings():
            # A damaged file makes Pillow warn (e.g. "Corrupt EXIF data"); the audit already speaks for
            # the file, so those stay quiet. A bomb warning becomes an error: the picture is refused.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[kind.format]) as im:
                audit.mode = im.mode
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise Image.DecompressionBombError(f"{w}x{h}")
                im.verify()
            with Image.open(path, formats=[kind.format]) as im:
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                if im.format == "JPEG":
                    im.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))
                im.load()
                rotated = orientation in (5, 6, 7, 8)
                audit.width, audit.height = (h, w) if rotated else (w, h)
                _check_properties(audit, im, head, limits)
                work = to_rgb(ImageOps.exif_transpose(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        claimed = f"claims to be {w}×{h} pixels ({w * h / 1e6:.1f} megapixels)" if w else "is enormous"
        _error(
            audit,
            "decompression_bomb",
            f"This picture {claimed}, beyond the "
            f"{limits.max_pixels / 1e6:.1f} megapixel safety limit, so I won't open it: a file like "
            "that can exhaust the computer's memory. If it's a real picture, downscale it and send "
            "it again.",
        )
        return result
    except Exception as err:  # noqa: BLE001 — any decoder failure on a hostile file is the file's fault
        if "truncat" in str(err).lower() or isinstance(err, EOFError):
            _error(
                audit,
                "truncated",
                "This file is cut off partway — it may have failed to upload "
                "or save. Please send it again. (It ends before the picture does.)",
            )
        else:
            _error(
                audit,
                "corrupt",
                f"This file says it is {kind.label} but it can't be read — it may "
                "be damaged. Please export or download it again.",
            )
        return result
    if orientation not in (1, None):
        _warn(
            audit,
            "exif_rotated",
            "Your camera or phone stored this photo rotated; I'll use it the right way up.",
            severity="info",
        )
    work.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    result.phash = mirror_proof_phash(work)
    result.thumb = np.asarray(work.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.uint8)
    return result
