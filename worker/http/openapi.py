"""Print the OpenAPI schema: `python -m worker.http.openapi > docs/openapi.json`.

The checked-in docs/openapi.json must equal this output (tests/service/test_openapi.py)."""

from __future__ import annotations

import json
import sys
from typing import Any


def schema() -> dict[str, Any]:
    from worker.http.app import create_app

    return create_app(None).openapi_schema.to_schema()


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
