"""MLflow model registry: register a student version, the champion gate, promotion and rollback."""

from __future__ import annotations

import math
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model if it does not exist yet."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="DSKD students distilled by dskd-pipeline")


def champion_version(client: MlflowClient, name: str):
    """The version holding the champion alias, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def passes_gate(challenger: float, champion: float | None, min_improvement: float) -> bool:
    """Lower-is-better gate: beat the champion by at least ``min_improvement`` (relative). No champion: pass.
    A non-finite challenger (a diverged student: NaN perplexity) never passes."""
    if not math.isfinite(challenger):
        return False
    if champion is None:
        return True
    return challenger < champion * (1.0 - min_improvement)


IDEMPOTENCY_TAG = "dskd.train_key"


def version_with_tag(client: MlflowClient, name: str, tag: str, value: str):
    """The (oldest) version of ``name`` whose ``tag`` equals ``value``, or None."""
    matches = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get(tag) == value]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def register_version(
    client: MlflowClient,
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, Any],
    metric: str,
    metric_value: float,
    min_improvement: float,
    model_id: str | None = None,
) -> dict[str, Any]:
    """New version from ``source`` (``models:/<model_id>`` for a logged model) with tags; alias challenger;
    champion if it passes the gate.

    Idempotent per train key: when a version tagged with this ``dskd.train_key`` exists (a rerun after a crash
    between registering and the stage's artifact rename), that version is reused instead of creating a second one.
    """
    ensure_registered_model(client, name)
    str_tags = {k: str(v) for k, v in tags.items()}
    key = str_tags.get(IDEMPOTENCY_TAG)
    existing = version_with_tag(client, name, IDEMPOTENCY_TAG, key) if key else None
    version = existing or client.create_model_version(
        name, source=source, run_id=run_id, tags=str_tags, model_id=model_id
    )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    current = champion_version(client, name)
    if current is not None and current.version == version.version:
        # Promoted before the crash: the gate was passed against the champion it replaced.
        before = current.tags.get("dskd.previous_champion", "")
        previous = client.get_model_version(name, before) if before else None
        current, promoted = previous, True
        current_value = float(previous.tags[metric]) if previous is not None and metric in previous.tags else None
    else:
        current_value = float(current.tags[metric]) if current is not None and metric in current.tags else None
        promoted = passes_gate(metric_value, current_value, min_improvement)
    if promoted and not _is_champion(client, name, version.version):
        client.set_registered_model_alias(name, CHAMPION, version.version)
        client.set_model_version_tag(
            name, version.version, "dskd.previous_champion", current.version if current is not None else ""
        )
    return {
        "model_name": name,
        "version": int(version.version),
        "aliases": [CHALLENGER] + ([CHAMPION] if promoted else []),
        "promoted": promoted,
        "reused": existing is not None,
        "gate_metric": metric,
        "challenger_value": metric_value,
        "champion_value_before": current_value,
        "model_uri": f"models:/{name}/{version.version}",
        **({"model_id": model_id} if model_id else {}),
    }


def _is_champion(client: MlflowClient, name: str, version: str) -> bool:
    current = champion_version(client, name)
    return current is not None and current.version == version


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with aliases, gate-relevant tags and run id."""
    versions = client.search_model_versions(f"name = '{name}'")
    model = client.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append(
            {
                "version": int(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "run_id": v.run_id,
                "tags": dict(v.tags),
                "created": v.creation_timestamp,
            }
        )
    return rows


def promote(client: MlflowClient, name: str, version: int) -> int | None:
    """Make ``version`` the champion by hand (bypassing the gate); returns the previous champion version."""
    client.get_model_version(name, str(version))  # raises a clear MlflowException if absent
    current = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    previous = int(current.version) if current is not None else None
    if previous is not None and previous != version:
        client.set_model_version_tag(name, str(version), "dskd.previous_champion", str(previous))
    return previous


def rollback(client: MlflowClient, name: str) -> int:
    """Move the champion alias back to the version it replaced (recorded at promotion)."""
    current = champion_version(client, name)
    if current is None:
        raise ValueError(f"model '{name}' has no champion to roll back; promote a version first")
    previous = current.tags.get("dskd.previous_champion", "")
    if not previous:
        raise ValueError(
            f"champion version {current.version} of '{name}' replaced no earlier champion; nothing to roll back to"
        )
    client.set_registered_model_alias(name, CHAMPION, previous)
    return int(previous)
