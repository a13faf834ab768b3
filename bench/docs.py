"""Writing a benchmark's section of docs/benchmarks.md between its two markers."""

from __future__ import annotations

from pathlib import Path
from typing import Final

BENCHMARKS: Final = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_section(begin: str, end: str, block: str, *, heading: str) -> None:
    """Put ``block`` between ``begin`` and ``end`` (the markers kept), or append it under
    ``heading`` when the markers are not there yet."""
    text = BENCHMARKS.read_text()
    marked = f"{begin}\n{block}\n{end}"
    if begin in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + marked + tail
    else:
        text += f"\n## {heading}\n\n{marked}\n"
    BENCHMARKS.write_text(text)
