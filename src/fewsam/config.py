"""One source of defaults: config dataclasses whose fields carry their help and their limits.

Light on purpose (no torch): the command line builds its options from these classes.

Every method's settings are a frozen dataclass whose fields are made with ``option(...)``. The
dataclass is the only place a default is written: ``fewsam fit METHOD`` builds its options from
the fields (``cli.py``), the Python API takes the dataclass itself, and ``RUN/config.json``
records ``asdict`` of it, so the three cannot disagree. Limits and choices are checked in
``__post_init__``, before any work, with one line that names the option.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import inspect
import math
import numbers
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from fewsam.errors import DataError, FewsamError

DEFAULT_CACHE = "~/.cache/fewsam"  # the embedding cache, shared by every command
PRECISIONS = ("auto", "fp32", "fp32-openvino", "mixed-openvino", "bf16-openvino")  # ``fewsam.models.precision``, ``.acceleration``
DEFAULT_PRECISION = "auto"  # the fastest choice within cosine 0.999 (encoder) and Dice 0.005 (end to end) of fp32
PRECISION_HELP = ("auto: mixed-openvino on CPUs with bf16 instructions, else fp32-openvino where OpenVINO loads, "
                  "else fp32 (it says which, once). fp32: PyTorch, the exact reference (bit-identical runs). "
                  "fp32-openvino: encoder compiled, 1.3-2x, cosine 1.0000 to fp32; the U-Net student in "
                  "channels-last layout. mixed-openvino (CPUs with avx512_bf16 / amx_bf16): the encoder's attention "
                  "stages in bf16, ~2.7x, cosine 0.9994. bf16-openvino: the whole encoder in bf16, ~4x but cosine "
                  "~0.9987; decoder and student under bf16 autocast.")


# Seeds are 32-bit, as numpy's and most tools' are: torch takes at most 64 bits and the loops seed
# per step with seed + step, so a larger --seed would overflow in torch.manual_seed mid-fit.
MAX_SEED = 2**32 - 1

# Learning rates: far above any recipe's (AdamW 1e-3, SGD 0.01), and within float32, which torch's
# optimisers compute in: --lr 1e300 ended the fit's first step in a traceback from inside AdamW.
MAX_LR = 10.0

PATIENCE_HELP = ("Stop once this many validations in a row score no higher than the best so far (0: run every "
                 "step); the best weights so far are kept, so a fit that has stopped improving ends sooner.")


class ConfigError(FewsamError):
    """An option outside its range or choices."""


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None, choices: Sequence[str] | None = None, flag: str | None = None,
           cli: bool = True, none_means: str | None = None) -> Any:
    """A config field: its default, its help, and the values it accepts.

    ``min``/``max`` are inclusive bounds, ``above`` an exclusive lower bound (a learning rate
    must be > 0); ``flag`` overrides the CLI spelling (e.g. ``"--sam/--no-sam"``); ``cli=False``
    keeps a field out of the command line (tuples, architecture details); ``none_means``: what a
    None default stands for, which ``--help`` shows as "[default: ...]" (it cannot show None).
    """
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": tuple(choices) if choices else None,
            "flag": flag, "cli": cli, "none_means": none_means}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable")
    return field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    """The CLI spelling of a field: ``box_margin`` -> ``--box-margin``."""
    return "--" + name.replace("_", "-")


def listed(names: Sequence[str]) -> str:
    """["--a", "--b", "--c"] -> "--a, --b and --c": the options a message names."""
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


# True while the command line runs a command (``cli_names``): messages name every field by its flag. A
# Python caller is told a flag where it reads as the field (``--labeled-cases``, ``labeled_cases=``), the
# field where it does not: ``run (--out)``, and ``channels`` for a field the command line does not offer.
_CLI_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("cli_names", default=False)


def cli_names() -> contextvars.Token:
    """Name fields by their CLI flags in this context (until ``_CLI_NAMES.reset(token)``)."""
    return _CLI_NAMES.set(True)


def argument_name(name: str) -> str:
    """An entry point's argument ``name`` as the user gave it: ``--ray-workers`` on the command line,
    ``ray_workers`` from Python, where a flag names nothing the caller typed."""
    return flag_name(name) if _CLI_NAMES.get() else name


def cli_flag(f: Any) -> str:
    """Field ``f``'s command-line flag (``--no-sam`` style flags: the first spelling)."""
    flag = f.metadata.get("flag")
    return flag.split("/")[0] if flag else flag_name(f.name)


