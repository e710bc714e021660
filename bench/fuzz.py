"""The long fuzz run: schemathesis (CLI, every phase) against the real app's /v2/openapi.json on a local port.

    python bench/fuzz.py [--max-examples 200] [--seed 1] [--workers 2] [--checks not_a_server_error,envelope_check]

Every HTTP operation but the WebSockets is fuzzed, authenticated as a user with an active license. The default
checks are the contract (no 5xx, every 4xx/5xx in the error envelope); `--checks all` adds schemathesis' checks
of the document itself (documented status codes, response schemas, ...). Prints a summary and exits non-zero on
any failure. tests/test_fuzz.py is the short run inside the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/fuzz.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from tests.fuzzing import WEBSOCKET_TAG, LiveServer  # noqa: E402

CONTRACT_CHECKS: Final = "not_a_server_error,envelope_check"  # envelope_check: tests/fuzz_hooks.py


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=200, help="generated cases per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    parser.add_argument("--checks", default=CONTRACT_CHECKS)
    args = parser.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ttboost-fuzz-") as tmp, LiveServer(Path(tmp) / "data") as server:
        url = f"{server.base_url}/v2/openapi.json"
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.load(resp)
        operations = [f"{method.upper()} {path}" for path, item in doc["paths"].items()
                      for method, op in item.items() if WEBSOCKET_TAG not in op.get("tags", ())]
        command = [sys.executable, "-m", "schemathesis.cli", "run", url, "--exclude-tag", WEBSOCKET_TAG,
                   "--checks", args.checks, "--max-examples", str(args.max_examples), "--seed", str(args.seed),
                   "--workers", args.workers, "--phases", args.phases, "--suppress-health-check", "all",
                   "--request-timeout", "30", "--generation-database", "none", "--no-color"]
        for name, value in server.headers.items():
            command += ["--header", f"{name}: {value}"]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        print(f"fuzzing {len(operations)} operations of {url}", flush=True)
        result = subprocess.run(command, env=env, cwd=tmp, check=False)  # its caches stay out of the repo
        statuses = dict(server.statuses)
    elapsed = time.monotonic() - started

    requests = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    by_class = {f"{c}xx": sum(n for s, n in statuses.items() if s // 100 == c) for c in (2, 4, 5)}
    print("\n== fuzz summary ==")
    print(f"operations: {len(operations)} (WebSockets excluded)")
    print(f"requests:   {requests} ({', '.join(f'{k} {v}' for k, v in by_class.items())})")
    print(f"statuses:   {json.dumps({str(k): v for k, v in sorted(statuses.items())})}")
    print(f"failures:   schemathesis exit code {result.returncode}; responses >= 500: {server_errors}")
    print(f"time:       {elapsed:.0f} s")
    return 1 if result.returncode or server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
