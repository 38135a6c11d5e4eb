"""Group attributes: CSV joins, bins with written-out labels, FairSeg code tables."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data
from fewsam.data import group_of, open_dataset, parse_bins, read_attribute_table
from fewsam.data.attributes import attribute_value
from fewsam.data.readers.fairseg_npz import decode_attributes
from fewsam.errors import DataError, FewsamError


@pytest.mark.parametrize("value, expected", [
    (18.5, "<25"), (25, "25-30"), (29.99, "25-30"), (30, ">=30"), (41.0, ">=30"),
    (None, None), ("n/a", None), (float("nan"), None),
])
def test_bmi_bins(value, expected):
    bins = parse_bins("bmi:25,30")
    assert bins.labels == ["<25", "25-30", ">=30"]
    assert bins.label(value) == expected


def test_bins_of_large_edges_are_labelled_in_full_and_apart():
    """Edges of 7 digits or more were written to 6 (``:g``): 1000000 as "1e+06", and the two middle bins of
    income:1000000,1000001,1000002 had one label, so their cases fell in one group."""
    bins = parse_bins("income:1000000,1000001,1000002")
    assert bins.labels == ["<1000000", "1000000-1000001", "1000001-1000002", ">=1000002"]
    assert group_of({"income": 1000000.5}, "income", bins) != group_of({"income": 1000001.5}, "income", bins)
    assert parse_bins("ratio:0.1234567").labels == ["<0.1234567", ">=0.1234567"]


def test_age_bins_and_defaults():
    assert parse_bins("age:60").labels == ["<60", ">=60"]
    assert parse_bins(" age : 12.5, 60 ").labels == ["<12.5", "12.5-60", ">=60"]
    assert group_of({"age": 59.9}, "age") == "<60"
    assert group_of({"age": 60}, "age") == ">=60"
    assert group_of({"bmi": 27.3}, "bmi") == "25-30"
    assert group_of({"bmi": 27.3}, "bmi", parse_bins("bmi:27")) == ">=27"
    assert group_of({"group": "DCM"}, "group") == "DCM"
    assert group_of({"site": 3.0}, "site") == "3"
    assert group_of({"race": None}, "race") is None
    assert group_of({}, "race") is None


@pytest.mark.parametrize("spec", ["bmi", "bmi:", ":25", "bmi:30,25", "bmi:a,b", "bmi:25,25", "age:nan", "bmi:25,nan",
                                  "age:inf"])
def test_bad_bin_specs(spec):
    with pytest.raises(FewsamError, match="bad bin spec"):
        parse_bins(spec)


def test_table_key_detection_parsing_and_errors(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("site,patient,score,note\nA,p1,3,\nB,p2,4.5,NA\n")
    table = read_attribute_table(path)
    assert table.key == "patient"
    assert table.rows["p1"] == {"site": "A", "score": 3, "note": None}
    assert table.row_for("p2_frame01", "p2") == {"site": "B", "score": 4.5, "note": None}
    (tmp_path / "dup.csv").write_text("id,x\n1,a\n1,b\n")
    with pytest.raises(DataError, match="two rows"):
        read_attribute_table(tmp_path / "dup.csv")
    with pytest.raises(DataError, match="not found"):
        read_attribute_table(tmp_path / "none.csv")
    with pytest.raises(DataError, match="no column 'pid'"):
        read_attribute_table(path, key="pid")


def test_site_codes_with_leading_zeros_stay_the_users_codes(tmp_path):
    """'001' and '01' are two sites; as numbers both were group '1'."""
    path = tmp_path / "a.csv"
    path.write_text("patient,site,age\np1,001,07\np2,01,61\np3,1,0\np4,010,5\n")
    table = read_attribute_table(path)
    groups = [group_of(table.rows[p], "site") for p in ("p1", "p2", "p3", "p4")]
    assert groups == ["001", "01", "1", "010"]
    assert [group_of(table.rows[p], "age") for p in ("p1", "p2", "p3")] == ["<60", ">=60", "<60"]


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_table_separated_by_semicolons_or_tabs_is_read_as_meant(tmp_path, sep):
    """Excel saves "CSV" with semicolons where the comma is the decimal mark (most of Europe), and a
    TSV is a table too: either was read as one column named 'case;site;bmi' and matched no case."""
    path = tmp_path / "groups.csv"
    path.write_text(sep.join(["case", "site", "bmi"]) + "\n" + sep.join(["p1", "Hôpital A", "27,5"]) + "\n",
                    encoding="utf-8")
    table = read_attribute_table(path)
    bmi = 27.5 if sep == ";" else "27,5"  # a semicolon table's comma is its decimal mark; a TSV's may not be
    assert table.key == "case" and table.rows == {"p1": {"site": "Hôpital A", "bmi": bmi}}


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16", "utf-8-sig"])
def test_a_table_saved_by_excel_in_its_encodings_is_read(tmp_path, encoding):
    """Excel's "CSV" on Windows is Windows-1252 and its "Unicode Text" UTF-16 with tabs: both were
    refused as not UTF-8, though the user's file is fine."""
    path = tmp_path / "groups.csv"
    sep = "\t" if encoding == "utf-16" else ","
    path.write_bytes(f"case{sep}site\r\np1{sep}Hôpital A\r\n".encode(encoding))
    assert read_attribute_table(path).rows == {"p1": {"site": "Hôpital A"}}


