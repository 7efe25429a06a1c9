"""The site file's [downlink] table: off without it, the backend key required with it,
every mistake one line naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_support import MINIMAL_SITE, SAMPLE_SITE

from kommune.edge.agent import site as S

ENV = {"HOME": "/home/tech"}


def parse(text: str) -> S.Site:
    return S.parse(text.encode(), source=Path("/etc/kommune/site.toml"), environ=ENV, euid=1000)


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(S.SiteError) as caught:
        parse(text)
    return caught.value.problems


def test_without_the_table_downlinks_are_off() -> None:
    assert parse(MINIMAL_SITE).downlink == S.DownlinkConfig(None, 86_400.0)


def test_the_key_path_counts_from_the_site_files_folder() -> None:
    site = parse(MINIMAL_SITE + '[downlink]\nbackend_key = "keys/backend.pub"\nmax_age_s = 600\n')
    assert site.downlink.backend_key == Path("/etc/kommune/keys/backend.pub")
    assert site.downlink.max_age_s == 600.0


def test_the_sample_site_file_names_a_backend_key() -> None:
    site = S.load(SAMPLE_SITE, environ=ENV, euid=1000)
    assert site.downlink.backend_key == Path("/etc/kommune/backend-downlink.pub")


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            "max_age_s = 600\n",
            "downlink.backend_key: required: the path of the backend's Ed25519 public key "
            "(PEM), or leave out [downlink] for no downlinks",
        ),
        (
            "backend_key = 5\n",
            "downlink.backend_key: expected the path of the backend's Ed25519 public key "
            "(PEM), got 5",
        ),
        (
            'backend_key = "k.pub"\nmax_age_s = 10\n',
            "downlink.max_age_s: expected a number 60-604800, got 10",
        ),
        (
            'backend_key = "k.pub"\nbackend_keys = "x"\n',
            "downlink.backend_keys: unknown key (did you mean 'backend_key'?)",
        ),
    ],
)
def test_mistakes_name_their_key(table: str, problem: str) -> None:
    assert problems(MINIMAL_SITE + "[downlink]\n" + table) == (problem,)