def option_name(f: Any) -> str:
    """How the user names field ``f``: its CLI flag; from Python, a field without a flag by its name, one
    whose flag is spelled otherwise by both."""
    spelled = cli_flag(f)
    if _CLI_NAMES.get():
        return spelled
    if not f.metadata.get("cli", True):
        return f.name
    return spelled if spelled == flag_name(f.name) else f"{f.name} ({spelled})"


def given_option_name(f: Any, value: Any) -> str:
    """How the user spelled field ``f`` set to ``value``: ``--no-noisy`` for a switch turned off, else
    ``option_name``."""
    flag = f.metadata.get("flag")
    if flag and "/" in flag and isinstance(value, bool):
        on, off = flag.split("/")
        return on if value else off
    return option_name(f)


# What a config field accepts, by its declared type. The command line converts every option, but a
# Python caller (``FitOptions(seed=1.5)``, ``FewShotConfig(steps="400")``, ``FitOptions(seed=None)``,
# ``FitOptions(val_split=3)``) would otherwise meet a TypeError from deep inside the fit. Text and
# path fields take either (a Path for --cache or a list file is fine); None only where the declared
# type allows it ("int | None": None means "not set").
FIELD_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "int": (numbers.Integral, "a whole number"),
    "float": (numbers.Real, "a number"),
    "bool": (bool, "True or False"),
    "str": ((str, os.PathLike), "text"),
    "Path": ((str, os.PathLike), "a path"),
}


