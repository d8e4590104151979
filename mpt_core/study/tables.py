"""Read the study's markdown Tables 1-10 and map their cells to baseline CSV rows.

The study (``mpt-study.md``) prints its results as pipe tables, each after a caption
``Table N: ...``. :func:`parse_study` finds them and returns their cells with the markup
(``**x**``, ``<u>x</u>``, ``*x*``) stripped; :func:`study_rows` maps every cell to rows of the
baseline CSV schema (:data:`CSV_FIELDS`). ``baselines/study/README.md`` documents the mapping.

Run ``python -m mpt_core.study.tables STUDY.md OUT_DIR`` to (re)write ``tableN.csv``.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mpt_core.baselines import HEADER as CSV_FIELDS

LLAMA2_7B = "llama2-7b"
_CAPTION = re.compile(r"^(?:\*\*|#+\s*)Table (\d+):")
_SEPARATOR = re.compile(r"^\|[\s:|-]+\|$")

Row = dict[str, str]


@dataclass(frozen=True)
class StudyTable:
    """One pipe table of the study: its caption number, header and body cells (markup-free)."""

    number: int
    header: list[str]
    rows: list[list[str]]


def clean_cell(cell: str) -> str:
    """Strip whitespace, bold/italic/underline markup and the file's mojibake ``¬±`` → ``±``."""
    text = re.sub(r"</?u>", "", cell.replace("¬±", "±")).strip()
    return text.strip("*").strip()


def _split_pipe(line: str) -> list[str]:
    return [clean_cell(c) for c in line.strip().strip("|").split("|")]


def parse_study(text: str) -> list[StudyTable]:
    """Every pipe table that follows a ``Table N:`` caption (Table 7 has two), in file order."""
    tables: list[StudyTable] = []
    number: int | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|") and number is not None:
            lines.append(stripped)
            continue
        if lines:
            body = [_split_pipe(x) for x in lines[1:] if not _SEPARATOR.match(x)]
            tables.append(StudyTable(number, _split_pipe(lines[0]), body))
            lines = []
        match = _CAPTION.match(stripped)
        if match:
            number = int(match[1])
        elif stripped.startswith("#"):
            number = None
    return tables


def level(label: str) -> str:
    """A column/row label as a spec level: ``0.1``, ``17%``/``17`` → ``0.17``, ``2:4(0.5)``."""
    if match := re.fullmatch(r"(\d+:\d+)\(0\.5\)", label):
        return match[1]
    if "." in label and not label.endswith("%"):
        return repr(float(label))
    return repr(int(label.rstrip("%")) / 100)


def stage(method: str, lvl: str = "", opts: dict[str, str] | None = None) -> str:
    """``method:lvl[k=v,...]`` with the option keys sorted."""
    text = f"{method}:{lvl}" if lvl else method
    if opts:
        text += "[" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + "]"
    return text


def model_id(name: str) -> str:
    """``LLaMA-2-70B`` → ``llama2-70b``, ``Gemma-3-1B-IT`` → ``gemma3-1b-it``."""
    return re.sub(r"^(llama|gemma)-(\d)", r"\1\2", name.lower())


def split_pm(cell: str) -> tuple[str, str]:
    """``14.82 ± 0.11`` → (``14.82``, ``0.11``); a cell without ``±`` has no stderr."""
    value, _, err = cell.partition("±")
    return value.strip(), err.strip()


def split_paren(cell: str) -> tuple[str, str]:
    """``6.1565 (100%)`` → (``6.1565``, ``100``)."""
    match = re.fullmatch(r"(\S+)\s*\((\S+)%\)", cell)
    if match is None:
        raise ValueError(f"not a 'value (size%)' cell: {cell!r}")
    return match[1], match[2]


def split_slash(cell: str) -> tuple[str, str]:
    """``5.450 / 20.898`` → (``5.450``, ``20.898``); a ``%`` on either part is dropped."""
    left, right = (part.strip().rstrip("%") for part in cell.split("/"))
    return left, right


def make_row(
    model: str, dataset: str, spec: str, metric: str, value: str, source: str, **extra: str
) -> Row:
    """One CSV row; ``extra`` sets stderr/size/size_unit/seqlen (seqlen defaults to unknown)."""
    row = dict.fromkeys(CSV_FIELDS, "") | {"seqlen": "unknown"}
    row |= {
        "model": model,
        "dataset": dataset,
        "spec": spec,
        "metric": metric,
        "value": value,
        "source": source,
    }
    return row | extra


