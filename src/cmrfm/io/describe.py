"""Words about a series: sequence and view guessed from descriptions, vendor names, safe text.

Used by the DICOM reader (SeriesDescription, ProtocolName) and by the NIfTI reader for
dcm2niix-style JSON sidecars. Nothing here reads files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cmrfm.constants import Sequence, View

#: Longest description kept in metadata (characters).
MAX_DESCRIPTION_CHARS = 64

#: Placeholder written where an identifier was found in free text.
REDACTED = "[redacted]"

# Ordered: the first pattern that matches wins (T1/T2 maps before LGE, whose names mention T1).
_SEQUENCE_PATTERNS: tuple[tuple[re.Pattern[str], Sequence], ...] = (
    (re.compile(r"t2\s*\*|t2star|t2_star"), Sequence.OTHER),
    (re.compile(r"molli|shmolli|sasha|t1\s*[-_]?\s*map|t1map|native\s*t1|t1\s*mapping"), Sequence.T1_MAP),
    (re.compile(r"t2\s*[-_]?\s*map|t2map|t2\s*mapping|t2\s*prep"), Sequence.T2_MAP),
    (
        re.compile(r"\blge\b|psir|\bde[_\s]|delayed|late\s*gad|viabil|phase\s*sens|mag[_\s]?ir|\bmde\b"),
        Sequence.LGE,
    ),
    (re.compile(r"cine|ssfp|fiesta|trufi|b-?ffe|bssfp|retro"), Sequence.CINE),
    (re.compile(r"locali[sz]er|scout|survey|pilot|\bloc\b|haste|perf"), Sequence.OTHER),
)

_VIEW_PATTERNS: tuple[tuple[re.Pattern[str], View], ...] = (
    (re.compile(r"2\s*[-_]?\s*ch|two\s*chamber|\bvla\b|2cv"), View.TWO_CH),
    (re.compile(r"3\s*[-_]?\s*ch|three\s*chamber|lvot"), View.THREE_CH),
    (re.compile(r"4\s*[-_]?\s*ch|four\s*chamber|\bhla\b|4cv"), View.FOUR_CH),
    (re.compile(r"short\s*[-_]?\s*axis|\bsax\b|(^|[^a-z])sa($|[^a-z])|\bsa_|_sa\b"), View.SAX),
    (
        re.compile(r"locali[sz]er|scout|survey|pilot|axial|coronal|sagittal|\btra\b|\bcor\b|\bsag\b"),
        View.OTHER,
    ),
)

#: Lower-case manufacturer substrings -> the short vendor name cmrfm reports.
VENDORS: dict[str, str] = {
    "siemens": "Siemens",
    "ge ": "GE",
    "ge_": "GE",
    "general electric": "GE",
    "ge medical": "GE",
    "gehc": "GE",
    "philips": "Philips",
    "canon": "Canon",
    "toshiba": "Canon",
    "hitachi": "Hitachi",
    "fujifilm": "Hitachi",
    "united imaging": "United Imaging",
    "uih": "United Imaging",
}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace("_", " _ ")).strip()


def guess_sequence(texts: Iterable[str | None]) -> Sequence | None:
    """Guesses the sequence from free-text descriptions (first matching rule wins), else ``None``."""
    joined = " | ".join(_normalise(t) for t in texts if t)
    for pattern, sequence in _SEQUENCE_PATTERNS:
        if pattern.search(joined):
            return sequence
    return None


def guess_view(texts: Iterable[str | None]) -> View | None:
    """Guesses the imaging plane from free-text descriptions, else ``None``."""
    joined = " | ".join(_normalise(t) for t in texts if t)
    for pattern, view in _VIEW_PATTERNS:
        if pattern.search(joined):
            return view
    return None


def vendor_name(manufacturer: str | None) -> str | None:
    """Short vendor name (``Siemens``, ``GE``, ``Philips``, ``Canon``, ...) or the raw text."""
    if not manufacturer:
        return None
    lowered = manufacturer.lower() + " "
    for key, vendor in VENDORS.items():
        if lowered.startswith(key) or f" {key}" in f" {lowered}":
            return vendor
    return sanitise_text(manufacturer)


def sanitise_text(text: str | None, forbidden: Iterable[str] = ()) -> str | None:
    """Makes free text safe to log: printable ASCII, one line, short, identifiers removed.

    Args:
        text: A description from a file header.
        forbidden: Strings that must not appear (e.g. the patient's name parts and ID, which the
            caller reads only to remove them here); each is replaced by ``[redacted]``.

    Returns:
        The cleaned text, or ``None`` when nothing is left.
    """
    if text is None:
        return None
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in str(text))
    for word in forbidden:
        word = str(word).strip()
        if len(word) >= 2:
            cleaned = re.sub(re.escape(word), REDACTED, cleaned, flags=re.IGNORECASE)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()[:MAX_DESCRIPTION_CHARS]
    return cleaned or None


def slug(text: str | None, fallback: str) -> str:
    """A lower-case ``[a-z0-9_]`` name for files and series (``fallback`` when empty)."""
    value = re.sub(r"[^a-z0-9]+", "_", (text or "").lower()).strip("_")
    return value or fallback


#: Longest library error message quoted in an InputError reason (characters).
MAX_ERROR_CHARS = 200


def error_text(err: BaseException) -> str:
    """A library exception as one short line: ``"TypeName: message"``."""
    message = " ".join(str(err).split())[:MAX_ERROR_CHARS]
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
