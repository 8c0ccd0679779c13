"""The former name of :mod:`tasks.captioning.run` (``python -m tasks.captioning.tta`` still works)."""
from .run import main

if __name__ == "__main__":
    main()
