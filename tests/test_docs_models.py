"""docs/models.md carries the registry's table as generated (python -m probes.families)."""

import re
from pathlib import Path

from probes.families import families_table

DOC = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()


def test_family_table_is_the_generated_one():
    block = re.search(r"<!-- generated:.*?-->\n(.*?)\n<!-- end generated -->", DOC, re.S).group(1)
    assert block == families_table()
