"""Group attributes from tables as people keep them, and the group numbers drawn from them.

Covers: a hand-written header with spaces after the commas ("case, sex") names the columns without
them; -1, the code FairSeg gives an unknown attribute, is no group (and no "<60" age), except under
bins that reach -1; age or BMI bands written as text ("<40", "40-59", "60+") come in the order of
their bounds; ids match with their numbers unpadded (Excel drops leading zeros, patient1 names
patient001); an Excel hint line "sep=;" names the separator and is no header; the report counts the
HD95 and ASD values an empty prediction leaves out of a group's mean; a table of images whose first
column repeats (HAM10000's lesion_id) is keyed by its unique image column; Excel's #N/A, pandas'
<NA> and NIH's "Unknown or Not Reported" are no value; DICOM ages ('045Y') are years in an age
column, while an id or code of that look ('042M') stays as written; a table keyed by image paths of
another machine (backslashes, another root, another file type) matches the cases whose paths end
alike; the id column may be spelled "Patient ID", and where the named one matches no case, the
column that matches most is used; `info` counts -1 as no value; site codes that differ only in
leading zeros ("01", 1) are refused as two spellings of one group; "Age" and "BMI" get the default
bins of age and bmi; compare takes a null subject as none; a table of images whose named id column
(patient) repeats is keyed by the column naming the images; the report orders the groups of all its
runs together.
"""

import numpy as np
import pytest

from conftest import write_png_cases

from fewsam.data import group_of, parse_bins, read_attribute_table
from fewsam.evaluate import evaluate
from fewsam.metrics import group_order

# Every label is rows 0-1 of a 10x10 image; FULL is perfect (Dice 1), HALF covers one row (Dice 2/3).
LABEL = np.zeros((10, 10), np.uint8)
LABEL[:2] = 1
HALF = np.zeros((10, 10), np.uint8)
HALF[0] = 1


def group_dice(result):
    return {name: (g["n"], round(g["mean"]["dice"], 4)) for name, g in result["groups"].items()}


def study(tmp_path, cases):
    """(data root, predictions) of ``cases``: id -> prediction, with no attribute of their own."""
    return write_png_cases(tmp_path, LABEL, {cid: ({"note": "x"}, pred) for cid, pred in cases.items()})


def test_header_spaces_name_no_column(tmp_path):
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = tmp_path / "demographics.csv"
    table.write_text("case, sex , age\na, F, 70\nb, M, 40\nc, M, 45\n")
    assert read_attribute_table(table).rows["a"] == {"sex": "F", "age": 70}
    result = evaluate(pred, root, "test", "sex", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"F": (1, 1.0), "M": (2, round(2 / 3, 4))}


