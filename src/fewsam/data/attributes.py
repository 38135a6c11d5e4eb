"""Group attributes for fairness evaluation: CSV tables joined to cases, and bins for
continuous attributes (``parse_bins("bmi:25,30")`` -> "<25", "25-30", ">=30").

A table is keyed by one column (``case``/``patient``/``subject``/``pid``/``id``/``image``/
``image_id``/``filename``..., the first of them whose ids are unique, or the first column); a case
takes the row whose key equals its case id, its subject (patient) id, its relative path, or the
file name of that path, in this order (the numbers of an id also without leading zeros; a path of
another machine or file type by its end, ``key_aliases``). Cells are parsed as int, then float,
else kept as text; empty cells, NA/NaN/None and the words tables write for an unknown value
(unknown, missing, ?, -, Excel's #N/A, pandas' <NA>) are missing (``None``). An attribute is named in
any letter case (``attribute_value``: ``--group-by group`` finds a ``Group`` column).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fewsam.errors import DataError, FewsamError
from fewsam.progress import say_once

KEY_COLUMNS = ("case", "case_id", "patient", "patient_id", "subject", "subject_id", "pid", "id",
               "image", "image_id", "filename", "file_name", "file")
# "unknown" is no group: FairSeg's own files code an unknown attribute -1, read as no value, and an
# "unknown" group would enter ES-Dice's spread and the worst-group gap as if it were a population.
# Tools write no value in their own way too: Excel's #N/A (a lookup that found nothing), pandas' <NA> and
# NaT, SAS's "."; and demographic tables in NIH's words ("Unknown or Not Reported"): each read as text was
# a group of its own.
MISSING = {"", "na", "n/a", "n.a.", "nan", "none", "null", "unknown", "missing", "?", "-",
           "#n/a", "#na", "<na>", "nat", ".", "not reported", "unknown or not reported", "unknown/not reported",
           "not available"}


DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d+")


def with_decimal_point(text: str) -> str:
    """'27,5' -> '27.5': a table whose columns are separated by semicolons is one Excel saved where
    the comma is the decimal mark, and its numbers would otherwise be read as text (a BMI column
    that --bins cannot bin). Only for such tables: in a comma-separated one "1,000" is a thousand."""
    return text.replace(",", ".") if DECIMAL_COMMA.fullmatch(text.strip()) else text


CODE_WITH_LEADING_ZEROS = re.compile(r"[-+]?0\d+")
# DICOM's age string (PatientAge, 0010,1010): three digits and a unit, as tables read from headers keep it.
DICOM_AGE = re.compile(r"(\d{3})([DWMY])", re.IGNORECASE)
DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def parse_cell(text: str, column: str = "") -> Any:
    """'28.06' -> 28.06, '3' -> 3, 'DCM' -> 'DCM', '' / 'NA' / 'Unknown' -> None; in an age ``column``,
    DICOM's '045Y' -> 45 (years, ``dicom_age_years``). A whole number written with leading zeros ('001', a
    site or scanner code) stays text: as a number, sites '001' and '01' would merge into one group '1',
    and the group would not read as the user's code."""
    text = text.strip()
    if text.lower() in MISSING:
        return None
    if is_age_column(column) and (age := DICOM_AGE.fullmatch(text)):
        return dicom_age_years(int(age[1]), age[2].upper())
    if is_age_column(column) and (top := top_coded_age(text)) is not None:
        say_once(f"{column} {text!r} is read as {top:g} or older (an age top-coded, as HIPAA asks above 89), so it "
                 f"falls in the top age bin; so are the other ages written so", key=f"top-coded-{column}")
        return top
    if CODE_WITH_LEADING_ZEROS.fullmatch(text):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


AGE_COLUMN = re.compile(r"(?:^|[^a-z])age(?:[^a-z]|$)|patientage")


# A top-coded age: "90+", ">89", ">=90", "≥90", "90 or older" (HIPAA's Safe Harbor folds every age over 89
# into one category, and de-identified tables write it so).
TOP_CODED_AGE = re.compile(r"(?:(?P<above>>)|>=|≥)\s*(?P<low>\d+)|(?P<at>\d+)\s*(?:\+|(?:or|and) (?:older|over|above))",
                           re.IGNORECASE)


