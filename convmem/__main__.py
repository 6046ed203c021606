"""``python -m convmem``: the same as the ``convmem`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
