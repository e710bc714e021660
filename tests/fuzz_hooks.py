"""SCHEMATHESIS_HOOKS module for bench/fuzz.py's CLI run: registers the error-envelope check as `envelope_check`."""

from __future__ import annotations

import schemathesis

from tests.fuzzing import envelope_check

schemathesis.check(envelope_check)
