"""CSV for reports: the same rows the JSON answer holds, with a header row."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rest_framework.renderers import BaseRenderer

__all__ = ["CsvRenderer"]


class CsvRenderer(BaseRenderer):
    """Renders ``data["rows"]`` under the header the view puts in the renderer context as
    ``csv_header``. An error stays in the console's JSON error shape."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: dict[str, Any] | None = None,
    ) -> str:
        context = renderer_context or {}
        response = context.get("response")
        if response is not None and response.status_code >= 400:
            response["Content-Type"] = "application/json"
            return json.dumps(data)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=context["csv_header"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {k: "" if v is None else v for k, v in row.items()} for row in data["rows"]
        )
        return out.getvalue()