PRUNERS = {
    "Magnitude": ("magnitude", {}),
    "Wanda": ("wanda", {}),
    "SparseGPT": ("sparsegpt", {}),
    "RIA": ("ria", {}),
    "ADMM": ("admm", {}),
    "w.DSnoT": ("dsnot", {"init": "wanda"}),
    "s.DSnoT": ("dsnot", {"init": "sparsegpt"}),
    "Wanda_owl": ("owl", {"base": "wanda"}),
    "SparseGPT_owl": ("owl", {"base": "sparsegpt"}),
    "BESA-row": ("besa", {"alloc": "row"}),
    "BESA-layer": ("besa", {"alloc": "layer"}),
    "LLM_Pruner w/o": ("llm_pruner", {}),
    "LLM_Pruner": ("llm_pruner", {"recover": "lora"}),
    "FLAP(WIFV)": ("flap", {}),
    "SLEB": ("sleb", {}),
    "slicegpt w/o": ("slicegpt", {}),
    "slicegpt": ("slicegpt", {"recover": "finetune"}),
}
QUANT_BITS = {"GPTQ": "gptq", "AWQ": "awq", "GGUF": "gguf"}
# Methods of one fixed width: only the cell in that width's column names a point.
QUANT_FIXED = {
    "QLoRA_NF4": ("nf4", "4bits"),
    "QLoRA_FP4": ("fp4", "4bits"),
    "LLM.int8()": ("int8", "8bits"),
    "SmothQuant w8a8": ("smoothquant:8", "8bits"),
}
TABLE5_METRICS = {
    "PPL": ("wikitext2", "ppl"),
    "Tokens/s": ("wikitext2", "tokens_per_s"),
    "ARC-C": ("arc_challenge", "acc"),
    "ARC-E": ("arc_easy", "acc"),
    "MMLU": ("mmlu", "acc"),
}


def _pruning_rows(table: StudyTable, extra_opts: dict[str, str]) -> list[Row]:
    rows = []
    for label, *cells in table.rows:
        method, opts = PRUNERS[label]
        for col, cell in zip(table.header[1:], cells, strict=True):
            spec = stage(method, level(col), opts | extra_opts)
            src = f"Table {table.number}, row {label}, col {col}"
            rows.append(make_row(LLAMA2_7B, "wikitext2", spec, "ppl", cell, src))
    return rows


def _quant_spec(label: str, col: str) -> str | None:
    if label in QUANT_FIXED:
        spec, native_col = QUANT_FIXED[label]
        return spec if col == native_col else None
    return stage(QUANT_BITS[label], col.removesuffix("bits"))


def _table4(table: StudyTable) -> list[Row]:
    rows = []
    for label, *cells in table.rows:
        for col, cell in zip(table.header[1:], cells, strict=True):
            spec = _quant_spec(label, col)
            if spec is not None:
                src = f"Table 4, row {label}, col {col}"
                rows.append(make_row(LLAMA2_7B, "wikitext2", spec, "ppl", cell, src, seqlen="2048"))
    return rows


def gguf_spec(scheme: str, col: str = "") -> str | None:
    """``FP16`` (or ``-`` in the 16-bit column) → ``dense``; ``-`` elsewhere → no point."""
    if scheme == "FP16" or (scheme == "-" and col == "16-bit"):
        return "dense"
    return None if scheme == "-" else stage("gguf", scheme)


def fill_down(rows: list[list[str]]) -> list[list[str]]:
    """Rows with an empty first cell (a group's continuation) get the group's label."""
    out: list[list[str]] = []
    for row in rows:
        out.append([row[0] or out[-1][0], *row[1:]])
    return out


def _table5(table: StudyTable) -> list[Row]:
    rows: list[Row] = []
    groups: dict[str, dict[str, list[str]]] = {}
    for model, indicator, *cells in fill_down(table.rows):
        groups.setdefault(model, {})[indicator] = cells
    for model, group in groups.items():
        for i, col in enumerate(table.header[2:]):
            spec = gguf_spec(group["Quant Scheme"][i], col)
            size = group["Param(GB)"][i]
            size_cols = {"size": size, "size_unit": "GB"} if size != "-" else {}
            for indicator, (dataset, metric) in TABLE5_METRICS.items():
                if spec is None or indicator not in group:
                    continue
                value, err = split_pm(group[indicator][i])
                src = f"Table 5, row {model} {indicator}, col {col}"
                rows.append(
                    make_row(
                        model_id(model), dataset, spec, metric, value, src, stderr=err, **size_cols
                    )
                )
    return rows


