"""``python -m vlmkit`` (and ``torchrun ... -m vlmkit train ...``) run the ``vlmkit`` command."""
from vlmkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