class AtLeast(float):
    """A top-coded value ("90+"): any number from itself up. It bins as the number where every such number
    falls in one bin (``Bins.label``), and groups by value as written ("90+")."""

    def __str__(self) -> str:
        return f"{self:g}+"

    def __repr__(self) -> str:
        return f"{self:g}+"


def top_coded_age(text: str) -> AtLeast | None:
    """'90+', '>89', '>=90', '90 or older' -> AtLeast(90); None for anything else. ">89" is 90 and up, as ages
    are whole years there. Read as text, the age column of a de-identified table held text beside numbers,
    which its bins refused."""
    match = TOP_CODED_AGE.fullmatch(text.strip())
    if match is None:
        return None
    if match["at"] is not None:
        return AtLeast(int(match["at"]))
    return AtLeast(int(match["low"]) + (1 if match["above"] else 0))


def is_age_column(column: str) -> bool:
    """Whether a column holds ages by its name ("age", "Age (years)", "PatientAge", "age_at_scan"; not
    "image" or "stage"): only there is '042M' an age, elsewhere it may be a code or an id."""
    return bool(AGE_COLUMN.search(column.casefold()))


def dicom_age_years(count: int, unit: str) -> int | float:
    """A DICOM age ('045Y' -> 45, '006M' -> 0.5) in years: kept as text, each age was a group of its own
    (the default age bins bin numbers only), and ages in months or weeks did not compare with years."""
    if unit == "Y":
        return count
    return round(count * DAYS_PER_UNIT[unit] / DAYS_PER_UNIT["Y"], 4)


@dataclass
class AttributeTable:
    """Rows of attributes by key (a case, patient or file id), from one CSV file."""

    rows: dict[str, dict[str, Any]]
    key: str
    source: str = ""
    aliases: dict[str, list[str]] = field(default_factory=dict)  # file stem -> the path keys (``key_aliases``)
    unpadded: dict[str, list[str]] = field(default_factory=dict)  # key without leading zeros -> the keys

    def row_for(self, case_id: str, subject: str, rel_path: str = "", file_names: Iterable[str] = ()
                ) -> dict[str, Any]:
        """The row of a case (``row_key``), {} where the table has none."""
        key = self.row_key(case_id, subject, rel_path, file_names)
        return {} if key is None else self.rows[key]

    def row_key(self, case_id: str, subject: str, rel_path: str = "", file_names: Iterable[str] = ()
                ) -> str | None:
        """The key of a case's row, None where the table has none: by its id, subject, relative path, or
        (``file_names``) the other names a user keys a table by, as a list file may (``common.listed_names``:
        nnU-Net's ``x_0000.nii.gz``). Numbers in an id match without their leading zeros (case ``007``, row
        ``7``; ``patient001`` and ``patient1``), where one row of the table does: Excel reads an id column of
        digits as numbers and saves them so, which left every case below 100 of ``001``...``150`` without a
        row. A row whose every cell is empty is still the case's row: its ids matched."""
        keys = [key for key in (case_id, subject, rel_path, Path(rel_path).name, Path(rel_path).stem, *file_names)
                if key]
        for key in keys:
            if key in self.rows:
                return key
        for key in keys:
            unpadded = self.unpadded.get(without_leading_zeros(key), ())
            if len(unpadded) == 1:
                return unpadded[0]
        paths = [key for key in self.aliases.get(file_stem(Path(rel_path).name), ()) if same_file(key, rel_path)]
        return paths[0] if len(paths) == 1 else None


