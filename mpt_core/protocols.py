"""How a baseline was measured: one complete ``Protocol`` per row, read from data.

A study row's protocol comes from the ``protocols.toml`` beside its CSV
(``baselines/study/protocols.toml``), layer over layer: ``[study]`` (what every table
shares), then ``[tableN]``, then each ``[models."<glob>"]`` whose glob matches the row's
model, then each ``[tableN.rows."<glob>"]`` whose glob matches ``<metric>:<test id>``
(``ppl:llama2-7b-wikitext2-svd_llm:0.15``), in file order. A layer that sets
``evaluation`` drops the ``ctx`` of the layers under it, and one that sets ``calib_set``
drops their other ``calib_*`` values, unless it sets them itself. Every value a layer sets
carries its source in the layer's ``sources`` table: the study's own words (``study ...``)
or ``unknown: <why>; <the value chosen and why>``.

A CPU-tier row's protocol is what its CSV states (the ``seqlen`` column, ``# windows:``)
plus the CPU tier's fixed settings. Both paths build it with ``Protocol.from_fields``: one
parser and one validation, and a bad or missing value is one BaselineError naming the file
and the key.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mpt_core.data import DATASETS, DOCUMENT_SETS
from mpt_core.errors import BaselineError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the same parser (pyproject.toml)
    import tomli as tomllib

PROTOCOLS_FILE = "protocols.toml"
EVALUATIONS = ("windowed", "llama-perplexity", "lm-eval", "throughput")
DTYPES = ("float16", "bfloat16", "float32")
SPLITS = ("train", "validation")
# What mpt draws each calibration set with (mpt_core.data): "documents" is the reference C4
# sampler (a random document longer than the window, a random slice of it); "stream" is the
# WikiText-2/PTB one (a random slice of the whole text, tokenized once).
SAMPLERS = {name: "documents" if name in DOCUMENT_SETS else "stream" for name in DATASETS}
NO_CALIBRATION = "none"
SOURCE_PREFIXES = ("study ", "unknown: ")

# The CPU tier's fixed settings (a CSV states only its seqlen and windows).
CPU_SEQLEN = 512
CPU_WINDOWS = 8
CPU_CALIBRATION = "ptb"  # its baselines calibrated on PTB valid (their CSVs' `# protocol:` lines)
# stated, not read from data.CALIBRATION_SPLITS: the protocol says what the baselines were
# made with, so code that drew from another split is caught by the numbers it changes
CPU_CALIBRATION_SPLIT = "validation"
CPU_CALIB_BATCH = 8  # engine.layerwise.CALIBRATION_BATCH (tests/test_protocols.py: equal)
CPU_EVAL_BATCH = 4  # evaluate.batching.CPU_BATCH (tests/test_protocols.py: equal)


class _Parsers:
    """Option parsers: each takes a value from TOML or a CSV header (text or number) and
    returns it parsed, or raises ValueError saying what is allowed."""

    @staticmethod
    def count(value) -> int:
        if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) <= 0:
            raise ValueError("must be a positive integer")
        return int(value)

    @staticmethod
    def seed(value) -> int:
        if isinstance(value, bool) or not str(value).strip().lstrip("-").isdigit():
            raise ValueError("must be an integer")
        return int(value)

    @staticmethod
    def count_or(word: str):
        def parse(value) -> int | None:
            if value == word:
                return None
            try:
                return _Parsers.count(value)
            except ValueError:
                raise ValueError(f'must be a positive integer or "{word}"') from None

        return parse

    @staticmethod
    def choice(*choices: str):
        def parse(value) -> str:
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return value

        return parse


_PARSERS = {
    "evaluation": _Parsers.choice(*EVALUATIONS),
    "ctx": _Parsers.count,
    "seqlen": _Parsers.count,
    "windows": _Parsers.count_or("all"),
    "dtype": _Parsers.choice(*DTYPES),
    "calib_set": _Parsers.choice(*SAMPLERS, NO_CALIBRATION),
    "calib_split": _Parsers.choice(*SPLITS),
    "calib_nsamples": _Parsers.count_or("method"),
    "calib_length": _Parsers.count,
    "calib_sampler": _Parsers.choice(*sorted(set(SAMPLERS.values()))),
    "calib_seed": _Parsers.seed,
    "calib_batch": _Parsers.count,
    "gptq_group": _Parsers.count_or("row"),
    "awq_group": _Parsers.count_or("row"),
    "eval_batch": _Parsers.count,
}
CALIBRATION_KEYS = tuple(key for key in _PARSERS if key.startswith("calib_") and key != "calib_set")


def parse_field(key: str, value, where: str):
    """One protocol value parsed, or a one-line BaselineError naming ``where`` and the key."""
    if key not in _PARSERS:
        raise BaselineError(f"{where}: unknown key {key!r}; protocol keys: {', '.join(_PARSERS)}")
    try:
        return _PARSERS[key](value)
    except ValueError as error:
        raise BaselineError(f"{where}: {key} = {value!r}: {error}") from None


@dataclass(frozen=True)
class Protocol:
    """Everything that decides a measured number besides the model and the spec."""

    evaluation: str  # windowed | llama-perplexity | lm-eval | throughput
    ctx: int | None  # llama-perplexity's context (-c); None for every other evaluation
    seqlen: int  # tokens per evaluated window (llama-perplexity: its ctx)
    windows: int | None  # evaluated windows; None: every window of the text
    dtype: str  # the dtype the model is loaded and run in
    calib_set: str  # the calibration data set, or "none"
    calib_split: str | None
    calib_nsamples: int | None  # None: each method's own default
    calib_length: int | None  # tokens per calibration window
    calib_sampler: str | None
    calib_seed: int | None
    calib_batch: int | None  # calibration windows per forward pass
    gptq_group: int | None  # GPTQ's group size when a spec gives none; None: one per row
    awq_group: int | None  # AWQ's, likewise
    eval_batch: int  # evaluation windows per forward pass
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def stage_defaults(self) -> dict:
        """What a row's stages take from this protocol where its spec states nothing
        (``pipeline.plan``): the calibration set, window count, seed and window length, and
        GPTQ's and AWQ's group size (None: the method's own default)."""
        calibrated = self.calib_set != NO_CALIBRATION
        return {
            "calib": self.calib_set if calibrated else None,
            "calib_split": self.calib_split if calibrated else None,
            "nsamples": self.calib_nsamples if calibrated else None,
            "seed": self.calib_seed if calibrated else None,
            "calib_length": self.calib_length if calibrated else None,
            "gptq_group": self.gptq_group,
            "awq_group": self.awq_group,
        }

    @classmethod
    def from_fields(cls, values: Mapping, where: str, sources: Mapping) -> Protocol:
        """A protocol from raw values (TOML or CSV header text) and a source for each;
        ``where`` names the file and entry in every error."""
        parsed = {key: parse_field(key, value, where) for key, value in values.items()}
        for key in _required(parsed):
            if key not in parsed:
                raise BaselineError(f"{where}: missing key {key!r}")
        _check_consistent(parsed, where)
        missing = [key for key in parsed if not str(sources.get(key, "")).strip()]
        if missing:
            raise BaselineError(f"{where}: {missing[0]} has no source")
        parsed.setdefault("ctx", None)
        for key in CALIBRATION_KEYS:
            parsed.setdefault(key, None)
        return cls(**parsed, sources=tuple((key, str(sources[key])) for key in values))

    def source(self, key: str) -> str:
        return dict(self.sources)[key]


def _required(parsed: dict) -> list[str]:
    keys = [key for key in _PARSERS if key != "ctx" and key not in CALIBRATION_KEYS]
    if parsed.get("evaluation") == "llama-perplexity":
        keys.append("ctx")
    if parsed.get("calib_set", NO_CALIBRATION) != NO_CALIBRATION:
        keys += CALIBRATION_KEYS
    return keys


def _check_consistent(parsed: dict, where: str) -> None:
    llama = parsed["evaluation"] == "llama-perplexity"
    if "ctx" in parsed and not llama:
        raise BaselineError(
            f"{where}: ctx is llama-perplexity's context; evaluation is {parsed['evaluation']}"
        )
    if llama and parsed["ctx"] != parsed["seqlen"]:
        raise BaselineError(
            f"{where}: ctx {parsed['ctx']} != seqlen {parsed['seqlen']}: under llama-perplexity "
            "the evaluated window is the context"
        )
    calibrated = parsed["calib_set"] != NO_CALIBRATION
    stray = [key for key in CALIBRATION_KEYS if key in parsed and not calibrated]
    if stray:
        raise BaselineError(f'{where}: {stray[0]} given with calib_set = "none"')
    if calibrated and parsed["calib_sampler"] != SAMPLERS[parsed["calib_set"]]:
        raise BaselineError(
            f"{where}: calib_sampler {parsed['calib_sampler']!r} for {parsed['calib_set']}: "
            f"mpt draws {parsed['calib_set']} with {SAMPLERS[parsed['calib_set']]!r}"
        )


@dataclass(frozen=True)
class _Layer:
    """One entry of the file: the values it sets and their sources."""

    values: dict
    sources: dict
    path: Path
    name: str  # [table7.rows."*-svd_llm:*"]

    @property
    def where(self) -> str:
        return f"{self.path} {self.name}"

    def over(self, below: dict, below_sources: dict) -> tuple[dict, dict]:
        values, sources = dict(below), dict(below_sources)
        dropped = []
        if "evaluation" in self.values:
            dropped.append("ctx")
        if "calib_set" in self.values:
            dropped += CALIBRATION_KEYS
        for key in dropped:
            values.pop(key, None)
            sources.pop(key, None)
        return values | self.values, sources | self.sources


def _layer(entry: dict, path: Path, name: str, nested: tuple[str, ...] = ()) -> _Layer:
    """An entry's values and sources; a source must be the study's words or ``unknown:``."""
    where = f"{path} {name}"
    values = {k: v for k, v in entry.items() if k not in ("sources", *nested)}
    sources = entry.get("sources", {})
    for key in values:
        parse_field(key, values[key], where)
        text = sources.get(key)
        if not isinstance(text, str) or not text.startswith(SOURCE_PREFIXES):
            raise BaselineError(
                f'{where}: sources.{key} must quote the study ("study ...") or say '
                '"unknown: <why>; <the value chosen>"'
            )
    extra = sorted(set(sources) - set(values))
    if extra:
        raise BaselineError(f"{where}: sources.{extra[0]} names no value of this entry")
    return _Layer(values, sources, path, name)


class ProtocolFile:
    """``protocols.toml`` read and checked: every table, model and row override resolves."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BaselineError(
                f"{self.path} does not exist: a study table needs its protocol"
            ) from None
        except tomllib.TOMLDecodeError as error:
            raise BaselineError(f"{self.path}: not valid TOML ({error})") from None
        self.study = _layer(data.pop("study", {}), self.path, "[study]")
        self.models = {
            glob: _layer(entry, self.path, f'[models."{glob}"]')
            for glob, entry in data.pop("models", {}).items()
        }
        unknown = [name for name in data if not name.startswith("table")]
        if unknown:
            raise BaselineError(
                f"{self.path}: [{unknown[0]}] is not a table (tableN), study or models"
            )
        self.tables = {
            name: _layer(entry, self.path, f"[{name}]", ("rows",)) for name, entry in data.items()
        }
        self.rows = {
            name: {
                glob: _layer(row, self.path, f'[{name}.rows."{glob}"]')
                for glob, row in entry.get("rows", {}).items()
            }
            for name, entry in data.items()
        }
        for name in self.tables:  # every table resolves on its own
            self._resolve(name, [])

    def for_row(self, row) -> Protocol:
        """The protocol of a study ``BaselineRow``: table, then model, then row overrides."""
        if row.table not in self.tables:
            raise BaselineError(f"{self.path}: no [{row.table}] entry for {row.file or row.table}")
        key = f"{row.metric}:{row.test_id}"
        layers = [
            layer for glob, layer in self.models.items() if fnmatch.fnmatchcase(row.model, glob)
        ]
        layers += [
            layer for glob, layer in self.rows[row.table].items() if fnmatch.fnmatchcase(key, glob)
        ]
        protocol = self._resolve(row.table, layers)
        if row.seqlen is not None and row.seqlen != protocol.seqlen:
            raise BaselineError(
                f"{row.file or row.table}: {row.test_id} states seqlen {row.seqlen}, "
                f"{self.path} gives {protocol.seqlen}"
            )
        return protocol

    def _resolve(self, table: str, layers: list[_Layer]) -> Protocol:
        values, sources = {}, {}
        chain = [self.study, self.tables[table], *layers]
        for layer in chain:
            values, sources = layer.over(values, sources)
        where = " + ".join([f"{self.path} [{table}]", *(layer.name for layer in layers)])
        return Protocol.from_fields(values, where, sources)


_FILES: dict[tuple[str, int], ProtocolFile] = {}


def load_protocols(path: str | Path) -> ProtocolFile:
    """The protocol file at ``path``, read once per version of the file."""
    path = Path(path)
    stamp = (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0)
    if stamp not in _FILES:
        _FILES[stamp] = ProtocolFile(path)
    return _FILES[stamp]


def protocol_for(row) -> Protocol:
    """The one complete protocol a ``baselines.BaselineRow`` was measured with."""
    if row.tier == "study":
        return load_protocols(Path(row.file).parent / PROTOCOLS_FILE).for_row(row)
    return cpu_protocol(row)


def cpu_protocol(row) -> Protocol:
    """A CPU-tier row's protocol: its CSV's seqlen and ``# windows:``, the tier's settings."""
    where = f"{row.file or 'a CPU-tier row'}"
    seqlen = row.seqlen or CPU_SEQLEN
    stated = f"{where}: the row's seqlen column" if row.seqlen else f"CPU tier default {CPU_SEQLEN}"
    fixed = "the CPU tier's setting (mpt_core/protocols.py)"
    values = {
        # an accuracy row (baselines.DOWNSTREAM_METRICS; baselines imports this module) is
        # scored by lm-eval, a perplexity row by windows
        "evaluation": "lm-eval" if row.metric in ("acc", "acc_norm") else "windowed",
        "seqlen": seqlen,
        "windows": row.windows or CPU_WINDOWS,
        "dtype": "float32",
        "calib_set": CPU_CALIBRATION,
        "calib_split": CPU_CALIBRATION_SPLIT,
        "calib_nsamples": "method",
        "calib_length": seqlen,
        "calib_sampler": SAMPLERS[CPU_CALIBRATION],
        "calib_seed": 0,
        "calib_batch": CPU_CALIB_BATCH,
        "gptq_group": "row",
        "awq_group": "row",
        "eval_batch": CPU_EVAL_BATCH,
    }
    sources = dict.fromkeys(values, fixed) | {
        "seqlen": stated,
        "calib_length": stated,
        "windows": f"{where}: # windows:" if row.windows else f"CPU tier default {CPU_WINDOWS}",
    }
    return Protocol.from_fields(values, where, sources)
