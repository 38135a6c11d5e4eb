import pytest

from fewsam.errors import RunError
from fewsam.runs import config_differences, prepare_run_dir, read_config


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


def test_the_refusal_names_the_settings_that_differ(tmp_path):
    stored = {"method": "fewmatch", "precision": "fp32-openvino", "fewmatch": {"steps": 400, "threshold": 0.9}}
    prepare_run_dir(tmp_path / "run", stored)
    asked = {"method": "fewmatch", "precision": "fp32", "fewmatch": {"steps": 800, "threshold": 0.9}}
    with pytest.raises(RunError, match=r'fewmatch.steps: 400 -> 800; precision: "fp32-openvino" -> "fp32"'):
        prepare_run_dir(tmp_path / "run", asked)


def test_a_run_of_another_method_is_named_as_such(tmp_path):
    prepare_run_dir(tmp_path / "run", {"method": "supervised", "supervised": {"steps": 2}})
    with pytest.raises(RunError, match=r"run holds a supervised run, not a fewshot one; fit into another --out"):
        prepare_run_dir(tmp_path / "run", {"method": "fewshot", "model": "litemedsam", "fewshot": {"steps": 2}})


def test_config_differences_lists_added_and_removed_keys_and_caps_the_list():
    assert config_differences({"a": 1}, {"a": 1}) == ""
    assert config_differences({"a": 1}, {"b": 2}) == "a: 1 -> unset; b: unset -> 2"
    many = config_differences({f"k{i}": i for i in range(6)}, {f"k{i}": -i - 1 for i in range(6)})
    assert many.endswith("; and 2 more") and many.count("->") == 4


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a fewsam run"):
        prepare_run_dir(tmp_path / "stuff", {"method": "fewshot"})


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="fewsam fit"):
        read_config(tmp_path / "nope")


def test_a_run_older_than_an_option_resumes_with_its_default_and_not_with_another(tmp_path):
    """An upgrade that adds an option must not strand unfinished runs: the stored config lacks the
    option, which then counts as its default; asking another value is still refused."""
    old = {"method": "samatch", "samatch": {"steps": 1000}, "train": {"steps": 1000}}
    prepare_run_dir(tmp_path / "run", old)
    defaults = {"samatch": {"steps": 1000, "patience": 0}, "train": {"steps": 1000, "patience": 0},
                "other": {"x": 1}}
    now = {"method": "samatch", "samatch": {"steps": 1000, "patience": 0}, "train": {"steps": 1000, "patience": 0}}
    with pytest.raises(RunError, match="samatch.patience: unset -> 0"):
        prepare_run_dir(tmp_path / "run", now)  # without the defaults: refused, as before
    _, resuming = prepare_run_dir(tmp_path / "run", now, defaults)
    assert resuming and read_config(tmp_path / "run") == {**old, "fewsam_version": read_config(tmp_path / "run")
                                                          ["fewsam_version"]}  # config.json left as it was
    stricter = {**now, "samatch": {"steps": 1000, "patience": 4}}
    with pytest.raises(RunError, match="samatch.patience: 0 -> 4"):
        prepare_run_dir(tmp_path / "run", stricter, defaults)
    changed_old_option = {**now, "samatch": {"steps": 800, "patience": 0}}
    with pytest.raises(RunError, match="samatch.steps: 1000 -> 800"):
        prepare_run_dir(tmp_path / "run", changed_old_option, defaults)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_config_saved_by_a_windows_editor_is_read_and_not_called_corrupt(tmp_path, encoding):
    """config.json may be edited by hand (a data folder that moved); Notepad adds a byte-order mark or
    saves UTF-16, and the run was then called corrupt, with the advice to delete it and fit again."""
    config = {"method": "fewshot", "data": "D:\\données\\acdc", "seed": 0}
    run, resumed = prepare_run_dir(tmp_path / "run", config)
    assert not resumed
    text = (run / "config.json").read_text(encoding="utf-8").replace("\n", "\r\n")
    (run / "config.json").write_bytes(text.encode(encoding))
    assert read_config(run).items() >= config.items()
    assert prepare_run_dir(run, config)[1]
