"""The families every part of mpt sorts methods and baseline rows into, named once.

A method registers under one of ``METHOD_FAMILIES`` (an N:M level makes any pruning method
``semi``); a baseline row belongs to one of ``ROW_FAMILIES``, which is also the pytest
marker its test carries and the benchmark module that collects it.
"""

from __future__ import annotations

FAMILY_TEXT = {
    "unstructured": "unstructured pruning points (Tables 2-3)",
    "semi": "N:M semi-structured pruning points (Tables 2-3)",
    "structured": "structured pruning points (Table 1)",
    "quant": "quantization points (Tables 4-6)",
    "lowrank": "low-rank decomposition points (Table 7)",
    "combined": "pipelines of two methods (Tables 8-10)",
    "downstream": "zero-shot / few-shot accuracy points (Table 5)",
    "speed": "throughput measurements",
}
METHOD_FAMILIES = ("unstructured", "semi", "structured", "quant", "lowrank")
ROW_FAMILIES = tuple(FAMILY_TEXT)
PRUNING_FAMILIES = ("unstructured", "semi")  # families whose stored tensors are sparse
# the families a CPU-tier baseline file can hold (its name: <family>[-<methods>].csv)
FILE_FAMILIES = ("quant", "unstructured", "semi", "structured", "lowrank", "combined")
