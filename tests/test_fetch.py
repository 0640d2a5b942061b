"""python -m model.fetch: the weight files a config names, downloaded from a local server standing in for the
publishers (tiny files in the official layouts), verified, and put in place atomically."""

import hashlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from model import fetch
from model.fetch import Source
from model.teachers import build_clip_tower
from tests.test_model_encoder import official_dinov2_state
from util.errors import ConfigError, WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")


def saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def clip_state(seed: int = 0) -> dict:
    """OpenAI's CLIP layout (ViT-L-14.pt's keys) for the tiny tower, fp16 as released: visual.* and a text tower."""
    torch.manual_seed(seed)
    state = {f"visual.{k}": v.half() for k, v in build_clip_tower("tiny", 224).state_dict().items()}
    state.update({"positional_embedding": torch.zeros(77, 32).half(), "text_projection": torch.zeros(32, 32).half(),
                  "logit_scale": torch.tensor(4.6052), "token_embedding.weight": torch.zeros(100, 32).half(),
                  "ln_final.weight": torch.ones(32).half(), "ln_final.bias": torch.zeros(32).half()})
    return state


DINO = saved(official_dinov2_state())
CLIP = saved(clip_state())
OTHER_CLIP = saved(clip_state(seed=1))  # a CLIP file of the right layout, but not the published one
GARBAGE = b"not a weight file " * 100


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}  # path -> ok | short | half | half_chunked | reset
        self.requests: list[tuple[str, str]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        self.close_connection = True
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        mode = self.server.modes.get(self.path, "ok")
        self.send_response(200)
        if mode == "half_chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:  # "short": the whole file, announced 100 bytes longer than it is
            self.send_header("Content-Length", str(len(data) + (100 if mode == "short" else 0)))
        self.end_headers()
        if not body:
            return
        half = len(data) // 2
        if mode == "ok" or mode == "short":
            self.wfile.write(data)
        elif mode == "half_chunked":  # one chunk announced, half of it sent
            self.wfile.write(f"{len(data):x}\r\n".encode() + data[:half])
        else:
            self.wfile.write(data[:half])
            if mode == "reset":
                self.abort()
        # "half", "half_chunked": the connection is closed in order here, after half the file

    def abort(self) -> None:
        """Drop the connection half-way: a reset, no orderly end."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


@pytest.fixture
def server(monkeypatch):
    """A local publisher serving the tiny DINOv2 and CLIP files, and fetch's URL table pointed at it."""
    srv = Server()
    srv.files = {"/dinov2/dinov2_tiny.pth": DINO, "/clip/ViT-tiny.pt": CLIP}
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    dino = Source("DINOv2 tiny", "dinov2", "tiny", srv.url("/dinov2/dinov2_tiny.pth"), names=("dinov2_tiny.pth",))
    clip = Source("CLIP tiny", "clip", "tiny", srv.url("/clip/ViT-tiny.pt"), sha256=hashlib.sha256(CLIP).hexdigest(),
                  names=("ViT-tiny.pt",))
    monkeypatch.setattr(fetch, "DINOV2", {"tiny": dino})
    monkeypatch.setattr(fetch, "CLIP", {"tiny": clip})
    yield srv
    srv.shutdown()
    srv.server_close()


def paths(folder: Path) -> dict[str, Path]:
    return {"student": folder / "dinov2_tiny.pth", "dino": folder / "dino_teacher.pth", "clip": folder / "ViT-tiny.pt"}


def run(folder: Path, *args: str) -> int:
    """model.fetch with configs/loveda.yaml, tiny architectures, its three files in `folder`."""
    p = paths(folder)
    return fetch.main(["model.backbone=tiny", "teachers.dino.arch=tiny", "teachers.clip.arch=tiny",
                       f"model.pretrained={p['student']}", f"teachers.dino.weights={p['dino']}",
                       f"teachers.clip.weights={p['clip']}", *args])


def listing(folder: Path) -> list[str]:
    """Every name in `folder`, hidden temporaries included."""
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def fetch_args(*overrides: str):
    import argparse

    return argparse.Namespace(config=str(fetch.DEFAULT_CONFIG), overrides=list(overrides))


def test_the_url_table_names_the_publishers_files():
    assert {size: s.url for size, s in fetch.DINOV2.items()} == {
        size: f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{short}/dinov2_{short}_pretrain.pth"
        for size, short in (("small", "vits14"), ("base", "vitb14"), ("large", "vitl14"), ("giant", "vitg14"))}
    assert all(s.sha256 is None for s in fetch.DINOV2.values())  # Meta publishes none: checked by loading
    clip = fetch.CLIP["ViT-L-14"]
    assert clip.url.endswith("/ViT-L-14.pt") and clip.sha256 == clip.url.split("/")[-2] and len(clip.sha256) == 64
    # The shipped configs' files each have a source.
    entries, _ = fetch.plan(fetch.config_from_args(fetch_args()), None, None)
    assert [(e.target.name, e.source.what if e.source else None) for e in entries] == [
        ("dinov2_small.pth", "DINOv2 ViT-S/14"), ("dinov2_base.pth", "DINOv2 ViT-B/14"),
        ("ViT-L-14.pt", "OpenAI CLIP ViT-L/14")]


def test_a_clean_fetch_puts_every_file_in_place_verified(server, tmp_path, capsys):
    folder = tmp_path / "weights"
    assert run(folder) == 0
    p = paths(folder)
    assert p["student"].read_bytes() == DINO and p["dino"].read_bytes() == DINO and p["clip"].read_bytes() == CLIP
    assert listing(folder) == sorted(q.name for q in p.values())  # no temporaries left
    assert sorted(server.gets()) == ["/clip/ViT-tiny.pt", "/dinov2/dinov2_tiny.pth", "/dinov2/dinov2_tiny.pth"]
    out = capsys.readouterr().out
    assert "loads as DINOv2 tiny" in out and "SHA-256 matches" in out and "3 fetched" in out


def test_a_file_unlike_the_published_one_is_refused_and_nothing_is_left(server, tmp_path):
    folder = tmp_path / "weights"
    server.files["/clip/ViT-tiny.pt"] = OTHER_CLIP  # loads as CLIP tiny: only the digest tells
    with pytest.raises(WeightsError, match=r"teachers.clip.weights: the file at .* is not the expected CLIP tiny "
                                           r"\(its SHA-256 is .*published.*nothing was saved") as e:
        run(folder, "--only", "clip")
    assert "\n" not in str(e.value)
    assert listing(folder) == []

    server.files["/dinov2/dinov2_tiny.pth"] = GARBAGE  # no digest published: the load check tells
    with pytest.raises(WeightsError, match=r"model.pretrained: the file at .* is not the expected DINOv2 tiny"):
        run(folder, "--only", "student")
    assert listing(folder) == []


def test_a_transfer_shorter_than_announced_is_refused(server, tmp_path):
    folder = tmp_path / "weights"
    server.modes["/dinov2/dinov2_tiny.pth"] = "short"  # the whole file, which loads; 100 bytes fewer than announced
    with pytest.raises(WeightsError, match=rf"got {len(DINO)} bytes of the {len(DINO) + 100} the server announced"):
        run(folder, "--only", "student")
    assert listing(folder) == []


@pytest.mark.parametrize("mode, reason", [
    ("half", rf"got {len(DINO) // 2} bytes of the {len(DINO)} the server announced"),  # urllib reads it as the end
    ("half_chunked", "the connection ended before the file did"),
    ("reset", "Connection reset by peer"),
])
def test_an_interrupted_transfer_leaves_nothing_and_keeps_the_old_file(server, tmp_path, mode, reason):
    folder = tmp_path / "weights"
    server.modes["/dinov2/dinov2_tiny.pth"] = mode  # the server drops the connection half-way
    with pytest.raises(WeightsError, match=rf"model.pretrained: downloading .* failed \({reason}.*\); nothing was "
                                           rf"saved as {folder / 'dinov2_tiny.pth'}. Run the command again"):
        run(folder, "--only", "student")
    assert listing(folder) == []

    paths(folder)["student"].write_bytes(GARBAGE)  # replacing: the old file stays until a good one is in
    with pytest.raises(WeightsError, match=reason):
        run(folder, "--only", "student", "--replace")
    assert listing(folder) == ["dinov2_tiny.pth"] and paths(folder)["student"].read_bytes() == GARBAGE


def test_a_different_file_there_is_refused_unless_replace(server, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    p = paths(folder)
    p["student"].write_bytes(GARBAGE)
    p["clip"].write_bytes(OTHER_CLIP)
    with pytest.raises(WeightsError) as e:
        run(folder)
    message = str(e.value)
    assert "\n" not in message and message.endswith("move them away or pass --replace")
    assert f"{p['student']} (model.pretrained) is not the official DINOv2 tiny" in message
    assert f"{p['clip']} (teachers.clip.weights) is not the official CLIP tiny: its SHA-256" in message
    assert server.requests == []  # refused before anything was downloaded
    assert p["student"].read_bytes() == GARBAGE and p["clip"].read_bytes() == OTHER_CLIP
    assert not p["dino"].exists()

    assert run(folder, "--replace") == 0
    assert p["student"].read_bytes() == DINO and p["dino"].read_bytes() == DINO and p["clip"].read_bytes() == CLIP
    assert listing(folder) == sorted(q.name for q in p.values())


def test_a_good_file_there_is_kept_without_a_request(server, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    p = paths(folder)
    p["clip"].write_bytes(CLIP)
    before = p["clip"].stat().st_mtime_ns
    assert run(folder) == 0
    assert "/clip/ViT-tiny.pt" not in [path for _, path in server.requests]
    assert server.gets() == ["/dinov2/dinov2_tiny.pth", "/dinov2/dinov2_tiny.pth"]
    assert p["clip"].stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert f"teachers.clip.weights: {p['clip']} already there (SHA-256 matches)" in out
    assert "1 already there, 2 fetched" in out


def test_offline_with_every_file_there_touches_no_network(server, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    for name, path in paths(folder).items():
        path.write_bytes(CLIP if name == "clip" else DINO)

    def no_network(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert run(folder) == 0
    assert server.requests == []
    assert "ok: 3 weight files in place (3 already there, 0 fetched)" in capsys.readouterr().out


def test_dest_puts_the_files_into_one_folder_under_the_configs_names(server, tmp_path, capsys):
    dest = tmp_path / "elsewhere"
    assert run(tmp_path / "weights", "--dest", str(dest), "--only", "student,clip") == 0
    assert listing(dest) == ["ViT-tiny.pt", "dinov2_tiny.pth"] and listing(tmp_path / "weights") == []
    assert f"pass model.pretrained={dest / 'dinov2_tiny.pth'}" in capsys.readouterr().out


def test_a_file_with_no_known_source_is_one_line_saying_where_to_put_it(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch, "CLIP", {})
    folder = tmp_path / "weights"
    with pytest.raises(WeightsError, match="1 weight file to put in place by hand"):
        run(folder)
    out = capsys.readouterr().out
    assert (f"teachers.clip.weights: no known download for CLIP tiny; put the file at {paths(folder)['clip']} by "
            f"hand (pretrained/README.md)") in out
    assert listing(folder) == ["dino_teacher.pth", "dinov2_tiny.pth"]  # the others were fetched


def test_a_file_named_for_another_size_is_a_config_error(tmp_path):
    # model.backbone=base with the default model.pretrained (dinov2_small.pth): fetching ViT-B/14 under that name
    # would mislead; nothing is touched.
    with pytest.raises(ConfigError, match=r"model.pretrained: dinov2_small.pth is the name of the DINOv2 ViT-S/14 "
                                          r"file, but model.backbone asks for DINOv2 ViT-B/14; point model.pretrained "
                                          r"at .*dinov2_base.pth"):
        fetch.main(["--dest", str(tmp_path), "model.backbone=base"])
    with pytest.raises(ConfigError, match="--only: this config reads no teachers.clip.weights"):
        fetch.main(["--dest", str(tmp_path), "--only", "clip", "train.method=fixmatch"])
    with pytest.raises(ConfigError, match="--only dinov3: choose from student, dino, clip"):
        fetch.main(["--dest", str(tmp_path), "--only", "dinov3"])
    assert listing(tmp_path) == []


def test_what_a_killed_fetch_left_is_cleared_by_the_next(server, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    left = [folder / f".dinov2_tiny.pth.{dead}.tmp", folder / f".dinov2_tiny.pth.{dead}.tmp.{'a' * 32}.partial"]
    for path in left:
        path.write_bytes(DINO[:100])
    assert run(folder, "--only", "student") == 0
    assert listing(folder) == ["dinov2_tiny.pth"]


def test_ctrl_c_mid_transfer_leaves_nothing(server, tmp_path, monkeypatch):
    import torch.hub
    from tqdm import tqdm

    class Interrupted(tqdm):
        def update(self, n=1):  # the user presses Ctrl-C once the first bytes are written
            raise KeyboardInterrupt

    monkeypatch.setattr(torch.hub, "tqdm", Interrupted)
    folder = tmp_path / "weights"
    with pytest.raises(KeyboardInterrupt):
        run(folder, "--only", "student")
    assert server.gets() == ["/dinov2/dinov2_tiny.pth"]
    assert listing(folder) == []


@pytest.mark.slow
def test_the_command_line_errors_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "model.fetch", "--dest", str(tmp_path), "--only", "dinov3"],
                          cwd=Path(fetch.__file__).resolve().parents[1], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: --only dinov3: choose from student, dino, clip (comma-separated)\n"
