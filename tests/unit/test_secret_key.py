"""The install's own secret key file: written once, private from the first byte, read back as written."""

from __future__ import annotations

import stat

import pytest
from django.core.exceptions import ImproperlyConfigured

from kbsite.secret_key import read_secret_key, write_secret_key_once

pytestmark = pytest.mark.unit


def test_a_new_key_is_long_random_and_readable_by_its_owner_only(tmp_path) -> None:
    path = tmp_path / "var" / "secret_key"

    assert write_secret_key_once(path) is True

    key = read_secret_key(path)
    assert len(key) >= 50 and len(set(key)) >= 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"], "the draft file is left behind"


def test_a_second_write_keeps_the_first_key(tmp_path) -> None:
    path = tmp_path / "secret_key"
    write_secret_key_once(path)
    first = read_secret_key(path)

    assert write_secret_key_once(path) is False
    assert read_secret_key(path) == first


def test_two_installs_get_different_keys(tmp_path) -> None:
    write_secret_key_once(tmp_path / "a")
    write_secret_key_once(tmp_path / "b")

    assert read_secret_key(tmp_path / "a") != read_secret_key(tmp_path / "b")


def test_no_file_means_no_key(tmp_path) -> None:
    assert read_secret_key(tmp_path / "secret_key") is None


def test_an_empty_key_file_is_refused_with_what_to_do(tmp_path) -> None:
    path = tmp_path / "secret_key"
    path.write_text("\n")

    with pytest.raises(ImproperlyConfigured, match="delete it and run `manage.py bootstrap`"):
        read_secret_key(path)
