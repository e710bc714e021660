"""Summarises a py-spy folded-stack profile (bench_pipeline.py --py-spy DIR): where the samples are.

    python -m bench.folded DIR/push.folded [--top 40]

Inclusive share per function (a function counted once per sample even when recursive) and self share.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in args.path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if not f.startswith("process ")]
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        if frames:
            own[frames[-1]] += samples
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"--- {title}")
        for frame, samples in counter.most_common(args.top):
            print(f"{100 * samples / total:6.1f}%  {frame}")


if __name__ == "__main__":
    main()