def _table6(table: StudyTable) -> list[Row]:
    rows = []
    for model, scheme, ppl, size in fill_down(table.rows):
        value, err = split_pm(ppl)
        src = f"Table 6, row {model} {scheme}, col PPL"
        rows.append(
            make_row(
                model_id(model),
                "wikitext2",
                gguf_spec(scheme) or "",
                "ppl",
                value,
                src,
                stderr=err,
                size=size,
                size_unit="GB",
            )
        )
    return rows


def _table7(table: StudyTable) -> list[Row]:
    method = "svd_llm" if "SVD-LLM" in table.header[0] else "asvd"
    name = "SVD-LLM" if method == "svd_llm" else "ASVD"
    rows = []
    for label, *cells in table.rows:
        dataset = "ptb" if label.startswith("PTB") else "wikitext2"
        seq = re.search(r"seq=(\d+)", label)
        for col, cell in zip(table.header[1:], cells, strict=True):
            spec = stage(method, level(col)) if col != "0%" else "dense"
            src = f"Table 7 {name}, row {label}, col {col}"
            rows.append(
                make_row(
                    LLAMA2_7B, dataset, spec, "ppl", cell, src, seqlen=seq[1] if seq else "unknown"
                )
            )
    return rows


def combined(first: str, second: str | None) -> str:
    """Join two stages with ``+``; a ``dense`` first stage drops out."""
    stages = [s for s in (first, second) if s and s != "dense"]
    return "+".join(stages) or "dense"


def _table8_col(col: str) -> str | None:
    bits = re.match(r"RTN_INT(\d)", col)
    return stage("rtn", bits[1]) if bits else None


def _table9_col(col: str) -> str | None:
    bits = re.search(r"\((\d)-bit\)", col)
    return stage("gptq", bits[1]) if bits else None


def _table10_col(col: str) -> str | None:
    return None if col.startswith("FP16") else stage("gguf", col.split()[0])


def _combined_rows(
    table: StudyTable,
    pruner: str,
    quant: Callable[[str], str | None],
    cell_rows: Callable[[str], list[tuple[str, str, str]]],
    size_unit: str,
) -> list[Row]:
    rows = []
    for label, *cells in table.rows:
        first = stage(pruner, level(label)) if level(label) != "0.0" else "dense"
        for col, cell in zip(table.header[1:], cells, strict=True):
            spec = combined(first, quant(col))
            src = f"Table {table.number}, row {label}, col {col}"
            for dataset, value, size in cell_rows(cell):
                sized = {"size": size, "size_unit": size_unit} if size else {}
                rows.append(make_row(LLAMA2_7B, dataset, spec, "ppl", value, src, **sized))
    return rows


def _t8_cell(cell: str) -> list[tuple[str, str, str]]:
    wiki, ptb = split_slash(cell)
    return [("wikitext2", wiki, ""), ("ptb", ptb, "")]


def _t9_cell(cell: str) -> list[tuple[str, str, str]]:
    size, value = split_slash(cell)
    return [("wikitext2", value, size)]


def _t10_cell(cell: str) -> list[tuple[str, str, str]]:
    value, size = split_paren(cell)
    return [("wikitext2", value, size)]


def table_rows(table: StudyTable) -> list[Row]:
    """The CSV rows of one parsed study table."""
    n = table.number
    if n in (1, 2, 3):
        return _pruning_rows(table, {"calib": "ptb"} if n == 3 else {})
    by_number: dict[int, Callable[[StudyTable], list[Row]]] = {
        4: _table4,
        5: _table5,
        6: _table6,
        7: _table7,
        8: lambda t: _combined_rows(t, "asvd", _table8_col, _t8_cell, ""),
        9: lambda t: _combined_rows(t, "sparsegpt", _table9_col, _t9_cell, "pct_fp16"),
        10: lambda t: _combined_rows(t, "wanda", _table10_col, _t10_cell, "pct_fp16"),
    }
    return by_number[n](table)


def study_rows(text: str) -> dict[int, list[Row]]:
    """CSV rows of Tables 1-10, keyed by table number (Table 7's two sub-tables together)."""
    out: dict[int, list[Row]] = {}
    for table in parse_study(text):
        out.setdefault(table.number, []).extend(table_rows(table))
    return out


def write_csvs(study: Path, out_dir: Path) -> dict[int, int]:
    """Write ``tableN.csv`` for every table into ``out_dir``; return rows written per table."""
    counts = {}
    for number, rows in study_rows(study.read_text(encoding="utf-8")).items():
        with (out_dir / f"table{number}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, CSV_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        counts[number] = len(rows)
    return counts


if __name__ == "__main__":
    print(write_csvs(Path(sys.argv[1]), Path(sys.argv[2])))
