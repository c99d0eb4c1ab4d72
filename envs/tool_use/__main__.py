"""``python -m envs.tool_use -n 24 --seed 0``: print tiny-world tool-use tasks as JSON lines."""

import sys

from envs.tool_use.generate import main

sys.exit(main())
