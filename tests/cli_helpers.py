"""Assertions shared by the bad-input tests of several commands."""
from __future__ import annotations


def one_line_error(capsys, *fragments: str) -> str:
    """The command printed exactly one error line (argparse's usage lines aside), no traceback, holding every
    fragment; returns that line."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("usage:")]
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)
    return lines[0]