def test_minus_one_is_an_unknown_value(tmp_path):
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF, "d": HALF})
    table = tmp_path / "fairseg_attributes.csv"  # FairSeg's coding exported: -1 = unknown
    table.write_text("case;age;race\na;24,5;0\nb;-1;-1\nc;61;1\nd;70;1\n")
    by_age = evaluate(pred, root, "test", "age", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(by_age) == {"<60": (1, 1.0), ">=60": (2, round(2 / 3, 4))}
    assert by_age["missing_group_cases"] == ["img/b"]
    by_race = evaluate(pred, root, "test", "race", show_progress=False, attributes=table, n_boot=20)
    assert list(by_race["groups"]) == ["0", "1"] and by_race["missing_group"] == 1
    # bins reaching -1 measure something that can be -1 (a z-score): there it is a value
    assert group_of({"z": -1}, "z", parse_bins("z:-2,0,2")) == "-2-0"
    assert group_of({"z": -1.0}, "z", parse_bins("z:0.5")) is None


@pytest.mark.parametrize("names, order", [
    (["60+", "<40", "40-59"], ["<40", "40-59", "60+"]),
    ([">=30", "25-30", "<25"], ["<25", "25-30", ">=30"]),
    (["65+ years", "<18 years", "18-64 years"], ["<18 years", "18-64 years", "65+ years"]),
    (["site10", "site2"], ["site2", "site10"]),
    (["GE 3", "Siemens 1.5"], ["GE 3", "Siemens 1.5"]),  # no scale in common: natural order
])
def test_bands_written_as_text_come_in_order_of_their_bounds(names, order):
    assert group_order(names) == order


def test_evaluate_orders_text_bands(tmp_path):
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = tmp_path / "age_groups.csv"
    table.write_text("case,age_group\na,60+\nb,<40\nc,40-59\n")
    result = evaluate(pred, root, "test", "age_group", show_progress=False, attributes=table, n_boot=20)
    assert list(result["groups"]) == ["<40", "40-59", "60+"]


def test_numeric_ids_match_without_leading_zeros(tmp_path):
    """Excel saves an id column of digits as numbers: cases 001, 002, 010 have rows 1, 2, 10; and a
    table of patient1 ... names patient001."""
    root, pred = study(tmp_path, {"001": LABEL, "002": HALF, "010": HALF})
    table = tmp_path / "excel.csv"
    table.write_text("id,sex\n1,F\n2,M\n10,M\n")
    result = evaluate(pred, root, "test", "sex", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"F": (1, 1.0), "M": (2, round(2 / 3, 4))}
    assert result["missing_group"] == 0
    rows = read_attribute_table(_written(tmp_path / "ids.csv", "patient,sex\npatient1,F\np2,M\np02,F\n"))
    assert rows.row_for("patient001_frame01", "patient001") == {"sex": "F"}
    assert rows.row_for("p002", "p002") == {}  # p2 or p02: no guess


def test_excel_separator_hint_line_is_no_header(tmp_path):
    """Tables made for Excel start with ``sep=;``: it names the separator, the header follows."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = tmp_path / "excel_hint.csv"
    table.write_bytes("\ufeffsep=;\r\ncase;bmi\r\na;22,5\r\nb;27,5\r\nc;31,0\r\n".encode())
    assert read_attribute_table(table).rows["a"] == {"bmi": 22.5}
    result = evaluate(pred, root, "test", "bmi", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"<25": (1, 1.0), "25-30": (1, round(2 / 3, 4)), ">=30": (1, round(2 / 3, 4))}


def test_report_counts_the_distances_an_empty_prediction_leaves_out(tmp_path):
    """Group B's model missed the structure in one case: its HD95 is taken over the other case only,
    and the report says so rather than show B as close to the labels as A."""
    import json

    from fewsam.metrics import group_summary
    from fewsam.report import write_group_report

    def case(i, group, dice, hd95):
        return {"case": f"c{i}", "group": group,
                "per_class": {"fg": {"dice": dice, "iou": dice, "hd95": hd95, "asd": hd95}}}

    result = group_summary([case(1, "A", 0.9, 2.0), case(2, "A", 0.8, 2.0), case(3, "B", 0.0, None),
                            case(4, "B", 0.9, 2.0)], n_boot=20)
    group_b = result["groups"]["B"]
    assert group_b["mean"]["hd95"] == 2.0 and group_b["per_class"]["fg"]["hd95_missing"] == 1
    result.update(group_by="site", alpha=1.0, es_mode="sum", distance_unit="pixel")
    (tmp_path / "eval.json").write_text(json.dumps(result))
    md = write_group_report([tmp_path / "eval.json"], tmp_path / "report")["markdown"].read_text()
    assert "| B | 2 |" in md and "| 2.00 (1 n/a) | 2.00 (1 n/a) |" in md
    assert "| A | 2 |" in md and "(0 n/a)" not in md
    assert "the mean leaves those out" in md


def test_table_of_images_is_keyed_by_its_unique_image_column(tmp_path):
    """HAM10000's metadata: lesion_id first (a lesion has several images), then image_id."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = tmp_path / "HAM10000_metadata.csv"
    table.write_text("lesion_id,image_id,dx,age,gender\nHAM_1,a,nv,45.0,male\nHAM_1,b,nv,45.0,male\n"
                     "HAM_2,c,mel,70.0,female\n")
    assert read_attribute_table(table).key == "image_id"
    result = evaluate(pred, root, "test", "gender", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"female": (1, round(2 / 3, 4)), "male": (2, round(5 / 6, 4))}
    table.write_text("patient,image,sex\nP1,a.png,M\nP1,b.png,M\nP2,c.png,F\n")  # a patient's images
    assert read_attribute_table(table).key == "image"


def test_excel_and_pandas_no_value_cells_are_no_group(tmp_path):
    """Excel writes #N/A where a lookup found nothing, pandas <NA>, NIH's categories "Unknown or Not
    Reported": no value, not a group each."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF, "d": HALF})
    table = tmp_path / "lookup.csv"
    table.write_text("case,race,age\na,Asian,30\nb,#N/A,#N/A\nc,Black,<NA>\nd,Unknown or Not Reported,70\n")
    by_race = evaluate(pred, root, "test", "race", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(by_race) == {"Asian": (1, 1.0), "Black": (1, round(2 / 3, 4))}
    assert by_race["missing_group_cases"] == ["img/b", "img/d"]
    by_age = evaluate(pred, root, "test", "age", show_progress=False, attributes=table, n_boot=20)
    assert list(by_age["groups"]) == ["<60", ">=60"] and by_age["missing_group"] == 2


def test_dicom_ages_are_years(tmp_path):
    """Tables read from DICOM headers keep PatientAge as '045Y': binned at 60, not a group per age."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF, "d": LABEL})
    table = tmp_path / "headers.csv"
    table.write_text("case,age,device\na,045Y,001M\nb,063Y,001M\nc,071Y,002M\nd,018M,002M\n")
    assert read_attribute_table(table).rows["d"] == {"age": 1.5, "device": "002M"}  # an age in an age column only
    result = evaluate(pred, root, "test", "age", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"<60": (2, 1.0), ">=60": (2, round(2 / 3, 4))}


def test_patient_ids_that_read_like_dicom_ages_stay_ids(tmp_path):
    root, pred = write_png_cases(tmp_path, LABEL, {"a": ({"patient": "042M"}, LABEL), "b": ({"patient": "042M"}, HALF),
                                                   "c": ({"patient": "007F"}, HALF)})
    table = tmp_path / "patients.csv"
    table.write_text("patient,sex\n042M,M\n007F,F\n")
    result = evaluate(pred, root, "test", "sex", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"F": (1, round(2 / 3, 4)), "M": (2, round(5 / 6, 4))}
    assert {case["subject"] for case in result["cases"]} == {"042M", "007F"}


def test_table_keyed_by_paths_of_another_machine(tmp_path):
    """Image paths as a Windows tool or another root wrote them, or the file of another type."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF, "d": HALF})
    table = tmp_path / "paths.csv"
    table.write_text("image,site\nimg\\a.png,1\nC:\\study\\img\\b.png,1\n/home/me/study/img/c.png,2\nd.jpg,2\n")
    result = evaluate(pred, root, "test", "site", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"1": (2, round(5 / 6, 4)), "2": (2, round(2 / 3, 4))}
    # a path of another folder is another case: benign\x.png is not malignant/x.png
    rows = read_attribute_table(_written(tmp_path / "busi.csv", "image,age\nbenign\\x.png,40\nmalignant\\x.png,70\n"))
    assert rows.row_for("malignant/x", "malignant/x", "malignant/x.png") == {"age": 70}
    assert rows.row_for("normal/x", "normal/x", "normal/x.png") == {}


def _written(path, text):
    path.write_text(text)
    return path


def test_ids_in_a_column_of_another_name(tmp_path):
    """A first column numbering the rows, the images named in a column of the user's language; and an
    id column spelled "Patient ID"."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = tmp_path / "tabelle.csv"
    table.write_text("Nr;Bild;Geschlecht\n1;a.png;w\n2;b.png;m\n3;c.png;m\n")
    result = evaluate(pred, root, "test", "Geschlecht", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"m": (2, round(2 / 3, 4)), "w": (1, 1.0)}
    spelled = _written(tmp_path / "spelled.csv", "Site,Patient ID,sex\nX,p1,F\nY,p2,M\n")
    assert read_attribute_table(spelled).key == "Patient ID"


def test_info_counts_minus_one_as_no_value(tmp_path):
    from fewsam.info import dataset_info

    root, _ = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = _written(tmp_path / "fairseg.csv", "case,age,race\na,-1,-1\nb,45,0\nc,70,1\n")
    columns = dataset_info(root, table)["attributes"]["columns"]
    assert columns["age"]["range"] == [45, 70] and columns["age"]["cases_with_value"] == 2
    assert columns["race"]["cases_with_value"] == 2


def test_site_codes_differing_only_in_leading_zeros_are_refused(tmp_path):
    """Site "01" in some rows and 1 in others (Excel stripped the cells it was given to edit): one site."""
    from fewsam.errors import DataError

    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = _written(tmp_path / "sites.csv", "case,site\na,01\nb,1\nc,02\n")
    with pytest.raises(DataError, match="site has the values '01' and '1', which differ only in leading zeros"):
        evaluate(pred, root, "test", "site", show_progress=False, attributes=table, n_boot=20)


def test_age_and_bmi_headed_in_capitals_get_their_default_bins(tmp_path):
    """Tables head them "Age" and "BMI": a few whole ages were grouped by value, a group per age."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = _written(tmp_path / "demographics.csv", "case,Age,BMI\na,34,22\nb,61,31\nc,70,33\n")
    by_age = evaluate(pred, root, "test", "Age", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(by_age) == {"<60": (1, 1.0), ">=60": (2, round(2 / 3, 4))} and by_age["bins"] == ["<60", ">=60"]
    by_bmi = evaluate(pred, root, "test", "BMI", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(by_bmi) == {"<25": (1, 1.0), ">=30": (2, round(2 / 3, 4))}


def test_compare_takes_a_null_subject_as_none(tmp_path):
    """An evaluation whose records say "subject": null (another tool's, or edited by hand): each case is
    its own subject, as the bootstrap takes it, not one subject "None" of every case."""
    import json

    from fewsam.compare import compare_runs
    from fewsam.metrics import summarise

    def evaluation(path, scores):
        cases = [{"case": f"c{i}", "subject": None, "group": None,
                  "per_class": {"fg": {"dice": d, "iou": d, "hd95": 1.0, "asd": 1.0}}} for i, d in enumerate(scores)]
        path.write_text(json.dumps({**summarise(cases), "split": "test", "distance_unit": "pixel"}))
        return path

    a = evaluation(tmp_path / "a.json", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    b = evaluation(tmp_path / "b.json", [0.95, 0.85, 0.75, 0.65, 0.55, 0.45])
    assert compare_runs(a, b)["n"] == 6


def test_table_of_images_with_a_patient_column_first(tmp_path):
    """A row per image, the patient first (named, so taken as the id, and repeating), the image in a
    column of another name: keyed by the image column, not refused for the patient's second image."""
    root, pred = study(tmp_path, {"a": LABEL, "b": HALF, "c": HALF})
    table = _written(tmp_path / "per_image.csv", "patient,aufnahme,sex\nP1,a.png,F\nP1,b.png,F\nP2,c.png,M\n")
    result = evaluate(pred, root, "test", "sex", show_progress=False, attributes=table, n_boot=20)
    assert group_dice(result) == {"F": (2, round(5 / 6, 4)), "M": (1, round(2 / 3, 4))}
    from fewsam.errors import DataError

    with pytest.raises(DataError, match="two rows for patient='P1'"):  # no column names the cases: said as it was
        evaluate(pred, root, "test", "sex", show_progress=False, n_boot=20,
                 attributes=_written(tmp_path / "bad.csv", "patient,sex\nP1,F\nP1,F\nP2,M\n"))


def test_report_orders_the_groups_of_all_runs_together(tmp_path):
    """The first run lacks site 2 (its cases had no value then): the report's groups are 1, 2, 10."""
    import json

    from fewsam.metrics import group_summary
    from fewsam.report import write_group_report

    def evaluation(path, sites):
        cases = [{"case": f"c{i}", "group": site, "per_class": {"fg": {"dice": 0.8, "iou": 0.7, "hd95": 1.0,
                                                                          "asd": 1.0}}} for i, site in enumerate(sites)]
        result = group_summary(cases, n_boot=20)
        result.update(group_by="site", alpha=1.0, es_mode="sum", distance_unit="pixel", bins=None)
        path.write_text(json.dumps(result))
        return path

    before = evaluation(tmp_path / "before.json", ["1", "10", None, "1", "10"])
    after = evaluation(tmp_path / "after.json", ["1", "10", "2", "1", "10"])
    md = write_group_report([before, after], tmp_path / "report")["markdown"].read_text()
    difference = md[md.index("| group | after - before |"):]
    rows = [line.split(" | ")[0] for line in difference.splitlines()[2:5]]
    assert rows == ["| 1", "| 2", "| 10"]
