"""The tests' PostgreSQL: a throwaway cluster when forced or when nothing listens, else the local server."""

from __future__ import annotations

import socket

import psycopg
import pytest

from . import postgres, sockets
from .conftest import postgres_database

pytestmark = pytest.mark.integration


def accepts_connections(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((sockets.LOOPBACK, port)) == 0


def database_exists(admin_url: str, url: str) -> bool:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def write_and_read_a_row(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE readings (t_c real, t_u real)")
        conn.execute("INSERT INTO readings VALUES (%s, %s)", (0.5, 35.7))
        conn.commit()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT t_c, t_u FROM readings").fetchall() == [(0.5, pytest.approx(35.7))]


def test_a_forced_throwaway_cluster_serves_a_fresh_database_and_is_gone_afterwards():
    with postgres.server({"PIPELINE_TEST_PG": "throwaway"}) as pg:
        assert pg.throwaway and pg.port != 5432
        assert sockets.listening_addresses(pg.port) == {"127.0.0.1"}  # loopback only, IPv4 only
        assert pg.directory.is_dir()
        with postgres.fresh_database(pg.url) as url:
            assert url.startswith(f"postgresql://postgres@127.0.0.1:{pg.port}/thermo_test_")
            write_and_read_a_row(url)
            still_connected = psycopg.connect(url)  # dropping the database must not wait for it
        assert not database_exists(pg.url, url)
        with pytest.raises(psycopg.OperationalError), still_connected:
            still_connected.execute("SELECT 1")  # it was terminated
    assert not accepts_connections(pg.port)
    assert not pg.directory.exists()


def test_a_throwaway_cluster_is_stopped_and_removed_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"), postgres.throwaway_cluster() as pg:
        assert accepts_connections(pg.port)
        raise RuntimeError("boom")
    assert not accepts_connections(pg.port)
    assert not pg.directory.exists()


def test_the_local_server_is_used_when_it_answers():
    if not postgres.answers(postgres.DEFAULT_URL):
        pytest.skip("nothing answers at 127.0.0.1:5432: the local-server path cannot be tested here")
    with postgres.server({}) as pg:
        assert not pg.throwaway
        assert pg.url == postgres.DEFAULT_URL
        with postgres.fresh_database(pg.url) as url:
            write_and_read_a_row(url)
        assert not database_exists(pg.url, url)
    assert accepts_connections(5432)  # left running


def test_an_explicit_url_that_does_not_answer_falls_back_to_a_throwaway_cluster():
    dead = f"postgresql://postgres@127.0.0.1:{sockets.free_port()}/postgres"
    with postgres.server({"PIPELINE_TEST_PG_URL": dead}) as pg:
        assert pg.throwaway
        assert postgres.answers(pg.url)


def test_the_session_helpers_give_a_working_fresh_database(postgres_server):
    assert postgres.answers(postgres_server)
    with postgres_database() as url:
        assert url.startswith(postgres_server.rsplit("/", 1)[0] + "/thermo_test_")
        write_and_read_a_row(url)
    assert not database_exists(postgres_server, url)
