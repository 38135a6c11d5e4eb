import pytest

from fewsam.errors import RunError
from fewsam.runs import prepare_run_dir, read_config


def test_new_run_then_resume_same_config(tmp_path):
    path, resuming = prepare_run_dir(tmp_path / "run", {"method": "fewshot", "lr": 1e-4})
    assert not resuming and read_config(path)["method"] == "fewshot"
    _, resuming = prepare_run_dir(tmp_path / "run", {"method": "fewshot", "lr": 1e-4, "device": "cuda"})
    assert resuming


def test_different_config_is_refused_and_kept(tmp_path):
    prepare_run_dir(tmp_path / "run", {"method": "fewshot", "lr": 1e-4})
    with pytest.raises(RunError, match="different configuration"):
        prepare_run_dir(tmp_path / "run", {"method": "fewshot", "lr": 1e-3})
    assert read_config(tmp_path / "run")["lr"] == 1e-4


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a fewsam run"):
        prepare_run_dir(tmp_path / "stuff", {"method": "fewshot"})


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="fewsam fit"):
        read_config(tmp_path / "nope")
