"""`python -m reconciliation.sandbox.aipress24 PATH`: build the SQLite equivalent at PATH."""

from __future__ import annotations

import argparse

from reconciliation.sandbox.aipress24.sqlite import build_sqlite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", help="where to write the SQLite file (replaced if it exists)")
    path = build_sqlite(parser.parse_args(argv).path)
    print(f"AIPRESS24_DATABASE_URL=sqlite:///{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
