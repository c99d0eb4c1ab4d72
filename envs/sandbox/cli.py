"""``align sandbox exec FILE``: run one file in the code sandbox and print one JSON result.

Exit codes: 0 when the sandbox ran (whatever the program did: read ``status``), 2 on bad input
(the file is missing or unreadable), 1 when the sandbox could not start (the JSON's ``error``
says why and how to fix it). Exactly one JSON object goes to stdout in every case.
"""

from __future__ import annotations

import argparse
import json
import logging

from envs.sandbox import SandboxConfig, SandboxUnavailable, run_program

EXIT_RAN = 0
EXIT_NO_SANDBOX = 1
EXIT_BAD_INPUT = 2


def cmd_exec(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            code = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(json.dumps({"status": "bad_input", "error": f"cannot read {args.file}: {e}"}))
        return EXIT_BAD_INPUT
    try:
        config = SandboxConfig(
            timeout_s=float(args.timeout_s),
            memory_mb=int(args.memory_mb),
            allow_rlimits_only=bool(args.allow_rlimits_only),
        )
    except ValueError as e:
        print(json.dumps({"status": "bad_input", "error": str(e)}))
        return EXIT_BAD_INPUT
    if config.allow_rlimits_only:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result = run_program(code, config=config)
    except SandboxUnavailable as e:
        print(json.dumps({"status": "unavailable", "error": str(e)}))
        return EXIT_NO_SANDBOX
    print(result.to_json())
    return EXIT_RAN
