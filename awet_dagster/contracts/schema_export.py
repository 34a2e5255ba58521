"""Generate the JSON Schema files of the event contracts into ``awet_dagster/schemas/``.

    python -m awet_dagster.contracts.schema_export           # (re)write the files
    python -m awet_dagster.contracts.schema_export --check   # exit 1 if any file is stale

The files are committed so non-Python consumers (and reviewers) can see the wire format;
``tests/test_contracts.py`` fails when they drift from the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .events import CONTRACT_MODELS

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def render_schemas() -> dict[str, str]:
    """File name -> file text, deterministic (sorted keys, trailing newline)."""
    out: dict[str, str] = {}
    for model in CONTRACT_MODELS:
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"awet:{model.__name__}:v{model.model_fields['schema_version'].default}"
        out[f"{model.__name__}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def stale_schemas(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Names of files that are missing, different, or left over from a removed model."""
    expected = render_schemas()
    problems = [
        name
        for name, text in expected.items()
        if not (schema_dir / name).is_file() or (schema_dir / name).read_text() != text
    ]
    leftovers = sorted(p.name for p in schema_dir.glob("*.json") if p.name not in expected)
    return problems + leftovers


def export_schemas(schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema, delete leftovers of removed models; return the written paths."""
    schema_dir.mkdir(parents=True, exist_ok=True)
    expected = render_schemas()
    for p in schema_dir.glob("*.json"):
        if p.name not in expected:
            p.unlink()
    written = []
    for name, text in expected.items():
        path = schema_dir / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify; exit 1 if stale")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help="target directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_schemas(args.out)
        if stale:
            print(f"stale JSON schemas in {args.out}: {', '.join(stale)}; "
                  "run: python -m awet_dagster.contracts.schema_export", file=sys.stderr)
            return 1
        print(f"JSON schemas in {args.out} are current")
        return 0
    for path in export_schemas(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
