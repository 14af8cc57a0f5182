"""Official-dataset download (mac.data.download) against a local HTTP server, the
`mac data download` command, and train's download-or-generate fallback (ensure_dataset)."""

import argparse
import io
import os
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import make_episodes
from mac.cli import main as cli
from mac.data import DatasetError, parse_env_name, read_npz
from mac.data import download as dl
from mac.data.download import DownloadError, download_dataset

NAME = "cube-single-play-v0"


def _npz_bytes(arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _arrays(lengths, seed=0):
    """Tiny OGBench-format arrays (cube-single sizes: 28-D observations, 5-D actions)."""
    a = make_episodes(lengths, obs_dim=28, action_dim=5, seed=seed)
    n = len(a["terminals"])
    rng = np.random.default_rng(seed)
    a["qpos"] = rng.normal(size=(n, 14)).astype(np.float32)
    a["qvel"] = rng.normal(size=(n, 13)).astype(np.float32)
    return a


TRAIN = _npz_bytes(_arrays([5, 7], seed=1))
VAL = _npz_bytes(_arrays([4], seed=2))


class _Server:
    """routes: file name -> (status, body, Content-Length or None to send len(body), or "none"
    for no header). A "stall" body sends the headers and half the body, then waits."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        self.release = threading.Event()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                srv.requests.append(name)
                if name not in srv.routes:
                    self.send_error(404, "Not Found")
                    return
                status, body, length = srv.routes[name]
                stall = length == "stall"
                self.send_response(status)
                if length != "none":
                    self.send_header("Content-Length", str(len(body) if length in (None, "stall") else length))
                self.end_headers()
                if stall:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    srv.release.wait(5)
                    return
                self.wfile.write(body)  # then HTTP/1.0: the server closes the connection

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)
        self.thread.start()

    def serve_dataset(self, name=NAME, train=TRAIN, val=VAL):
        self.routes[f"{name}.npz"] = (200, train, None)
        self.routes[f"{name}-val.npz"] = (200, val, None)

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    import ogbench.utils
    s = _Server()
    monkeypatch.setattr(ogbench.utils, "DATASET_URL", s.url)
    yield s
    s.close()


def _closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/datasets"


# ------------------------------------------------------------------------------ download_dataset

def test_download_gives_the_served_files(server, tmp_path, capsys):
    server.serve_dataset()
    d = tmp_path / "new" / "dir"          # created on demand
    train, val = download_dataset(NAME, d)  # progress=True: bar and message on stderr
    assert (train, val) == (d / f"{NAME}.npz", d / f"{NAME}-val.npz")
    assert train.read_bytes() == TRAIN and val.read_bytes() == VAL
    assert sorted(os.listdir(d)) == sorted([train.name, val.name])   # no temp files left
    assert server.requests == [f"{NAME}.npz", f"{NAME}-val.npz"]
    np.testing.assert_array_equal(read_npz(train)["observations"], _arrays([5, 7], seed=1)["observations"])
    assert f"{server.url}/{NAME}.npz" in capsys.readouterr().err


def test_download_without_content_length_and_skips_present_files(server, tmp_path):
    server.routes[f"{NAME}-val.npz"] = (200, VAL, "none")
    (tmp_path / f"{NAME}.npz").write_bytes(TRAIN)
    download_dataset(NAME, tmp_path, progress=False)
    assert server.requests == [f"{NAME}-val.npz"]          # the present train file is kept
    assert (tmp_path / f"{NAME}-val.npz").read_bytes() == VAL


def test_url_argument_overrides_dataset_url(server, tmp_path, monkeypatch):
    import ogbench.utils
    server.serve_dataset()
    monkeypatch.setattr(ogbench.utils, "DATASET_URL", _closed_port_url())
    download_dataset(NAME, tmp_path, progress=False, url=server.url + "/")
    assert (tmp_path / f"{NAME}.npz").read_bytes() == TRAIN


def test_connection_closed_mid_file_leaves_nothing(server, tmp_path):
    server.serve_dataset()
    server.routes[f"{NAME}.npz"] = (200, TRAIN, len(TRAIN) + 1000)   # promises more than it sends
    with pytest.raises(DownloadError, match="incomplete download") as e:
        download_dataset(NAME, tmp_path, progress=False)
    assert f"{server.url}/{NAME}.npz" in str(e.value)
    assert f"received {len(TRAIN)} of {len(TRAIN) + 1000} bytes" in str(e.value)
    assert os.listdir(tmp_path) == []                       # neither final name nor temp file


def test_truncated_val_keeps_complete_train_only(server, tmp_path):
    server.serve_dataset()
    server.routes[f"{NAME}-val.npz"] = (200, VAL[:-50], len(VAL))
    with pytest.raises(DownloadError, match="-val.npz: incomplete download"):
        download_dataset(NAME, tmp_path, progress=False)
    assert os.listdir(tmp_path) == [f"{NAME}.npz"]
    assert (tmp_path / f"{NAME}.npz").read_bytes() == TRAIN


def test_http_404_names_the_url(server, tmp_path):
    with pytest.raises(DownloadError) as e:
        download_dataset("cube-nope-play-v0", tmp_path, progress=False)
    msg = str(e.value)
    assert f"{server.url}/cube-nope-play-v0.npz" in msg and "404" in msg
    assert isinstance(e.value, DatasetError)
    assert os.listdir(tmp_path) == []


def test_unreachable_server_names_the_url(tmp_path):
    url = _closed_port_url()
    with pytest.raises(DownloadError, match="cannot connect") as e:
        download_dataset(NAME, tmp_path, progress=False, url=url)
    assert f"{url}/{NAME}.npz" in str(e.value)
    assert os.listdir(tmp_path) == []


def _flip_byte_in_observations(body):
    obs = _arrays([5, 7], seed=1)["observations"].tobytes()
    i = body.index(obs) + len(obs) // 2
    return body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]


@pytest.mark.parametrize("body, match", [
    (b"<html>Service unavailable</html>" * 20, "not a readable .npz"),
    (_npz_bytes({"observations": np.zeros((3, 28), np.float32)}), r"missing key\(s\) \['actions', 'terminals'\]"),
    (_npz_bytes({**_arrays([5]), "actions": np.zeros((4, 5), np.float32)}), "mismatched arrays"),
    (_flip_byte_in_observations(TRAIN), "corrupt"),
])
def test_invalid_npz_is_rejected_and_not_left_behind(server, tmp_path, body, match):
    server.serve_dataset(train=body)
    with pytest.raises(DownloadError, match=match) as e:
        download_dataset(NAME, tmp_path, progress=False)
    assert f"{server.url}/{NAME}.npz" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_stalled_server_times_out(server, tmp_path):
    server.routes[f"{NAME}.npz"] = (200, TRAIN, "stall")
    with pytest.raises(DownloadError, match="timed out"):
        download_dataset(NAME, tmp_path, progress=False, timeout=0.3)
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_removes_the_temp_file(server, tmp_path, monkeypatch):
    server.serve_dataset()
    real_urlopen = urllib.request.urlopen
    seen = {}

    class Interrupting:
        def __init__(self, response):
            self.response, self.headers, self.reads = response, response.headers, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.response.close()

        def read(self, n):
            self.reads += 1
            if self.reads == 2:
                seen["files"] = os.listdir(tmp_path)   # the temp file exists at this point
                raise KeyboardInterrupt
            return self.response.read(n)

    monkeypatch.setattr(dl, "CHUNK_BYTES", 256)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Interrupting(real_urlopen(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        download_dataset(NAME, tmp_path, progress=False)
    assert len(seen["files"]) == 1 and seen["files"][0].endswith(".part")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ mac data download

def test_cli_download_maps_env_names_and_returns_0(server, tmp_path, capsys):
    server.serve_dataset()
    rc = cli(["data", "download", "--env_name", "cube-single-play-singletask-task2-v0",
              "--dataset_dir", str(tmp_path), "--no_progress"])
    assert rc == 0
    assert (tmp_path / f"{NAME}.npz").read_bytes() == TRAIN
    assert (tmp_path / f"{NAME}-val.npz").read_bytes() == VAL
    assert str(tmp_path / f"{NAME}.npz") in capsys.readouterr().out


def test_cli_download_failure_returns_2(server, tmp_path, capsys):
    rc = cli(["data", "download", "--env_name", "cube-single-play-oraclerep-v0",
              "--dataset_dir", str(tmp_path), "--no_progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("mac data download: error: ")
    assert f"{server.url}/{NAME}.npz" in err and "404" in err
    assert cli(["data", "download", "--env_name", "cube", "--dataset_dir", str(tmp_path)]) == 2
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ train's fallback

@pytest.fixture
def home(tmp_path, monkeypatch):
    """The default dataset dir ~/.ogbench/data inside tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path / ".ogbench" / "data"


@pytest.fixture
def fake_generate(monkeypatch):
    calls = []

    def fake(name, num_episodes, save_dir, **kw):
        calls.append((name, num_episodes, save_dir))
        return None

    monkeypatch.setattr("mac.data.generate.generate_dataset", fake)
    return calls


def _train_args(*argv):
    from mac.train import parse_train_args
    args, _, _ = parse_train_args(["--no_progress", "--generate_episodes", "3", *argv])
    return args


SPEC = parse_env_name("cube-single-play-singletask-task2-v0")


def test_ensure_dataset_downloads_into_default_dir(server, home, fake_generate):
    from mac.train import ensure_dataset
    server.serve_dataset()
    ensure_dataset(_train_args(), SPEC)
    assert (home / f"{NAME}.npz").read_bytes() == TRAIN
    assert (home / f"{NAME}-val.npz").read_bytes() == VAL
    assert fake_generate == []


def test_ensure_dataset_falls_back_to_generation_with_one_message(home, fake_generate, monkeypatch, capsys):
    import ogbench.utils
    from mac.train import ensure_dataset
    url = _closed_port_url()
    monkeypatch.setattr(ogbench.utils, "DATASET_URL", url)
    ensure_dataset(_train_args(), SPEC)
    assert fake_generate == [(NAME, 3, str(home))]
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("[mac]") == 1
    assert "official download" in text and "failed" in text
    assert f"{url}/{NAME}.npz" in text                     # the reason
    assert "generating 3 episodes locally instead with OGBench's scripted oracle" in text
    assert "not comparable with published" in text.lower()
    assert not home.exists() or not any(home.iterdir())


def test_ensure_dataset_no_download_flag(server, home, fake_generate, capsys):
    from mac.train import ensure_dataset
    server.serve_dataset()
    ensure_dataset(_train_args("--no_download"), SPEC)
    assert server.requests == []
    assert fake_generate == [(NAME, 3, str(home))]
    assert "download" not in capsys.readouterr().err


def test_ensure_dataset_explicit_dir_is_an_error(server, home, tmp_path, fake_generate):
    from mac.train import ensure_dataset
    server.serve_dataset()
    with pytest.raises(DatasetError, match="not found"):
        ensure_dataset(_train_args("--dataset_dir", str(tmp_path / "mine")), SPEC)
    assert server.requests == [] and fake_generate == []


def test_ensure_dataset_generate_0_reports_the_download_failure(server, home, fake_generate):
    from mac.train import ensure_dataset
    with pytest.raises(DatasetError, match="official download failed: .*404"):
        ensure_dataset(_train_args("--generate_episodes", "0"), SPEC)
    assert fake_generate == []
    with pytest.raises(DatasetError, match="not found"):
        ensure_dataset(_train_args("--generate_episodes", "0", "--no_download"), SPEC)
    assert server.requests == [f"{NAME}.npz"]


def test_ensure_dataset_uses_present_files(server, home, fake_generate):
    from mac.train import ensure_dataset
    home.mkdir(parents=True)
    (home / f"{NAME}.npz").write_bytes(TRAIN)
    (home / f"{NAME}-val.npz").write_bytes(VAL)
    ensure_dataset(_train_args(), SPEC)
    assert server.requests == [] and fake_generate == []


def test_no_download_flag_help():
    from mac.train import add_arguments
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert "never try to download the official files" in p.format_help()