def declared_type(f: Any) -> str:
    """The field's type as written (``"int | None"``)."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")


def optional(f: Any) -> bool:
    """Whether the field takes None (its type says ``| None``)."""
    return declared_type(f).endswith(" | None")


def check_type(f: Any, value: Any) -> None:
    """Refuse ``value`` for a field declared ``int``, ``float``, ``bool``, ``str`` or ``Path`` (or that or
    None) that is not of that kind; a bool is no number here, and None is refused where the type has no None.
    A ``tuple[int, ...]`` or ``tuple[float, float]`` field takes a tuple (or list) of such items, that many."""
    declared = declared_type(f).removesuffix(" | None")
    if value is None:
        what = FIELD_TYPES[declared][1] if declared in FIELD_TYPES else "a tuple"
        if not optional(f) and (declared in FIELD_TYPES or tuple_items(declared)):
            raise ConfigError(f"{option_name(f)} must be {what}, not None")
        return
    items = tuple_items(declared)
    if items is not None:
        _check_tuple(f, value, *items)
    elif declared in FIELD_TYPES and not _of_kind(value, declared):
        raise ConfigError(f"{option_name(f)} must be {FIELD_TYPES[declared][1]}, not {value!r}")


def tuple_items(declared: str) -> tuple[str, int | None] | None:
    """The item type and count of a declared ``tuple[int, ...]`` (count None) or ``tuple[float, float]``
    (count 2); None for any other type."""
    if not (declared.startswith("tuple[") and declared.endswith("]")):
        return None
    parts = [part.strip() for part in declared[len("tuple["):-1].split(",")]
    if len(parts) == 2 and parts[1] == "...":
        return parts[0], None
    return (parts[0], len(parts)) if len(set(parts)) == 1 else None


def _of_kind(value: Any, declared: str) -> bool:
    """Whether ``value`` is of the ``declared`` kind; an empty (or blank) text is no path: ``Path("")`` is
    the working folder, which the caller never named (an unset variable, an empty form field)."""
    kind = FIELD_TYPES[declared][0]
    if kind is bool:
        return isinstance(value, bool)
    if declared == "Path" and isinstance(value, str) and not value.strip():
        return False
    return isinstance(value, kind) and not isinstance(value, bool)


def _check_tuple(f: Any, value: Any, item: str, count: int | None) -> None:
    """A tuple field (the U-Net's channels, an augmentation range) holds ``count`` items of type ``item``:
    a single number or a text item would otherwise fail inside the network or the augmentation."""
    what = FIELD_TYPES.get(item, (object, item))[1]
    many = f"{count} items, each" if count else "items, each"
    right = isinstance(value, (tuple, list)) and (count is None or len(value) == count) and \
        all(_of_kind(v, item) for v in value if item in FIELD_TYPES)
    if not right:
        raise ConfigError(f"{option_name(f)} must be a tuple of {many} {what}, not {value!r}")


Entry = TypeVar("Entry", bound=Callable[..., Any])


def checked_arguments(function: Entry) -> Entry:
    """``function`` (an entry point of the Python API) refuses an argument its annotation does not allow
    with one ConfigError naming it: None for a path, a number for a split or a cache folder was a
    TypeError or AttributeError from deep inside. Annotations made of ``str``, ``Path``, ``int``,
    ``float``, ``bool`` and ``None`` are checked, as config fields are (``FIELD_TYPES``); others are not."""
    signature = inspect.signature(function)
    kinds = {name: parts for name, parameter in signature.parameters.items()
             if (parts := _annotation_parts(parameter.annotation)) is not None}

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = bound_arguments(signature, args, kwargs, function.__name__)
        for name, value in bound.arguments.items():
            if name in kinds and not _allowed(value, kinds[name]):
                raise ConfigError(f"{function.__name__}: {name} must be {_described(kinds[name])}, not {value!r}")
            if name in kinds and "Path" in kinds[name]:
                bound.arguments[name] = home_expanded(value)
        return function(*bound.args, **bound.kwargs)

    return checked  # type: ignore[return-value]


def home_expanded(path: Any) -> Any:
    """``path`` with a leading ``~`` made the home folder, as the shell and the command line
    (``cli.expand_home``) do; any other value as it is. A Python caller's "~/runs/fs" made a folder
    named "~" in the working folder, where the data "~/data" was found at home."""
    if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith("~"):
        return os.path.expanduser(path) if isinstance(path, str) else Path(path).expanduser()
    return path


def bound_arguments(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str) -> inspect.BoundArguments:
    """``args`` and ``kwargs`` bound to ``signature`` (of the entry point or config class ``name``); a keyword
    it does not take, one it needs and lacks, or too many positional arguments is one ConfigError naming the
    argument, the nearest name it does take (``labelled_cases``: ``labeled_cases``) and all of them, where
    Python's TypeError named none of them."""
    try:
        return signature.bind(*args, **kwargs)
    except TypeError as err:
        takes = ", ".join(signature.parameters)
        unknown = next((key for key in kwargs if key not in signature.parameters), None)
        if unknown is None:
            raise ConfigError(f"{name}: {err}; it takes {takes}") from None
        nearest = difflib.get_close_matches(unknown, list(signature.parameters), n=1, cutoff=0.6)
        hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
        raise ConfigError(f"{name} has no argument {unknown!r}{hint}; it takes {takes}") from None


def _annotation_parts(annotation: Any) -> list[str] | None:
    """``"str | Path | None"`` -> ["str", "Path", "None"]; None when a part is no plain kind (a Literal, a class)."""
    if not isinstance(annotation, str):
        return None
    parts = [part.strip() for part in annotation.split("|")]
    return parts if all(part in FIELD_TYPES or part == "None" for part in parts) else None


def _allowed(value: Any, parts: list[str]) -> bool:
    if value is None:
        return "None" in parts
    if "Path" in parts and not _of_kind(value, "Path"):  # "str | Path": text, but not the empty path
        return False
    return any(_of_kind(value, part) for part in parts if part != "None")


def _described(parts: list[str]) -> str:
    kinds = [part for part in parts if part != "None"]
    what = "a path" if "Path" in kinds else " or ".join(dict.fromkeys(FIELD_TYPES[part][1] for part in kinds))
    return what + (" or None" if "None" in parts else "")


def raised_loss_weights(cfg: Any, names: Sequence[str]) -> list[str]:
    """The options among ``names`` (fields of ``cfg`` that weigh a term of the training loss) set above their
    default, as the user typed them with their value (``--lambda-u 1e+06``): a non-finite loss names these
    first, as the likelier cause than the learning rate or the data."""
    known = {f.name: f for f in fields(cfg)} if cfg is not None and hasattr(cfg, "__dataclass_fields__") else {}
    raised = [known[name] for name in names if name in known and getattr(cfg, name) > field_default(known[name])]
    return [f"{option_name(f)} {getattr(cfg, f.name):g}" for f in raised]


def check_value(f: Any, value: Any) -> None:
    """Refuse ``value`` for field ``f`` when it breaks the field's type or limits (None = "not set": allowed
    where the type says ``| None``)."""
    meta, name = f.metadata, option_name(f)
    if not meta:
        return
    choices = meta.get("choices")
    if choices and value not in choices and not (value is None and optional(f)):
        raise ConfigError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
    check_type(f, value)
    for number in value if isinstance(value, (tuple, list)) else (value,):
        _check_limits(name, meta, number)


LARGEST_WHOLE_NUMBER = 2**63 - 1  # numpy and torch count in 64 bits: a larger int ends in an OverflowError


def _check_limits(name: str, meta: Any, value: Any) -> None:
    """A number within the field's limits (each item of a tuple field); anything else is left alone."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {value}")
    if isinstance(value, int) and abs(value) > LARGEST_WHOLE_NUMBER:
        raise ConfigError(f"{name} must be at most {LARGEST_WHOLE_NUMBER} in size (64 bits), not {value}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{name} must be at least {meta['min']}, not {value}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{name} must be at most {meta['max']}, not {value}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ConfigError(f"{name} must be greater than {meta['above']}, not {value}")


# Folders typed as text whose leading "~" is the home folder, as for the fields typed Path; not --cache,
# whose default "~/.cache/fewsam" is kept as written (the cache expands it) so that it reads as the default.
HOME_TEXT_FIELDS = ("teacher",)

def _as_declared(f: Any, value: Any) -> Any:
    """``value`` of field ``f`` as the rest of fewsam reads it: a Path given for a text field (a list file as
    --val-split, a cache folder) as its text, which config.json records and a resumed fit compares (a Path
    there was a TypeError from json); a leading "~" of a path the home folder (``home_expanded``)."""
    declared = declared_type(f).removesuffix(" | None")
    if declared == "str" and isinstance(value, os.PathLike):
        value = os.fspath(value)
    return home_expanded(value) if declared == "Path" or f.name in HOME_TEXT_FIELDS else value


# True while a config is read back from a run folder (``Config.from_json``): see ``Config.check_together``.
_READING_RECORD: contextvars.ContextVar[bool] = contextvars.ContextVar("reading_record", default=False)


class _CheckedCall(type):
    """Making a config (``FitOptions(labelled_cases=1)``) refuses arguments it does not take naming them
    (``bound_arguments``), where the dataclass's own ``__init__`` raised a TypeError naming none of its
    options. On the call, not in ``__new__``: unpickling and copying make the object without arguments."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        bound_arguments(_init_signature(cls), args, kwargs, cls.__name__)
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True)
class Config(metaclass=_CheckedCall):
    """Base of every config dataclass: validates each field against its ``option`` limits."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(f, getattr(self, f.name))
            object.__setattr__(self, f.name, _as_declared(f, getattr(self, f.name)))
        if not _READING_RECORD.get():
            self.check_together()

    def check_together(self) -> None:
        """Refuse options that only make sense together with others (one that another option makes idle,
        so the fit would silently ignore it). Run when a config is made from the user's options, not when
        one is read back from a run folder: a run an older fewsam recorded still predicts and resumes."""

    def derived_record(self, seed: int) -> dict[str, Any]:
        """Settings derived from this config that RUN/config.json records beside it (e.g. the loop's)."""
        return {}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Config":
        """The config recorded in a run folder; lists become tuples, unknown keys are dropped, so
        runs written by an older or newer fewsam still load."""
        known = {f.name: f for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        reading = _READING_RECORD.set(True)
        try:
            return cls(**values)
        finally:
            _READING_RECORD.reset(reading)



@functools.cache
def _init_signature(cls: type) -> inspect.Signature:
    """The arguments config class ``cls`` takes: its dataclass ``__init__``'s, less ``self``."""
    signature = inspect.signature(cls.__init__)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


@dataclass(frozen=True)
class UnlabelledPoolConfig(Config):
    """Which unlabelled training slices a semi-supervised method learns from (FewMatch, SAM-Match,
    distill): one definition, so the three read the same pool from the same options."""

    unlabeled_limit: int | None = option(None, "Seeded subset of the unlabelled pool (fewer slices to encode and "
                                         "load).", min=1, none_means="the whole pool")
    unlabeled_split: str | None = option(None, "Split or list file whose training cases, and cases with no label "
                                         "at all (e.g. 'test': a folder's unlabelled images), form the unlabelled "
                                         "pool (default: every training case not labelled).")

def cli_fields(cls: type) -> list[Any]:
    """The fields of a config class that become command-line options, in declaration order."""
    return [f for f in fields(cls) if f.metadata.get("cli", False)]


def field_default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _required(help: str, default: Any = MISSING, flag: str | None = None) -> Any:
    """A field the CLI requires (``data`` may be None in Python for methods that read no data)."""
    return field(default=default, metadata={"help": help, "cli": True, "required": True, "flag": flag})


@dataclass(frozen=True)
class FitOptions(Config):
    """Data, budget, model and run options every method's fit takes (``fewsam fit METHOD --help``)."""

    run: Path = _required("Run folder to write, outside the data folder (resumed if it holds the same run).",
                          flag="--out")
    data: Path | None = _required("Dataset folder.", None)
    labeled_cases: int | None = option(None, "Labelled budget: every slice of the first N subjects of the "
                                       "dataset's budget order (give this or --labeled-slices).", min=1)
    labeled_slices: int | None = option(None, "Labelled budget: the first K slices of the budget order "
                                        "(give this or --labeled-cases).", min=1)
    labeled_images: int | None = option(None, "Alias of --labeled-cases for 2D image datasets.", min=1)
    annotated_slices_only: bool = option(False, "Volumes annotated on some slices only (the others left 0): only "
                                         "the slices whose label holds a class are labelled, the others join "
                                         "the unlabelled pool; validation volumes are scored on those slices.")
    val_split: str = option("val", "Split (or list file) used for model selection.")
    seed: int = option(0, "Seed: same seed, same data -> same weights.", min=0, max=MAX_SEED)
    model: str = option("litemedsam", "litemedsam | sam_vit_b | sam_vit_l | sam_vit_h | medsam")
    checkpoint: Path | None = option(None, "Weights file (required for SAM/MedSAM; LiteMedSAM's come with "
                                     "fewsam).", none_means="litemedsam's bundled weights")
    cache: str = option(DEFAULT_CACHE, "Embedding cache folder (a read-only one is read as it is, misses not "
                                       "kept; embed stops at a miss).")
    device: str = option("cpu", "cpu | cuda | cuda:N")
    precision: str = option(DEFAULT_PRECISION, PRECISION_HELP, choices=PRECISIONS)
    fair_attribute: str | None = option(None, "Group column for fair error-bound scaling of the loss "
                                        "(default: none, the loss is not scaled).")
    fair_gamma: float = option(1.0, "Fair scaling gamma (0 = unscaled loss).", min=0.0)
    fair_bins: str | None = option(None, "Bins of a continuous fair attribute, e.g. bmi:25,30 (default: age at 60, "
                                   "bmi at 25 and 30).", flag="--bins")
    attributes: Path | None = option(None, "CSV of group attributes by case/patient id (default: the attributes "
                                     "found with the data).")
    show_progress: bool = option(True, "Progress bars.", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_one_budget()
        self._check_fair_options()

    def _check_one_budget(self) -> None:
        """One labelled budget, refused up front naming the options as the user gave them: --labeled-images
        is --labeled-cases by another name, so a message naming only the latter would not match the
        command that was typed."""
        given = [name for name, value in (("--labeled-cases", self.labeled_cases),
                                          ("--labeled-images", self.labeled_images),
                                          ("--labeled-slices", self.labeled_slices)) if value is not None]
        if len(given) > 1:
            which = f"both {given[0]} and {given[1]}" if len(given) == 2 else f"all of {', '.join(given)}"
            raise DataError(f"give one labelled budget, not {which}: a number of cases "
                            "(--labeled-cases, or --labeled-images on 2D image datasets) or of slices (--labeled-slices)")

    def _check_fair_options(self) -> None:
        """--bins, --fair-gamma and --attributes (the table the groups come from) shape the scaling on
        --fair-attribute's column: given without it (or with an empty one) the fit would run unscaled
        and record a run the user did not ask for. Where --out holds an unscaled fit they are said to be
        unused and the fit resumes: a fewsam that took them alone recorded such a run, and the same command
        resumes it."""
        if self.fair_attribute is not None and not self.fair_attribute.strip():
            raise ConfigError("--fair-attribute names no column; give a group column (`fewsam info DATA` lists "
                              "them) or leave it out")
        if self.fair_attribute:
            return
        gamma_default = field_default(FitOptions.__dataclass_fields__["fair_gamma"])
        given = [name for name, set_ in (("--bins", self.fair_bins is not None),
                                         ("--fair-gamma", self.fair_gamma != gamma_default),
                                         ("--attributes", self.attributes is not None)) if set_]
        if given and self._resumes_an_unscaled_fit(given):
            return
        if given:
            verb, them = ("shape", "them") if len(given) > 1 else ("shapes", "it")
            raise ConfigError(f"{listed(given)} {verb} fair scaling on the --fair-attribute column, which is not given; add "
                              f"--fair-attribute COLUMN or leave {them} out")

    def _resumes_an_unscaled_fit(self, given: list[str]) -> bool:
        """Whether --out holds a fit without fair scaling, which the fair options ``given`` leave as it is
        (said once)."""
        from fewsam.progress import say_once
        from fewsam.runs import records_an_unscaled_fit

        if not records_an_unscaled_fit(self.run):
            return False
        verb = "are" if len(given) > 1 else "is"
        say_once(f"{listed(given)} {verb} not used: {self.run} holds a fit without --fair-attribute (its loss "
                 "unscaled), which resumes as it was recorded")
        return True

    @property
    def budget_cases(self) -> int | None:
        """--labeled-images (2D datasets: one image is one case) is --labeled-cases by another name."""
        return self.labeled_cases if self.labeled_images is None else self.labeled_images