def read_attribute_table(path: str | Path, key: str | None = None) -> AttributeTable:
    """Read a CSV of group attributes; ``key`` names the id column (auto-detected if None)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"attribute table {path} is a folder; give the CSV file in it")
    if not path.is_file():
        raise DataError(f"attribute table {path} not found; give an existing CSV file")
    reader, read_to = None, 0
    try:
        separator, reader = user_csv_rows(path)
        columns = [name.strip() for name in reader.fieldnames or []]
        cells = []  # as lists: a dict keeps one cell of a column named twice
        read_to = reader.reader.line_num
        for row in reader.reader:
            if row:
                refuse_cells_beyond_header(path, len(columns), row[len(columns):], reader.reader.line_num, separator)
                cells.append(row)
            read_to = reader.reader.line_num
    except (OSError, csv.Error) as err:
        raise DataError(f"cannot read attribute table {path}: {csv_error_text(err, reader, read_to)}") from None
    refuse_disagreeing_repeated_columns(path, columns, cells)
    records = [dict(zip(columns, row)) for row in cells]
    key = key or _key_column(columns, records, path)
    if key not in columns:
        raise DataError(f"attribute table {path} has no column {key!r}; columns: {columns}")
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        name = (rec.get(key) or "").strip()
        if not name:
            continue
        if name in rows:
            raise DataError(f"attribute table {path} has two rows for {key}={name!r}; "
                            "keep one row per id")
        rows[name] = {c: parse_cell(with_decimal_point(v or "") if separator == ";" else v or "", c)
                      for c, v in rec.items() if c and c != key}
    unpadded: dict[str, list[str]] = {}
    for name in rows:
        unpadded.setdefault(without_leading_zeros(name), []).append(name)
    return AttributeTable(rows=rows, key=key, source=str(path), aliases=key_aliases(rows), unpadded=unpadded)


def refuse_disagreeing_repeated_columns(path: Path, columns: list[str], cells: list[list[str]]) -> None:
    """Refuse a column named twice in one table (in any letter case, as ``attribute_value`` matches names:
    "Sex" and "sex", or two "age" columns of tables pasted together) whose two cells give one row different
    values, naming both: one of them was taken unseen (the csv reader keeps the last of two equal names,
    ``attribute_value`` the last with a value), and put the case in a group the other cell contradicts.
    Repeated columns that agree wherever both have a value read as one."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(columns):
        if name:
            positions.setdefault(name.casefold(), []).append(i)
    for where in (found for found in positions.values() if len(found) > 1):
        for row in cells:
            values = {i: parse_cell(row[i], columns[i]) for i in where if i < len(row)}
            given = {i: v for i, v in values.items() if v is not None}
            if len(set(map(str, given.values()))) > 1:
                (a, first), (b, second) = list(given.items())[:2]
                raise DataError(f"attribute table {path} has the column {columns[a]!r} twice (columns {a + 1} and "
                                f"{b + 1}), and the row of {row[0]!r} gives {first!r} in one and {second!r} in the "
                                "other; keep one of the two columns")


def without_leading_zeros(key: str) -> str:
    """``patient007`` -> ``patient7``, ``007`` -> ``7``: the numbers of an id as values."""
    return re.sub(r"(?<![\d.])0+(?=\d)", "", key)


def key_aliases(keys: Iterable[str]) -> dict[str, list[str]]:
    """The keys that are file names or paths by their file stem (``img\\c001.png``, ``/data/img/c001.png``
    -> ``c001``), for cases a table names by a path of another machine (Windows' backslashes, another
    root) or by a file of another type (``c001.jpg`` for the ``c001.png`` case), which matched nothing.
    ``row_for`` takes the one key of a stem whose path agrees with the case's (``same_file``)."""
    found: dict[str, list[str]] = {}
    for key in keys:
        parts = path_parts(key)
        stem = file_stem(parts[-1]) if parts else ""
        if stem and stem != key:
            found.setdefault(stem, []).append(key)
    return found


def path_parts(path: str) -> list[str]:
    """The folders and file of a path written with either separator."""
    return [part for part in re.split(r"[\\/]", path) if part]


def same_file(key: str, rel_path: str) -> bool:
    """Whether a table's path ``key`` names the case at ``rel_path``, file types aside: the shorter of the
    two paths ends the longer ("benign/x.png" is not "malignant/x.png", "x.jpg" may be either)."""
    a, b = path_parts(file_stem(key)), path_parts(file_stem(rel_path))
    n = min(len(a), len(b))
    return n > 0 and a[-n:] == b[-n:]


