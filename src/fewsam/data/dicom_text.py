"""Text as the DICOM objects fewsam writes (``writers.write_dicom_seg``, ``rtstruct_writer``) hold it, within
the rules a DICOM validator (dciodvfy) and the viewers and planning systems reading the objects apply:

- a class name is a LO value (a segment's or an ROI's name): at most 64 characters (bytes, in UTF-8),
  and without the backslash, which separates the values of a multi-valued element (``left\\right``
  would read as two names), so a backslash is written as a slash (``dicom_label``), and names that then
  coincide are numbered apart (``unique_dicom_labels``);
- text outside ASCII (a class named ``Leber``-with-umlaut, a patient name copied from a series in Latin-1 or
  Japanese) needs a SpecificCharacterSet naming its encoding: the objects then say the series' own where
  it holds all their text, else UTF-8 (ISO_IR 192), which holds any text pydicom decoded from the series,
  and say none when all is ASCII, the default repertoire every reader knows (``character_set``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

LO_LENGTH = 64  # characters (and bytes) of a Long String value
UTF8 = "ISO_IR 192"
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})


def dicom_label(name: str, length: int = LO_LENGTH) -> str:
    """``name`` as one LO value: a backslash written as a slash, cut to ``length`` characters and, written in
    UTF-8, to ``length`` bytes (validators count a value's bytes; a character is never cut in two), without
    surrounding spaces (a reader takes them for padding and drops them)."""
    label = name.replace("\\", "/")[:length]
    while len(label.encode()) > length:
        label = label[:-1]
    return label.strip()


def unique_dicom_labels(names: Sequence[str]) -> list[str]:
    """The ``dicom_label`` of each of ``names`` (in class order), none two alike as readers match names (letter
    case and surrounding spaces aside, ``name_key``): a planning system refuses a structure set with two ROIs
    of one name, and a reader (fewsam's too) takes two segments of one name for one class. A name that is a
    label as it stands keeps it; one the label changed (a backslash, more than 64 bytes) and that then
    equals an earlier label is numbered " (2)", " (3)"..., within the 64 bytes, so the same classes get the
    same labels in every case and a reader maps each back to its class."""
    from fewsam.data.readers.slicer_segmentation import name_key

    labels = [dicom_label(name) for name in names]
    kept = [name_key(label) == name_key(name) for name, label in zip(names, labels, strict=True)]
    taken = {name_key(label) for label, keeps in zip(labels, kept, strict=True) if keeps}
    unique = []
    for label, keeps in zip(labels, kept, strict=True):
        number = 1
        while not keeps and name_key(_numbered(label, number)) in taken:
            number += 1
        unique.append(label if keeps else _numbered(label, number))
        taken.add(name_key(unique[-1]))
    return unique


def _numbered(label: str, number: int) -> str:
    """``label`` as the ``number``-th of its name: itself for the first, else cut to leave room for " (n)"."""
    if number == 1:
        return label
    suffix = f" ({number})"
    return dicom_label(label, LO_LENGTH - len(suffix.encode())) + suffix


def character_set(ds: Any, names: Iterable[str], series: Any = None) -> str | None:
    """The SpecificCharacterSet for ``ds`` (a pydicom Dataset whose top level holds the text copied from the
    series) holding ``names``: none where all that text is ASCII; else the ``series``' own (its
    SpecificCharacterSet) where it holds it all, so a name copied from the series keeps its bytes (a
    validator comparing the object with its series, dcentvfy, compares bytes, and older planning systems
    read only the character sets their scanners write); else UTF-8."""
    texts = [*names, *(str(element.value) for element in ds if element.VR in TEXT_VRS)]
    if all(text.isascii() for text in texts):
        return None
    return series if _holds(series, texts) else UTF8


def _holds(chosen: Any, texts: list[str]) -> bool:
    """Whether one character set (``chosen``, a SpecificCharacterSet value) encodes every text; several
    (ISO 2022 code extensions) are left to UTF-8, which holds them too."""
    from pydicom.charset import python_encoding

    codec = python_encoding.get(chosen.strip()) if isinstance(chosen, str) else None
    if codec is None:
        return False
    try:
        for text in texts:
            text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def set_character_set(ds: Any, names: Iterable[str], series: Any = None) -> None:
    """``ds``'s SpecificCharacterSet as ``character_set`` gives it: set, or removed where the default will do
    (a value copied from the series names the series' encoding, not the one ``ds`` is written in)."""
    chosen = character_set(ds, names, series)
    if chosen is None:
        ds.pop("SpecificCharacterSet", None)
    else:
        ds.SpecificCharacterSet = chosen
