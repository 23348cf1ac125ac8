"""A cheaper producers' pass decides exactly as before.

``producer_cases`` draws 400 whole passes (calm, feed-like, stressed and crossed
markets on 2-4 venues, every strategy on, parameters and state drawn); the digest of
each pass's bodies (json-dumped) and skips was recorded with the code as it was before
the pass was made cheaper.  Any change of a body, a key, a number's last digit, a skip
or its wording, or their order, changes a digest.
"""

from __future__ import annotations

import json

import pytest

from tests.pure.producer_cases import CASES, DIGESTS, digest, run_case

RECORDED: dict[str, str] = json.loads(DIGESTS.read_text())["cases"]


def test_the_recording_covers_every_case() -> None:
    assert len(RECORDED) == CASES


@pytest.mark.parametrize("seed", range(CASES))
def test_a_pass_decides_what_it_decided_before(seed: int) -> None:
    assert digest(run_case(seed)) == RECORDED[str(seed)]


def test_the_digest_sees_a_changed_skip() -> None:
    outputs = run_case(0)
    assert any(out.skips for out in outputs)
    changed = next(out for out in outputs if out.skips)
    changed.skips[0] = type(changed.skips[0])(
        changed.skips[0].strategy, changed.skips[0].symbol, changed.skips[0].reason + " "
    )
    assert digest(outputs) != RECORDED["0"]
