"""Rewrite the README's generated tables from the code that owns them.

Run after changing a setting (``photomaker/settings.py``): the tests compare the README's
table with ``settings_table()`` and fail until it is regenerated.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from photomaker.settings import settings_table  # noqa: E402


def replace_table(text: str, table: str) -> str:
    """Swap the Markdown table that starts with ``table``'s header line for ``table``."""
    header = table.splitlines()[0]
    start = text.index(header)
    end = text.find("\n\n", start)
    return text[:start] + table + text[end:]


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    updated = replace_table(text, settings_table())
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    sys.stdout.write("README.md " + ("updated\n" if updated != text else "already up to date\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
