"""``python -m fewsam.distributed.launch [torchrun's options] fit METHOD ...``: torchrun for a fit,
with a user's mistake said in one ``error:`` line and exit code 2.

torchrun reports any process that exits non-zero as a crash: log lines of its own, then its own
traceback (``ChildFailedError``) and exit code 1, after the one line the fit printed. A missing
--data folder then read like a bug in fewsam. This launcher runs torchrun's own code with the same
options; when the processes stopped on a user error (exit code 2, which ``fewsam.cli.main`` gives
every rank for one), it says that error once and exits 2. Anything else is reported exactly as
torchrun reports it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

from fewsam.errors import FewsamError

USER_ERROR = 2  # the exit code of a user's mistake (``fewsam.cli.main``)
# torchrun's loggers that report a failed process as it happens ("failed (exitcode: 2)", "Sending
# process ... closing signal SIGTERM"): held, and said only when the failure was no user error.
AGENT_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api")
USAGE = "python -m fewsam.distributed.launch --nproc-per-node N fit METHOD ..."


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's options, the fewsam command) of ``argv``: the command starts at ``fit``, the one
    command that runs data-parallel; ``-m fewsam`` before it (torchrun's own spelling) is accepted."""
    if "fit" not in argv:
        raise FewsamError(f"give torchrun's options, then the fit to run: {USAGE}")
    at = argv.index("fit")
    launcher = argv[:at]
    if launcher[-2:] in (["-m", "fewsam"], ["--module", "fewsam"]):
        launcher = launcher[:-2]
    return launcher, argv[at:]


class _Held(logging.Filter):
    """Keeps a logger's records instead of printing them, to be printed later or dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextmanager
def held_agent_logs() -> Iterator[_Held]:
    """torchrun's failure logs held while the block runs (``AGENT_LOGGERS``)."""
    held = _Held()
    loggers = [logging.getLogger(name) for name in AGENT_LOGGERS]
    for logger in loggers:
        logger.addFilter(held)
    try:
        yield held
    finally:
        for logger in loggers:
            logger.removeFilter(held)


def replay(held: _Held) -> None:
    """Print the held records (once they are no longer held), as torchrun would have printed them."""
    for record in held.records:
        logging.getLogger(record.name).handle(record)


def _said_the_error(failure) -> bool:
    """Whether the process reached ``say_user_error``: it exited 2, or it left its message in its error
    file (written after rank 0 has printed the line) before torchrun terminated it."""
    return failure.exitcode == USER_ERROR or os.path.isfile(failure.error_file)


def _terminated_by_torchrun(failure) -> bool:
    """torchrun ends every other process with SIGTERM once one has failed: the process dies of the
    signal (-15) or, where fewsam's handler caught it, exits 128 + 15."""
    return failure.exitcode in (-signal.SIGTERM, 128 + signal.SIGTERM)


def user_error(failures: dict) -> str | None:
    """The message to say when the failed processes stopped on a user error: "" when rank 0 has said it
    already (every rank meets the mistake, rank 0 alone prints), the error another rank left in its
    error file otherwise; None when a process failed some other way (a crash, a signal of the user's).
    Under load a peer may still be checking the same options when the first rank exits 2, and
    torchrun terminates it: that process stopped on the same mistake, not on a fault of its own."""
    stopped = {rank: f for rank, f in failures.items() if f.exitcode == USER_ERROR}
    if not stopped or not all(rank in stopped or _terminated_by_torchrun(f) for rank, f in failures.items()):
        return None
    if 0 in failures and _said_the_error(failures[0]):
        return ""
    first = stopped[min(stopped)]
    if os.path.isfile(first.error_file) and first.message:
        return first.message
    return f"rank {min(stopped)} stopped on a user error (exit code {USER_ERROR})"


def stopped_by(signum: int) -> None:
    """Leave as the fit under one process leaves on Ctrl-C or SIGTERM (exit 128 + the signal), said once:
    torchrun stops its processes on the signal (rank 0 then says how the fit stopped and that the same
    command resumes it), and raised its own SignalException here, whose traceback followed that line."""
    raise SystemExit(128 + int(signum))


def main(argv: list[str] | None = None) -> None:
    """torchrun with ``argv`` (this process's arguments by default) and ``-m fewsam`` before the command."""
    from fewsam.cli import print_error

    argv = sys.argv[1:] if argv is None else argv
    if "fit" not in argv and {"-h", "--help"} & set(argv):  # torchrun's options, as torchrun --help lists them
        from torch.distributed.run import parse_args

        print(f"usage: {USAGE}; torchrun's options:")
        parse_args(["--help"])
    try:
        launcher, command = split_args(argv)
    except FewsamError as exc:
        print_error(str(exc))
        raise SystemExit(USER_ERROR) from None
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args([*launcher, "-m", "fewsam", *command])
    failed = None
    with held_agent_logs() as held:
        try:
            run(args)
        except ChildFailedError as exc:
            failed = exc
        except SignalException as exc:
            stopped_by(exc.sigval)
    message = None if failed is None else user_error(failed.failures)
    if message is None:
        replay(held)
        if failed is not None:
            raise failed
        return
    if message:
        print_error(message)
    raise SystemExit(USER_ERROR)

if __name__ == "__main__":
    main()
