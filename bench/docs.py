"""Writing a benchmark's section of a doc (docs/benchmarks.md by default) between markers."""

from __future__ import annotations

from pathlib import Path
from typing import Final

BENCHMARKS: Final = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_section(
    begin: str, end: str, block: str, *, heading: str, path: Path = BENCHMARKS
) -> None:
    """Put ``block`` between ``begin`` and ``end`` (the markers kept) in ``path``, or append
    it under ``heading`` when the markers are not there yet."""
    text = path.read_text()
    marked = f"{begin}\n{block}\n{end}"
    if begin in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + marked + tail
    else:
        text += f"\n## {heading}\n\n{marked}\n"
    path.write_text(text)
