"""The CRIU options that travel with a set of images, and what a restore accepts of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import VzError
from agent.runtime import criu_conf


def test_the_current_options_are_valid_and_round_trip(tmp_path: Path) -> None:
    assert criu_conf.validate(criu_conf.CURRENT, "x") == criu_conf.CURRENT
    conf = tmp_path / "criu.conf"
    conf.write_text(criu_conf.CURRENT)
    img = tmp_path / "img"
    img.mkdir()
    criu_conf.record(conf, img)
    assert criu_conf.for_restore(img) == criu_conf.CURRENT
    assert not (img / criu_conf.IMAGE_FILE).exists()  # CRIU does not see it


def test_images_without_options_were_dumped_with_the_legacy_ones(tmp_path: Path) -> None:
    assert criu_conf.for_restore(tmp_path) == criu_conf.LEGACY


@pytest.mark.parametrize("text", [
    "leave-stopped\n",  # the destination adds that itself, for its restore only
    "skip-in-flight\naction-script /tmp/evil\n",
    "manage-cgroups full\n",
    "x" * 5000,
])
def test_unknown_or_dangerous_options_are_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / criu_conf.IMAGE_FILE).write_text(text)
    with pytest.raises(VzError, match="CRIU option"):
        criu_conf.for_restore(tmp_path)


def test_options_are_normalised() -> None:
    assert criu_conf.validate("  skip-in-flight \n\nnetwork-lock skip", "x") == "skip-in-flight\nnetwork-lock skip\n"