DATA_FILE_TYPE = re.compile(r"\.(nii\.gz|nii|mha|mhd|nrrd|nhdr|dcm|h5|npz|npy|png|jpe?g|tiff?|bmp|gif)$", re.IGNORECASE)


def file_stem(name: str) -> str:
    """``x.nii.gz`` -> ``x``, ``benign (1).png`` -> ``benign (1)``: the name without the type of an image or
    volume file; other names as they are (an id ``1.2.840.1`` is no file ``1.2.840``)."""
    return DATA_FILE_TYPE.sub("", name)


def attribute_columns(path: str | Path) -> list[str]:
    """The column names of an attribute table, as ``read_attribute_table`` names them; [] for a table it
    cannot read (whose own reading says why)."""
    try:
        return [name.strip() for name in user_csv_rows(Path(path))[1].fieldnames or [] if name and name.strip()]
    except (OSError, csv.Error, DataError):
        return []


def table_keyed_by(root: Path, column: str, levels_up: int) -> AttributeTable | None:
    """The first CSV in ``root`` or in one of the ``levels_up`` folders above it holding ``column`` (in any letter
    case and spacing), keyed by it: a release's table of subjects lies beside its top folder, which need not be
    the folder given (M&Ms' ``Training/Labeled/``); None where there is none."""
    wanted = " ".join(column.split()).lower()
    for folder in [root, *Path(root).resolve().parents][: levels_up + 1]:
        for path in sorted(folder.glob("*.csv")):
            key = next((c for c in attribute_columns(path) if " ".join(c.split()).lower() == wanted), None)
            if key is not None:
                return read_attribute_table(path, key=key)
    return None


SEPARATORS = (",", ";", "\t")
UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def user_text(path: Path) -> str:
    """The text of a list or table a user saved, in the encodings spreadsheets and editors write:
    UTF-8 (with or without the byte-order mark), UTF-16 with its mark (Excel's "Unicode Text", and
    PowerShell's default), else Windows-1252 (Excel's plain "CSV" on Windows), which is said once,
    as its accented letters could be meant otherwise. OSError is the caller's to report."""
    data = path.read_bytes()
    if data.startswith(UTF16_MARKS):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as err:
            raise DataError(f"cannot read {path}: damaged UTF-16 text ({err.reason} at byte {err.start})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        say_once(f"{path} is not UTF-8; read as Windows-1252 (Excel's CSV); save it as UTF-8 if its accents "
                 "come out wrong", key=f"cp1252-{path}")
        return data.decode("cp1252", errors="replace")


def user_csv_rows(path: Path) -> tuple[str, csv.DictReader]:
    """(separator, rows) of a CSV / TSV a user saved (``user_text``, ``column_separator``). A first line
    ``sep=;`` (Excel's hint, kept by tables made to open in it) names the separator and is no header:
    read as one, the table's columns were "sep=" and nothing matched."""
    text = user_text(path)
    first, _, rest = text.partition("\n")
    hint = EXCEL_SEPARATOR_HINT.fullmatch(first.rstrip("\r"))
    if hint:
        separator, text = ("\t" if hint["sep"] == "\\t" else hint["sep"]), rest
    else:
        separator = column_separator(first)
    # strict: a quote opened and never closed is an error, not a cell swallowing the rest of the table
    return separator, csv.DictReader(io.StringIO(text, newline=""), delimiter=separator, strict=True)


def csv_error_text(err: Exception, reader: csv.DictReader | None, read_to: int) -> str:
    """What the csv reader found wrong, and on which line: its messages name no line, and "unexpected end
    of data" is a double quote opened in the row after line ``read_to`` (the end of the last whole row)
    and never closed."""
    if not isinstance(err, csv.Error) or reader is None:
        return str(err)
    if "unexpected end of data" in str(err):
        return f"a double quote opened on line {read_to + 1} is never closed; close it, or remove the quote"
    return f"{err} (line {reader.reader.line_num})"


def refuse_cells_beyond_header(path: Path, columns: int, extra: list[str] | None, line: int, separator: str) -> None:
    """A row with more filled cells than the header has columns: a value holding the separator unquoted
    ("Paris, France") splits into two cells and shifts every later cell into the next column, so the
    case would be read with another column's values (another group) unseen. Empty cells beyond the header,
    as a spreadsheet pads rows with, are no values and pass."""
    filled = [cell for cell in extra or [] if cell.strip()]
    if filled:
        shown = "(a tab)" if separator == "\t" else repr(separator)
        raise DataError(f"{path}: line {line} has {columns + len(extra or [])} cells but the header names {columns} "
                        f"columns (beyond them: {', '.join(map(repr, filled[:3]))}); a value holding the separator "
                        f"{shown} must be in double quotes")


# Excel's hint line; one a table was saved again with trails separators ("sep=;;;")
EXCEL_SEPARATOR_HINT = re.compile(r'"?sep=(?P<sep>[,;\t|]|\\t)"?[,;\t|]*', re.IGNORECASE)


def column_separator(header: str) -> str:
    """The column separator the header row uses: whichever of a comma, a semicolon (what Excel writes
    where the comma is the decimal mark) or a tab (TSV) it holds most of; the comma on a tie."""
    return max(SEPARATORS, key=header.count)


def _key_column(columns: list[str], records: list[dict[str, str]], path: Path) -> str:
    """The id column: the first of ``KEY_COLUMNS`` the table has (in any spelling: "Patient ID") whose ids are
    unique, else the first of them it has (its duplicate is then refused, named); without one, the first
    column whose ids are unique, else the first column. Unique first: a table of images
    keys them by image, and the patient or lesion column beside it repeats (HAM10000's ``lesion_id,
    image_id,...``: its first column was taken and refused for a lesion's second image)."""
    if not columns:
        raise DataError(f"attribute table {path} is empty; it needs a header row and an id column")
    spelled = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in columns}  # "Patient ID", "PatientID": patient_id
    named = [spelled[name.replace("_", "")] for name in KEY_COLUMNS if name.replace("_", "") in spelled]
    unique = [c for c in named or columns if _unique_ids([(r.get(c) or "").strip() for r in records])]
    return (unique or named or columns)[0]


