"""``python -m probes.adapters``: print the registry as the Markdown table in docs/models.md."""

from probes.adapters import families_table

print(families_table())
