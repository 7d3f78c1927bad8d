"""The documentation stays true of the build: the reference pages are the code's own
rendering, every setting is documented with its default, and no file cites a
specification users do not have."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from worker.reference import PAGES, REGENERATE
from worker.settings import describe_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_reference_page_is_a_fresh_render(page: str) -> None:
    checked_in = (REPO / page).read_text() if (REPO / page).exists() else ""
    assert checked_in == PAGES[page](), (
        f"{page} differs from the code (a command, option or setting changed): "
        f"run `{REGENERATE}` and commit the result")


def test_every_setting_is_in_the_settings_reference_with_its_default() -> None:
    page = (REPO / "docs" / "reference" / "settings.md").read_text()
    for name, default, _ in describe_settings():
        assert f"| `{name}` | `{default}` |" in page, f"{name} missing or its default stale"


def _repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name]


def test_no_file_cites_a_specification_users_do_not_have() -> None:
    # The contract lives in docs/ and contracts/; built so this file does not name it.
    name = "SPEC" + ".md"
    citing = []
    for path in _repository_files():
        if not path.is_file():
            continue  # deleted in the work tree, not yet in the index
        if name.lower() in path.read_bytes().decode(errors="replace").lower():
            citing.append(str(path.relative_to(REPO)))
    assert not citing, f"{name} is cited by {citing}: cite the contract (docs/, contracts/)"
