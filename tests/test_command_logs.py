"""Long commands besides fit keep a log file: `embed` appends to CACHE/<model folder>/embed.log, `predict`
writes .OUT.predict.log beside --out while it runs and moves it into OUT as predict.log with its predictions
(the command, host, notices, progress lines and how it ended); each says where its log is as it starts."""

import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fewsam import cli
from fewsam.cli import app
from fewsam.errors import Stopped

QUICK_FIT = ["--labeled-cases", "1", "--views", "1", "--steps", "2", "--val-every", "2", "--batch-size", "2",
             "--no-test-mirroring", "--no-sam-refinement", "--precision", "fp32", "--quiet"]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_embed_appends_its_command_progress_and_counts_to_the_cache_log(tiny_sam_phantom, tmp_path):
    cache = tmp_path / "cache"
    command = ["embed", "--data", str(tiny_sam_phantom), "--cache", str(cache), "--precision", "fp32"]
    for _ in range(2):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
    [log] = cache.glob("*/embed.log")
    lines = read(log).splitlines()
    starts = [line for line in lines if ": fit" not in line and "fewsam 0" in line and "embed" in line]
    assert len(starts) == 2, lines  # appended: one header per command
    assert any("host: " in line for line in lines)
    assert any(" embed " in line and "(100%)" in line for line in lines)  # progress lines, also without a terminal
    done = [line.split(" ", 2)[2] for line in lines if "done:" in line]
    # the first command encodes the 3 phantom cases' 6 slices, the second finds them all
    assert done == ["done: 3 cases, 6 slices encoded, 0 found in the cache",
                    "done: 3 cases, 0 slices encoded, 6 found in the cache"]


