"""Faults a new user meets following the README literally, with the variations a real user makes:

- ``fewsam demo`` stopped part-way (Ctrl-C, SIGTERM) said "nothing partial was kept: run the same
  command again to start over", though the demo resumes its phantom and fit from --out; and the
  studio, which its own banner says to stop with Ctrl+C, said the same of a project whose labels
  are all kept;
- that stop line was broken at 80 columns (in a log, a pipe or a narrow terminal), its advice split
  over two lines, unlike every ``error:`` line;
- ``fewsam fit METHOD --help`` showed no default for --checkpoint, --cavity-rule and
  --unlabeled-limit, whose None defaults mean something (LiteMedSAM's weights, no rule, the whole
  pool), while the other such options say theirs;
- a U-Net fit (supervised, samatch, distill) on a CPU with bf16 instructions said "U-Net student
  under bf16 autocast, channels-last (this CPU has bf16 instructions; the prompt decoder gains too
  little from them)": the reason for keeping the decoder in fp32, given for the student;
- RUN/fit.log's first line gave the command unquoted (``--out rün 1``), so pasting it back into a
  shell, to resume the fit, ran another command;
- a note added to RUN/fit.log (or the log rotated, or saved by an editor) made predict refuse the
  whole run as damaged ("delete RUN and fit again"): the manifest hashed the text log, which predict
  never reads;
- ``fewsam report --overwrite`` into the folder of an earlier report of other classes (ACDC's RV,
  Myo, LV, then BUSI's lesion) left the earlier report's per-class plots beside the new report, as
  if they were its own;
- ``fewsam predict --refine-if-better`` on a run whose RUN/refinement.json was damaged (cut off,
  edited by hand) ended in a JSONDecodeError traceback, or, for a file that parsed but lacked a
  score, in a KeyError traceback after the predictions were written: the choice is now made again;
- fit, predict and evaluate on a dataset without a 'val' split (an index of train and test only),
  their split options left out, said "unknown split 'val' ...: use one of ... or a list file in that
  folder", naming neither the option to pass nor that 'val' was its default;
- ``fewsam info --data DIR``, spelt as every other command takes it (and as the hint for a folder
  inside a dataset says, "give the dataset's root: --data ROOT"), was refused: "No such option";
"""

from __future__ import annotations

import signal
import sys

import pytest
import typer
from typer.testing import CliRunner

from conftest import main_raising
from fewsam.cli import app
from fewsam.errors import Stopped
from fewsam.methods import REGISTRY


def stopped_line(monkeypatch, capsys, *argv: str, signum: int = signal.SIGINT) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["fewsam", *argv])
    code, lines = main_raising(monkeypatch, capsys, Stopped(signum))
    return code, " ".join(lines)


