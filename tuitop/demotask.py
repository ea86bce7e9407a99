"""The demo's stand-in for Tuleap's ``tuleap queue:task-worker-process``.

Reads the message on stdin as Tuleap's task command does, "works" for a while that depends
on its topic (a JIRA import takes seconds; a git hook or an index update a fraction of
one), says what it did on stdout, and exits 0. Standard library only: it starts as fast as
a small program can.
"""

from __future__ import annotations

import json
import random
import sys
import time

DURATIONS = {
    "tuleap.tracker.creation.jira": (6.0, 12.0),
    "tuleap.git.hooks.post-receive": (0.05, 0.4),
    "tuleap.fts.index-item": (0.02, 0.2),
}


def main() -> int:
    raw = sys.stdin.buffer.read()
    try:
        topic = str(json.loads(raw).get("event_name", ""))
    except (ValueError, AttributeError):
        print("demo task: the message is not a JSON object", file=sys.stderr)
        return 1
    low, high = DURATIONS.get(topic, (0.05, 0.2))
    seconds = random.uniform(low, high)
    time.sleep(seconds)
    print(f"demo task: {topic} done in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
