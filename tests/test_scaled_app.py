"""The scaled-out app end to end: 3 NATS nodes, 2 gateways, a node killed midway; each review scored once."""

from __future__ import annotations

import subprocess
import sys


def test_the_scaled_app_stores_and_scores_every_acked_review_once_through_a_killed_node():
    done = subprocess.run(
        [sys.executable, "-m", "helpers.scaled_app", "--reviews", "1500"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = {
        line.split()[0] + " " + line.split()[1]: line for line in done.stdout.splitlines() if line.strip()
    }
    assert "each acked review once" in lines["stored in"]
    assert "one per acked review" in lines["scores stored"]
    assert "acked 1,500" in lines["reviews published"]
    assert "SIGKILL after" in lines["NATS node"]