def test_a_stopped_demo_says_the_same_command_resumes_it(monkeypatch, capsys):
    code, line = stopped_line(monkeypatch, capsys, "demo", "--out", "d", signum=signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert "resume" in line and "nothing partial" not in line, line


def test_a_studio_stopped_with_ctrl_c_says_its_labels_are_kept(monkeypatch, capsys):
    code, line = stopped_line(monkeypatch, capsys, "studio", "--demo")
    assert code == 128 + signal.SIGINT
    assert "labels are kept" in line and "nothing partial" not in line and "start over" not in line, line


def test_the_stop_line_is_one_line_however_narrow_the_output(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fewsam", "predict", "run", "--data", "d" * 60, "--out", "p"])
    code, lines = main_raising(monkeypatch, capsys, Stopped(signal.SIGTERM))
    assert code == 128 + signal.SIGTERM
    assert len(lines) == 1 and lines[0].endswith("encodes only the rest"), lines


@pytest.mark.parametrize("method", list(REGISTRY))
def test_fit_help_says_what_every_unset_default_means(method):
    command = typer.main.get_command(app).commands["fit"].get_command(None, method)
    budget = ("--labeled-cases", "--labeled-slices", "--labeled-images")  # one of them is given
    for param in command.params:
        if param.default is None and not param.required and param.opts[0] not in budget:
            assert "default" in param.help, (param.opts[0], param.help)


def test_the_students_precision_note_gives_the_students_reason_and_the_decoders_its_own(monkeypatch, caplog):
    from test_supervised import TINY, tiny_sam

    from fewsam import progress
    from fewsam.methods.fewshot import PrototypeDecoder
    from fewsam.methods.student import build_unet
    from fewsam.models.acceleration import prepare_decoder, prepare_student, resolve_acceleration

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level("INFO", logger="fewsam")
    path = resolve_acceleration("auto", flags=frozenset({"avx512f", "avx512_bf16"}))
    prepare_student(build_unet(TINY, 4), path)
    prepare_decoder(PrototypeDecoder(tiny_sam(), 4), path)
    student, decoder = caplog.messages
    assert student == "U-Net student under bf16 autocast, channels-last (this CPU has bf16 instructions)"
    assert decoder == "prompt decoder in fp32 (this CPU has bf16 instructions, but it gains too little from them)"


def test_predict_says_the_decoder_path_of_the_run_without_an_empty_reason(monkeypatch, caplog):
    from test_supervised import tiny_sam

    from fewsam import progress
    from fewsam.methods.fewshot import PrototypeDecoder
    from fewsam.models.acceleration import acceleration_of_run, prepare_decoder

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level("INFO", logger="fewsam")
    path = acceleration_of_run({"acceleration": "bf16-autocast-student"}, flags=frozenset({"avx512f", "avx512_bf16"}))
    prepare_decoder(PrototypeDecoder(tiny_sam(), 4), path)
    assert caplog.messages == ["prompt decoder in fp32"]


def test_the_logged_command_runs_again_when_pasted_into_a_shell(tmp_path, monkeypatch):
    import shlex

    from fewsam.api import fit_log
    from fewsam.runs import TEXT_LOG

    argv = ["fit", "supervised", "--data", "my data", "--out", "rün 1", "--labeled-cases", "1"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/fewsam", *argv])
    with fit_log(tmp_path, "supervised"):
        pass
    header = (tmp_path / TEXT_LOG).read_text(encoding="utf-8").splitlines()[0]
    assert shlex.split(header.split(": ", 1)[1]) == ["fewsam", *argv], header


@pytest.mark.parametrize("older_manifest", [False, True])
def test_a_note_added_to_fit_log_leaves_the_run_usable(tmp_path, older_manifest):
    import json

    from fewsam.runs import BEST, CONFIG, MANIFEST, TEXT_LOG, _file_record, check_run, write_manifest

    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps({"method": "supervised"}))
    (run / BEST).write_bytes(b"weights")
    (run / TEXT_LOG).write_text("2026-01-01 00:00:00 supervised finished\n")
    write_manifest(run)
    if older_manifest:  # as fewsam wrote it before: the text log listed with its hash
        manifest = json.loads((run / MANIFEST).read_text())
        manifest["files"][TEXT_LOG] = _file_record(run / TEXT_LOG)
        (run / MANIFEST).write_text(json.dumps(manifest))
    with (run / TEXT_LOG).open("a") as log:
        log.write("my note: the best run of the week\n")
    assert check_run(run)["method"] == "supervised"
    (run / BEST).write_bytes(b"damaged")
    with pytest.raises(Exception, match="damaged"):
        check_run(run)


def test_a_report_written_over_an_earlier_one_leaves_none_of_its_plots(tmp_path):
    import json

    from fewsam.metrics import group_summary
    from fewsam.report import write_group_report

    def evaluation(name, classes):
        cases = [{"case": f"c{i}", "group": group,
                  "per_class": {c: {"dice": dice, "iou": dice / (2 - dice), "hd95": 2.0, "asd": 1.0} for c in classes}}
                 for i, (group, dice) in enumerate([("a", 0.9), ("a", 0.8), ("b", 0.6), ("b", 0.5)])]
        result = group_summary(cases, n_boot=20)
        result.update(group_by="group", alpha=1.0, es_mode="sum", distance_unit="pixel")
        (tmp_path / name).write_text(json.dumps(result))
        return tmp_path / name

    out = tmp_path / "report"
    write_group_report([evaluation("acdc.json", ["RV", "LV"])], out)
    (out / "my notes.txt").write_text("mine")
    write_group_report([evaluation("busi.json", ["lesion", "halo"])], out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["group_dice.png", "group_dice_halo.png", "group_dice_lesion.png",
                                                     "my notes.txt", "report.html", "report.md"]


@pytest.mark.parametrize("damaged", ["{bad", '{"refine": true}', "[]"])
def test_a_damaged_refinement_choice_is_decided_again(tmp_path, damaged):
    import json
    from types import SimpleNamespace

    import numpy as np
    from test_supervised import tiny_sam

    from fewsam.cache import EmbeddingCache
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.methods.samatch.refine import REFINEMENT, choose_refinement, recorded_refinement

    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2, seed=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "samatch", "data": str(data), "val_split": "val"}))
    (run / REFINEMENT).write_text(damaged)
    # a predictor whose refinement is perfect and whose student predicts nothing: refining wins
    predictor = SimpleNamespace(student=SimpleNamespace(values=[0, 1, 2, 3]),
                                predict_both=lambda case, slices: (np.zeros_like(case.label), case.label))
    choice = choose_refinement(run, predictor, EmbeddingCache(tmp_path / "cache", tiny_sam()), show_progress=False)
    assert choice["refine"] and choice["val_dice_refined"] == 1.0
    assert recorded_refinement(run) == choice == json.loads((run / REFINEMENT).read_text())


def test_a_dataset_without_the_default_split_names_the_option_to_pass(tmp_path):
    import numpy as np

    from conftest import write_png_cases
    from fewsam.data import open_dataset
    from fewsam.errors import DataError
    from fewsam.info import split_cases

    label = np.zeros((16, 16), np.uint8)
    label[4:10, 4:10] = 1
    data, pred = write_png_cases(tmp_path, label, {"a": ({"site": "x"}, label), "b": ({"site": "y"}, label)})
    dataset = open_dataset(data)
    with pytest.raises(DataError, match="has no 'val' split, which --val-split takes by default; pass --val-split "
                                        "with one of test, all"):
        split_cases(dataset, "val", "--val-split")
    assert split_cases(dataset, "test", "--split") == dataset.split("test")
    with pytest.raises(DataError, match="unknown split 'nope'"):  # a split the user typed: the reader's own line
        split_cases(dataset, "nope", "--split")
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(data), "--quiet"])
    assert result.exit_code != 0 and "which --split takes by default; pass --split" in str(result.exception)


def test_info_takes_the_dataset_as_data_or_as_the_data_option(tmp_path):
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
    given = CliRunner().invoke(app, ["info", str(data)])
    assert given.exit_code == 0, given.output
    as_option = CliRunner().invoke(app, ["info", "--data", str(data)])
    assert as_option.exit_code == 0 and as_option.output == given.output, as_option.output
    hinted = CliRunner().invoke(app, ["info", str(data / "imagesTr")])
    root = str(hinted.exception).rsplit("--data ", 1)[1]
    assert CliRunner().invoke(app, ["info", "--data", root]).output == given.output.replace(str(data), root)
    for args, says in ((["info"], "say which dataset"), (["info", str(data), "--data", str(data)], "once")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code != 0 and says in str(result.exception), result.output
