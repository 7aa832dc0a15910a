"""health/xid.py: what an XID means and NVIDIA's recommended action; which ones take a GPU out."""
from __future__ import annotations

import pytest

from health import xid


@pytest.mark.parametrize(
    "code, action",
    [
        (13, xid.WATCH), (31, xid.WATCH), (43, xid.WATCH), (45, xid.WATCH),
        (48, xid.RESET), (61, xid.RESET), (62, xid.RESET), (63, xid.DRAIN), (64, xid.RESET),
        (68, xid.DRAIN), (69, xid.DRAIN), (74, xid.RESET), (79, xid.REBOOT), (92, xid.DRAIN),
        (94, xid.DRAIN), (95, xid.RESET), (119, xid.RESET), (120, xid.RESET),
    ],
)
def test_each_common_xid_has_its_recommended_action(code, action):
    found = xid.describe(code)
    assert found.code == code and found.action == action and found.meaning


def test_the_gpu_is_out_of_service_only_at_reset_reboot_or_service():
    assert xid.describe(79).takes_the_gpu_out and xid.describe(48).takes_the_gpu_out
    assert not xid.describe(13).takes_the_gpu_out and not xid.describe(94).takes_the_gpu_out
    assert {x.code for x in xid.KNOWN.values() if x.takes_the_gpu_out} >= {48, 61, 62, 64, 74, 79, 95, 119, 120}


def test_meanings_say_what_happened_in_words():
    assert "fallen off the bus" in xid.describe(79).meaning
    assert "double-bit ECC" in xid.describe(48).meaning
    assert "NVLink" in xid.describe(74).meaning


def test_an_unknown_xid_says_so_and_asks_for_a_drain_not_silence():
    found = xid.describe(9999)
    assert found.code == 9999 and "not in Gantry's table" in found.meaning and found.action == xid.DRAIN
    assert xid.describe("79") == xid.describe(79)  # codes from JSON may arrive as strings


def test_every_action_is_one_of_the_named_ones():
    assert {x.action for x in xid.KNOWN.values()} <= set(xid.ACTIONS)