def test_predict_writes_its_log_beside_the_predictions_and_nothing_when_it_fails(tiny_sam_phantom, tmp_path):
    cache, run, pred = str(tmp_path / "cache"), tmp_path / "run", tmp_path / "pred"
    result = CliRunner().invoke(app, ["fit", "fewshot", "--data", str(tiny_sam_phantom), "--cache", cache, "--out",
                                      str(run), *QUICK_FIT])
    assert result.exit_code == 0, result.output
    predict = ["predict", str(run), "--data", str(tiny_sam_phantom), "--cache", cache, "--precision", "fp32",
               "--split", "val"]
    result = CliRunner().invoke(app, [*predict, "--out", str(pred)])
    assert result.exit_code == 0, result.output
    log = read(pred / "predict.log")
    assert "host: " in log and " predict " in log and log.rstrip().endswith(f"done: 1 predictions in {pred}")
    # evaluate reads the folder as before: the log is not taken for a prediction
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(tiny_sam_phantom), "--split",
                                      "val"])
    assert result.exit_code == 0, result.output

    # --overwrite replaces the log with the new command's; a failed predict leaves no folder and no log
    result = CliRunner().invoke(app, [*predict, "--out", str(pred), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert read(pred / "predict.log").count("done:") == 1
    (run / "checkpoint_best.pt").write_bytes(b"damaged")
    result = CliRunner().invoke(app, [*predict, "--out", str(tmp_path / "failed")])
    assert result.exit_code != 0 and not (tmp_path / "failed").exists()


def test_a_running_predict_can_be_followed_where_it_says_and_a_stopped_one_leaves_its_log_there(
        tiny_sam_phantom, tmp_path, monkeypatch, caplog):
    """predict.log was written in the hidden staging folder, whose name nobody was told, so a long predict
    could not be followed, and Ctrl-C removed it with the predictions: the reason it stopped was lost."""
    import logging

    from fewsam import predict as predicting

    cache, run, pred = str(tmp_path / "cache"), tmp_path / "run", tmp_path / "pred"
    result = CliRunner().invoke(app, ["fit", "fewshot", "--data", str(tiny_sam_phantom), "--cache", cache, "--out",
                                      str(run), *QUICK_FIT])
    assert result.exit_code == 0, result.output
    running = tmp_path / ".pred.predict.log"
    seen: list[str] = []
    predict_case_file = predicting.predict_case_file

    def first_case_then(stop: bool):
        def predicted(*args, **kwargs):
            rel = predict_case_file(*args, **kwargs)
            seen.append(read(running))  # followed while predict runs, --out still to come
            assert not pred.exists()
            if stop:
                signal.raise_signal(signal.SIGINT)
            return rel
        return predicted

    command = ["predict", str(run), "--data", str(tiny_sam_phantom), "--cache", cache, "--precision", "fp32",
               "--split", "train", "--out", str(pred)]
    monkeypatch.setattr(predicting, "predict_case_file", first_case_then(stop=True))
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cli._stop_on_signals()
    try:
        with caplog.at_level(logging.INFO, logger="fewsam"), pytest.raises(Stopped) as stopped:
            CliRunner().invoke(app, command)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert f"predict log: {running} (moved to {pred / 'predict.log'} at the end)" in caplog.messages
    assert "host: " in seen[0] and " predict " in seen[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pred.predict.log", "cache", "data", "run"]
    assert read(running).splitlines()[-1].endswith(" interrupted")  # no --out, no staging: the log, told where
    assert cli.stopped_message(stopped.value, ["fewsam", *command]).endswith(f"; its log: {running}")

    monkeypatch.setattr(predicting, "predict_case_file", first_case_then(stop=False))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert not running.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "pred", "run"]
    log = read(pred / "predict.log")
    assert log.startswith(seen[0]) and seen[1] in log  # the stopped run's lines, then the whole of this one's
    assert log.count("host: ") == 2 and log.rstrip().endswith(f"done: 2 predictions in {pred}")


def test_a_log_written_beside_the_staged_files_moves_in_with_them_or_stays_where_it_was(tmp_path):
    """predict's log joins its predictions as they move in; when they cannot (a folder in the way), it stays
    beside --out, where the user was told it is, instead of going with the removed staging folder."""
    from fewsam.atomic import staged_folder
    from fewsam.errors import RunError

    out, log = tmp_path / "pred", tmp_path / ".pred.predict.log"
    (out / "b.h5").mkdir(parents=True)
    log.write_text("the whole run\n")
    with pytest.raises(RunError, match="is in the way"):
        with staged_folder(out, overwrite=True, joining={"predict.log": log}) as staging:
            (staging / "b.h5").write_text("new")
    assert read(log) == "the whole run\n" and sorted(p.name for p in tmp_path.iterdir()) == [log.name, "pred"]
    (out / "b.h5").rmdir()
    with staged_folder(out, overwrite=True, joining={"predict.log": log}) as staging:
        (staging / "b.h5").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.h5", "predict.log"] and not log.exists()
    assert read(out / "predict.log") == "the whole run\n"


def test_a_thread_started_by_the_work_logs_to_its_log_and_not_to_another_works(tmp_path):
    """A thread a fit starts (to load data, say) writes to that fit's log alone when started in a copy of its
    context, even while a fit on another thread has its log open; a thread started plainly, which opened
    no log, writes to every open one, so that none of its lines is lost."""
    import contextvars
    import threading

    from fewsam.progress import log_to, record

    def on_a_thread(say: str, context: contextvars.Context | None = None) -> None:
        thread = threading.Thread(target=record if context is None else context.run,
                                  args=(say,) if context is None else (record, say))
        thread.start()
        thread.join()

    other_open, work_done = threading.Event(), threading.Event()

    def other_work() -> None:
        with log_to(tmp_path / "other.log"):
            other_open.set()
            work_done.wait(timeout=30)

    other = threading.Thread(target=other_work)
    other.start()
    assert other_open.wait(timeout=30)
    try:
        with log_to(tmp_path / "work.log"):
            record("from the work")
            on_a_thread("from the work's thread", contextvars.copy_context())
            on_a_thread("from a plain thread")
    finally:
        work_done.set()
        other.join()
    logged = {name: [line.split(" ", 2)[2] for line in read(tmp_path / name).splitlines()]
              for name in ("work.log", "other.log")}
    assert logged == {"work.log": ["from the work", "from the work's thread", "from a plain thread"],
                      "other.log": ["from a plain thread"]}


@pytest.mark.parametrize("error, told", [(KeyboardInterrupt(), "interrupted"),
                                         (Stopped(signal.SIGINT), "interrupted"),  # Ctrl-C in the command line
                                         (Stopped(signal.SIGTERM), "terminated (SIGTERM)"),
                                         (RuntimeError("disk gone"), "stopped: RuntimeError: disk gone")])
def test_a_command_log_says_how_the_command_ended(tmp_path, error, told):
    from fewsam.progress import command_log

    with pytest.raises(type(error)):
        with command_log(tmp_path / "x.log", "embed"):
            raise error
    assert read(tmp_path / "x.log").splitlines()[-1].endswith(told)


def test_an_embed_stopped_by_ctrl_c_says_so_at_the_end_of_the_cache_log(tiny_sam_phantom, tmp_path, monkeypatch):
    """The command line turns Ctrl-C into ``Stopped``, not a KeyboardInterrupt: embed.log ended on its last
    progress line, as if the command were still running (or had been killed), where fit.log says it stopped."""
    from fewsam.cache import EmbeddingCache

    cache = tmp_path / "cache"
    put = EmbeddingCache.put

    def put_then_ctrl_c(self, *args, **kwargs):
        put(self, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(EmbeddingCache, "put", put_then_ctrl_c)
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cli._stop_on_signals()
    try:
        with pytest.raises(Stopped):
            CliRunner().invoke(app, ["embed", "--data", str(tiny_sam_phantom), "--cache", str(cache), "--precision",
                                     "fp32", "--quiet"])
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    [log] = cache.glob("*/embed.log")
    assert read(log).splitlines()[-1].endswith(" interrupted")


def test_a_log_file_that_cannot_be_written_is_said_once_and_the_work_goes_on(tmp_path, caplog):
    """A full disk under a long embed called from Python: every progress line printed logging's "--- Logging
    error ---" and a traceback (the command line hides those, and then said nothing of the lost log)."""
    import errno
    import logging

    from fewsam.progress import command_log, record

    with caplog.at_level(logging.INFO, logger="fewsam"), command_log(tmp_path / "x.log", "embed") as path:
        handler = next(h for h in logging.getLogger("fewsam.log_file").handlers
                       if getattr(h, "baseFilename", None) == str(path))

        def full(*_):
            raise OSError(errno.ENOSPC, "No space left on device")

        handler.stream.write = full
        for i in range(3):
            record(f"line {i}")
    told = [m for m in caplog.messages if "could not write to the log file" in m]
    assert told == [f"could not write to the log file {path} ([Errno 28] No space left on device); the work goes on "
                    "without it"]


def test_each_log_names_the_decoder_path_its_own_work_took(tmp_path, monkeypatch):
    """A prediction under bf16 autocast, then one in fp32, in one process (a notebook, the test suite): the
    second's log said "prompt decoder under bf16 autocast", the first path said in the process."""
    from torch import nn

    from fewsam import progress
    from fewsam.models.acceleration import BF16_AUTOCAST, FP32_FAST, prepare_decoder

    monkeypatch.setattr(progress, "_said", {})
    for name, acceleration in (("bf16", BF16_AUTOCAST), ("fp32", FP32_FAST)):
        with progress.notices_collected(), progress.command_log(tmp_path / f"{name}.log", "predict"):
            prepare_decoder(nn.Linear(2, 2), acceleration)
    assert "prompt decoder under bf16 autocast" in read(tmp_path / "bf16.log")
    fp32 = read(tmp_path / "fp32.log")
    assert "prompt decoder in fp32" in fp32 and "bf16" not in fp32.split("host:")[1].split("\n", 1)[1]
