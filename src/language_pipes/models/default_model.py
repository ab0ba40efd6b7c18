"""The default model, ready to serve: converted into the store once, then found there.

``python -m language_pipes.models.default_model`` prepares it (``scripts/setup.sh``
runs it so tests never convert it twice). It sits above both
:mod:`~language_pipes.models.store` and :mod:`~language_pipes.models.embedded`, so
neither has to import the other's caller.
"""

from __future__ import annotations

import sys
from pathlib import Path

from language_pipes.models.embedded import DEFAULT_MODEL_ID
from language_pipes.models.store import ModelStore, ModelStoreError


def prepare_default_model(root: Path | None = None) -> Path:
    """Make sure the default model is in the store (converting it once) and return its folder."""
    return ModelStore(root).ensure(DEFAULT_MODEL_ID)


def main() -> int:
    """``python -m language_pipes.models.default_model``: prepare the default model, print its folder."""
    try:
        path = prepare_default_model()
    except ModelStoreError as error:
        # Expected failure (missing wheel): one readable line and a non-zero exit, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
