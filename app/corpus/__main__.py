"""``python -m app.corpus``."""

import sys

from app.corpus.runner import main

sys.exit(main())
