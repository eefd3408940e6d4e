"""Keep the README's tables in step with the registries: ``python -m embedx.engine.docs README.md``.

Each table sits between ``<!-- registry:FAMILY -->`` and ``<!-- /registry:FAMILY -->``; :func:`render` returns
the text with every such block regenerated from ``registry.table(FAMILY)`` (scores: measure, transfer, drift) or
``kinds.table(FAMILY)`` (inputs: source, dump); a test checks the README is current.
"""
from __future__ import annotations

import re
import sys

from embedx.engine import kinds, registry

BLOCK = re.compile(r"(<!-- registry:(\w+) -->\n)(.*?)(<!-- /registry:\2 -->)", re.S)


def table(family: str) -> str:
    return kinds.table(family) if family in kinds.FAMILIES else registry.table(family)


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table(m.group(2)) + "\n" + m.group(4), text)


def main(argv=None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            old = f.read()
        new = render(old)
        if new != old:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
