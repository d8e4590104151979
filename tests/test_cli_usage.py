"""argparse's usage errors are one line and exit 2, like every other usage error; a number
option takes finite numbers only."""

from __future__ import annotations

import pytest

from mpt_core.cli import main
from mpt_core.errors import USAGE


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["fit", "fixtures/curves/synthetic.csv", "--floor", "nan"],
            "--floor: 'nan' is not a finite",
        ),
        (["compare", "a.jsonl", "b.jsonl", "--rtol", "inf"], "--rtol: 'inf' is not a finite"),
        (["history", "runs", "--rtol=-inf"], "--rtol: '-inf' is not a finite"),
        (["run", "--model", "tiny-llama"], "required: --spec"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_bad_part(argv, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "usage:" not in err