def _unique_ids(ids: list[str]) -> bool:
    present = [i for i in ids if i]
    return bool(present) and len(set(present)) == len(present)


@dataclass(frozen=True)
class Bins:
    """Left-closed bins of one continuous attribute: edges (25, 30) -> "<25", "25-30", ">=30"."""

    column: str
    edges: tuple[float, ...]

    @property
    def labels(self) -> list[str]:
        e = [_fmt(x) for x in self.edges]
        middle = [f"{a}-{b}" for a, b in zip(e, e[1:])]
        return [f"<{e[0]}", *middle, f">={e[-1]}"]

    def label(self, value: Any) -> str | None:
        """The bin of a value; None for a missing or non-numeric value, or a top-coded one the bins split."""
        if value is None or isinstance(value, bool):
            return None
        try:
            x = float(value)
        except (TypeError, ValueError):
            return None
        if math.isnan(x):
            return None
        if isinstance(value, AtLeast) and not self.holds_all_from(x):
            return None
        return self.labels[sum(x >= edge for edge in self.edges)]

    def holds_all_from(self, low: float) -> bool:
        """Whether every number from ``low`` up falls in one bin: a top-coded value ("90+") is only binned
        when its bin does not depend on how far above ``low`` it lies (under age:60,95 it may be either)."""
        return low >= self.edges[-1]


def _fmt(x: float) -> str:
    """An edge as its bin labels write it, in full: ``:g`` kept 6 digits, so an income edge of 1,000,000 read
    "1e+06", and edges 1000001 and 1000002 gave two bins one label, whose cases then formed one group."""
    return str(int(x)) if x.is_integer() else repr(x)


