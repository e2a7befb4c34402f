"""`st4r view` security: the --host check, the printed URL, and the WebSocket Origin check that keeps
other web pages open in the same browser from reading a local viewer."""

import pytest
from viz_scene import free_port

from st4r_cli.cli.app import run as cli_run


@pytest.fixture
def no_server(monkeypatch):
    """Record (instead of starting) every viewer `st4r view` would serve."""
    import st4r_cli.viz.viewer as viewer_module

    started = []
    monkeypatch.setattr(viewer_module, "serve", lambda *args: started.append(args))
    return started


@pytest.mark.parametrize("host", ["", "   ", "bad host!", "http://127.0.0.1", "999.1.1.1", "-x.example"])
def test_view_refuses_a_bad_host_before_starting(synthetic_run, no_server, capsys, host):
    code = cli_run(["view", str(synthetic_run), "--host", host])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0 and not no_server, err
    assert len(lines) == 1 and lines[0].startswith("error:") and "--host" in lines[0], err
    assert "Traceback" not in err


def test_view_refuses_an_address_of_another_machine(synthetic_run, no_server, capsys):
    code = cli_run(["view", str(synthetic_run), "--host", "192.0.2.1"])  # TEST-NET-1: never local
    err = capsys.readouterr().err
    assert code != 0 and not no_server and err.startswith("error:") and "192.0.2.1" in err, err


def test_view_accepts_loopback_and_wildcard_hosts(synthetic_run, no_server):
    for host in ("127.0.0.1", "localhost", "0.0.0.0"):
        assert cli_run(["view", str(synthetic_run), "--host", host]) == 0
    assert [args[1] for args in no_server] == ["127.0.0.1", "localhost", "0.0.0.0"]


def test_printed_url_is_usable_and_exposure_is_announced():
    from st4r_cli.viz.viewer import exposure_warning, viewer_url

    assert viewer_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert viewer_url("::", 8080) == "http://[::1]:8080"
    assert viewer_url("fe80::1", 81) == "http://[fe80::1]:81"
    assert viewer_url("localhost", 8080) == "http://localhost:8080"
    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        warning = exposure_warning(host)
        assert warning and "other machines" in warning and "\n" not in warning


def test_origin_guard_for_loopback_and_specific_hosts():
    from st4r_cli.viz.viewer import OriginGuard

    guard = OriginGuard("127.0.0.1")
    for origin in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://LOCALHOST:8080"):
        assert guard.allows(origin, "127.0.0.1:8080", 8080), origin
    for origin in ("http://evil.example", "http://evil.example:8080", "http://127.0.0.1:8081", "null",
                   "https://127.0.0.1:8080", "http://127.0.0.1", "http://127.0.0.1:notaport", ""):
        assert not guard.allows(origin, "127.0.0.1:8080", 8080), origin
    assert not guard.allows("http://evil.example:8080", "evil.example:8080", 8080)  # DNS rebinding
    lan = OriginGuard("192.168.1.5")
    assert lan.allows("http://192.168.1.5:80", "192.168.1.5", 80)
    assert not lan.allows("http://localhost:80", "localhost", 80)


def test_origin_guard_for_every_interface_wants_the_page_served_here():
    import socket

    from st4r_cli.viz.viewer import OriginGuard

    guard = OriginGuard("0.0.0.0")
    assert guard.allows("http://192.168.1.5:8080", "192.168.1.5:8080", 8080)
    assert guard.allows("http://127.0.0.1:8080", "127.0.0.1:8080", 8080)
    name = socket.gethostname().lower()
    assert guard.allows(f"http://{name}:8080", f"{name}:8080", 8080)
    assert not guard.allows("http://192.168.1.66:8080", "192.168.1.5:8080", 8080)  # another machine's page
    assert not guard.allows("http://evil.example:8080", "evil.example:8080", 8080)  # DNS rebinding
    assert not guard.allows("http://192.168.1.5:8080", None, 8080)


@pytest.fixture
def local_viewer(synthetic_run):
    """The real viewer on 127.0.0.1 (a free port); yields the port it serves on."""
    from st4r_cli.viz.viewer import open_viewer

    server, viewer = open_viewer(synthetic_run, "127.0.0.1", free_port())
    try:
        yield server.get_port()
    finally:
        viewer.stop()
        server.stop()


def open_websocket(port: int, origin: str | None) -> int:
    """Open the viewer's WebSocket (as viser's own client would) and return the handshake's status."""
    import viser
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", origin=origin, subprotocols=[f"viser-v{viser.__version__}"],
                 proxy=None, open_timeout=10, compression=None) as websocket:
        return websocket.response.status_code


def test_viewer_refuses_websockets_of_other_origins(local_viewer):
    from websockets.exceptions import InvalidStatus

    port = local_viewer
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null"):
        with pytest.raises(InvalidStatus) as refused:
            open_websocket(port, origin)
        assert refused.value.response.status_code == 403, origin
    assert open_websocket(port, f"http://127.0.0.1:{port}") == 101
    assert open_websocket(port, f"http://localhost:{port}") == 101
    assert open_websocket(port, None) == 101  # no Origin: not a browser


def test_viewer_still_serves_its_page(local_viewer):
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{local_viewer}", timeout=10) as response:
        assert response.status == 200 and b"<html" in response.read().lower()


def test_viewer_does_not_start_unguarded(synthetic_run, monkeypatch):
    """A viser that no longer starts its server through websockets.asyncio.server.serve: refused."""
    from contextlib import contextmanager

    import st4r_cli.viz.viewer as viewer_module
    from st4r_cli.errors import St4rError

    @contextmanager
    def nothing_guarded(guard):
        yield []

    monkeypatch.setattr(viewer_module, "_origin_checked", nothing_guarded)
    with pytest.raises(St4rError, match="origin"):
        viewer_module.open_viewer(synthetic_run, "127.0.0.1", free_port())
