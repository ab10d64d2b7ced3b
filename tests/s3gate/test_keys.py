"""The keys file (one function, no servers): no access key may pass for unsigned callers."""

from __future__ import annotations

from pathlib import Path

import pytest

from clientlib.auth import Credentials
from clientlib.errors import ConfigError
from s3gate.keys import ANONYMOUS, load_keys


def test_no_access_key_may_be_called_as_the_unsigned_callers_are(tmp_path: Path):
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\naccess_key = "{ANONYMOUS}"\nsecret_key = "long-enough-secret"\n')
    with pytest.raises(ConfigError, match="unsigned"):
        load_keys(keys, Credentials())
    keys.write_text('[[keys]]\naccess_key = "team-a"\nsecret_key = "long-enough-secret"\n')
    assert list(load_keys(keys, Credentials())) == ["team-a"]
