"""LOG_FORMAT=json: one JSON object per line, with the `key=value` fields of our log lines lifted out."""

from __future__ import annotations

import json
import logging
import re

_FIELD = re.compile(r"(\w+)=(\S+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": message.split(" ", 1)[0],
            "message": message,
        }
        for key, value in _FIELD.findall(message):
            entry.setdefault(key, value.rstrip(":;,"))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
