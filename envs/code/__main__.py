"""``python -m envs.code -n 24 --seed 0``: print tiny-world code tasks as JSON lines."""

import sys

from envs.code.generate import main

sys.exit(main())