def parse_bins(spec: str) -> Bins:
    """'bmi:25,30' -> Bins('bmi', (25.0, 30.0)); 'age:60' -> "<60", ">=60"."""
    column, sep, edges_text = spec.partition(":")
    try:
        edges = tuple(float(x) for x in edges_text.split(",") if x.strip())
    except ValueError:
        edges = ()
    finite = all(math.isfinite(e) for e in edges)  # "nan" and "inf" parse as floats but bin nothing apart
    if not sep or not column.strip() or not edges or not finite or list(edges) != sorted(set(edges)):
        raise FewsamError(f"bad bin spec {spec!r}: write COLUMN:EDGE[,EDGE...] with increasing "
                          "finite edges, e.g. 'bmi:25,30' or 'age:60'")
    return Bins(column.strip(), edges)


DEFAULT_BINS = {"age": Bins("age", (60.0,)), "bmi": Bins("bmi", (25.0, 30.0))}


def default_bins(column: str | None) -> Bins | None:
    """The default bins of ``column`` in any letter case ("Age", "BMI", as tables head them), named as the
    column is; None for a column without. Looked up as written, "Age" had none and was grouped by value,
    a group per age in a small test set."""
    bins = DEFAULT_BINS.get(column.strip().casefold()) if column else None
    return None if bins is None else Bins(column, bins.edges)


def attribute_value(attributes: Mapping[str, Any], column: str) -> Any:
    """A case's value of the attribute ``column``, its name in any letter case: sources spell one attribute
    differently (ACDC's Info.cfg ``Group``, the SSL4MIS patient_info.csv ``group``), and ``--group-by group``
    is to group both. Where several keys match, the last with a value is taken:
    merged attributes keep the order of their sources, and the later source wins (``attributes_of``)."""
    wanted = column.casefold()
    values = [value for key, value in attributes.items() if key.casefold() == wanted and value is not None]
    return values[-1] if values else None


def group_of(attributes: dict[str, Any], column: str, bins: Bins | None = None) -> str | None:
    """The group a case falls in for ``column``: its bin if binned, else the value as text.

    ``column`` is matched in any letter case (``attribute_value``). Continuous ``age`` and ``bmi`` (any letter
    case) use ``default_bins`` (age at 60 years; BMI 25/30) unless ``bins`` is given. Missing values give None
    (the case is left out of group metrics), and so does -1 (``is_unknown_code``). Text is taken in Unicode's
    composed form: an accented letter is stored as one character or as a letter and its accent, which look
    alike, print alike, and were two groups, each with part of the cases.
    """
    value = attribute_value(attributes, column)
    bins = bins or default_bins(column)
    if value is None or is_unknown_code(value, bins):
        return None
    if bins is not None and (not isinstance(value, str) or CODE_WITH_LEADING_ZEROS.fullmatch(value)):
        return bins.label(value)  # an age written "07" is still 7 years when binned
    if isinstance(value, AtLeast):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return unicodedata.normalize("NFC", str(value))  # "Café" typed (NFC) or pasted from a Mac (NFD): one group


UNKNOWN_CODE = -1


def is_unknown_code(value: Any, bins: Bins | None = None) -> bool:
    """Whether ``value`` is -1, the code FairSeg's files (and the tables exported from them) give an
    unknown attribute: as a group it would be one more population in ES-Dice's spread and the worst-group
    gap, and binned it fell among the youngest ("<60" for an unknown age). Bins with an edge at -1 or
    below (--bins zscore:-2,0,2) measure something that can be -1, so there it is a value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != UNKNOWN_CODE:
        return False
    return bins is None or bins.edges[0] > UNKNOWN_CODE


def table_sources(dataset: Any) -> list[str]:
    """The files of the attribute tables joined to ``dataset`` (its own and ``--attributes``)."""
    return [table.source for table in getattr(dataset, "tables", ())]


def no_attributes_hint(cases: str, tables: list[str] | tuple[str, ...] | Any) -> str:
    """What to say where the cases have no attribute at all: without a table, where to give one; with
    one, that it holds no value for these cases (its rows lack them, or their cells are empty)."""
    if not tables:
        return "none (add --attributes CSV)"
    return f"none: no {cases} has a value in any column of {', '.join(tables)}"
