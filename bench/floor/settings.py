"""Keel's settings with the floor's URLconf (bench/floor/urls.py): the same middleware, database,
cache and REST defaults, and no route of Keel's own."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor.urls"
