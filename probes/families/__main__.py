"""``python -m probes.families``: print the registry as the Markdown table in docs/models.md."""

from probes.families import families_table

print(families_table())
