"""API keys: `tq_<prefix>_<secret>`. The prefix finds the row; only a SHA-256 of the key is stored.

Keys are 190 bits of randomness, so a fast hash is enough (no password stretching needed) and the
comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from django.db.models import Q
from django.utils import timezone

from queueapp import models

_PREFIX_BYTES = 6
_SECRET_BYTES = 24


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(name: str, *, task_patterns: Sequence[str] = ()) -> tuple[models.ApiKey, str]:
    """A new key; returns the row and the key itself, which is never stored and cannot be shown again."""
    if not name.strip():
        raise ValueError("an API key needs a name")
    prefix = secrets.token_hex(_PREFIX_BYTES)
    key = f"tq_{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    row = models.ApiKey.objects.create(
        name=name.strip(), prefix=prefix, key_hash=_hash(key), task_patterns=list(task_patterns)
    )
    return row, key


def authenticate(key: str) -> models.ApiKey | None:
    """The live (not revoked) key row for key, or None."""
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "tq" or len(parts[1]) != 2 * _PREFIX_BYTES:
        return None
    row = models.ApiKey.objects.filter(prefix=parts[1], revoked_at__isnull=True).first()
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
        return None
    return row


def revoke_api_key(prefix_or_name: str) -> int:
    """Revoke keys by prefix (or by name); returns how many were revoked."""
    live = models.ApiKey.objects.filter(revoked_at__isnull=True)
    return live.filter(Q(prefix=prefix_or_name) | Q(name=prefix_or_name)).update(revoked_at=timezone.now())
