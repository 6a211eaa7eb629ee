"""Named points where a test can kill or pause a job, to prove it survives a crash there.

`RP_FAILPOINT=after_index_commit` sends the process SIGKILL (kill -9, nothing is cleaned
up) the first time it reaches that point; `after_index_commit:3` on the third time.
`RP_FAILPOINT_ACTION=pause` makes it wait there instead, holding whatever it holds, so a
test can start a second run beside it. Unset, a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

ENV_POINT = "RP_FAILPOINT"
ENV_ACTION = "RP_FAILPOINT_ACTION"
_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV_POINT)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] != int(nth or 1):
        return
    print(f"failpoint {name}: reached", file=sys.stderr, flush=True)
    if os.environ.get(ENV_ACTION) == "pause":
        time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