def test_a_list_file_saved_as_utf16_or_cp1252_names_its_cases(tmp_path):
    from fewsam.data.readers.common import read_lines

    for encoding in ("utf-16", "cp1252"):
        path = tmp_path / f"val_{encoding}.list"
        path.write_bytes("# Kliniken Zürich\r\npatient001\r\npatient002\r\n".encode(encoding))
        assert read_lines(path) == ["patient001", "patient002"]


def test_acdc_patient_info_and_extra_csv(tmp_path):
    extra = tmp_path / "extra.csv"
    extra.write_text("patient,scanner,group\npatient002,1.5T,OVERRIDE\n")
    ds = open_dataset(shared_data("acdc"), attributes_csv=extra)
    attrs = ds.load("patient002_frame01").attributes
    assert attrs["scanner"] == "1.5T" and attrs["group"] == "OVERRIDE" and attrs["bmi"] == 27.34
    assert "scanner" not in ds.load("patient028_frame01").attributes
    assert group_of(attrs, "bmi") == "25-30"


def test_png_attributes_by_file_name(tmp_path):
    extra = tmp_path / "extra.csv"
    extra.write_text("image,age\nbenign (1).png,48\n")
    ds = open_dataset(shared_data("busi"), attributes_csv=extra)
    assert ds.load("benign/benign (1)").attributes == {"pathology": "benign", "n_masks": 1, "age": 48}


def test_csv_matching_no_case_is_an_error(tmp_path):
    extra = tmp_path / "extra.csv"
    extra.write_text("patient,x\nsomeone,1\n")
    with pytest.raises(DataError, match="matches a case"):
        open_dataset(shared_data("acdc"), attributes_csv=extra)


@pytest.mark.parametrize("raw, image_key, expected", [
    ({"race": 0, "gender": 0, "age": 65.0}, "slo_fundus", {"race": "Asian", "gender": "female", "age": 65.0}),
    ({"race": 2, "age": 65.0}, "slo_fundus", {"race": "White", "age": 65.0}),
    ({"race": 2, "age": 65.0}, "fundus_slo", {"race": "Asian", "age": 65.0}),
    ({"race": 3, "age": 23725}, "slo_fundus", {"race": "Black", "age": 65.0}),
    ({"race": 2, "age": 21900}, "slo_fundus", {"race": "Asian", "age": 60.0}),
    ({"hispanic": 1, "marriagestatus": 4}, "slo_fundus", {"ethnicity": "Hispanic", "maritalstatus": "legally separated"}),
    ({"language": 2, "maritalstatus": -1, "ethnicity": -1}, "slo_fundus",
     {"language": "other", "maritalstatus": None, "ethnicity": None}),
    ({"pid": "X9", "gender": -1}, "slo_fundus", {"pid": "X9", "gender": None}),
])
def test_fairseg_codes(raw, image_key, expected):
    assert decode_attributes(raw, image_key) == pytest.approx(expected)


def test_an_attribute_is_found_in_any_letter_case_the_later_source_winning():
    """Info.cfg's ``Group`` and a joined table's ``group`` are one attribute; merged, the table's comes later."""
    assert group_of({"Group": "DCM", "Height": 172.0}, "group") == "DCM"
    assert attribute_value({"Group": "DCM", "group": "HCM"}, "GROUP") == "HCM"
    assert attribute_value({"Group": "DCM", "group": None}, "group") == "DCM"
    assert attribute_value({"Group": "DCM"}, "phase") is None


def test_an_attribute_table_given_as_a_folder_is_told_so(tmp_path):
    """A folder was "not found", though it is there: the message says what it is and what to give."""
    with pytest.raises(DataError, match="is a folder; give the CSV file in it"):
        read_attribute_table(tmp_path)


def test_an_h5_whose_image_is_a_group_is_told_so(tmp_path):
    """An h5 holding 'image' as a group was said to have no 'image' dataset while listing 'image' among its keys."""
    import h5py

    from fewsam.data.readers.acdc_h5 import h5_dataset

    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as f:
        f.create_group("image").create_dataset("data", data=np.zeros((2, 2)))
    with h5py.File(path, "r") as f, pytest.raises(DataError, match="'image' is a group of \\['data'\\], not an array"):
        h5_dataset(f, "image", path)
