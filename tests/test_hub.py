"""The Hugging Face Hub path of SeCuModel, offline: the real hub client against a real HF cache
layout and against a small local HTTP server that speaks the Hub's upload endpoints.

huggingface_hub reads HF_HOME, HF_HUB_OFFLINE and HF_ENDPOINT once, when it is imported, so
every case runs in a fresh Python process with its own environment. Nothing here reaches the
network: the endpoint is always 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from factories import tiny_digit_model
from huggingface_hub import ModelCard
from safetensors.torch import load as load_safetensors

from secu_plugin.models import SeCuModel

REPO_ID = "secu-tests/secu-digits"
COMMIT = "3f1c0c4e2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e"
SUBPROCESS_TIMEOUT = 180

LOAD_SCRIPT = r"""
import json, sys
import torch
import huggingface_hub.constants as hub_constants
from secu_plugin.models import SeCuModel

request = json.loads(sys.argv[1])
report = {"offline": hub_constants.HF_HUB_OFFLINE, "endpoint": hub_constants.ENDPOINT}
if request.get("repo_id"):
    model = SeCuModel.from_pretrained(request["repo_id"])
    ids, confidence = model.predict(torch.load(request["inputs"]), head=request["head"])
    report.update(ids=ids.tolist(), confidence=confidence.tolist(), config=model.config)
report["errors"] = {}
for missing in request.get("missing", []):
    try:
        SeCuModel.from_pretrained(missing)
    except Exception as error:
        report["errors"][missing] = {
            "type": type(error).__name__,
            "is_file_not_found": isinstance(error, FileNotFoundError),
            "cause": type(error.__cause__).__name__,
            "message": str(error),
        }
    else:
        report["errors"][missing] = None
print("REPORT " + json.dumps(report))
"""

PUSH_SCRIPT = r"""
import json, sys
from secu_plugin.models import SeCuModel

request = json.loads(sys.argv[1])
model = SeCuModel.from_pretrained(request["model_dir"])
commit = model.push_to_hub(request["repo_id"], commit_message="Upload SeCu model")
print("REPORT " + json.dumps({"commit_url": commit.commit_url, "oid": commit.oid}))
"""


# ---------------------------------------------------------------------- helpers


def tiny_model() -> SeCuModel:
    model = tiny_digit_model(
        num_clusters=[10, 4], training={"command": "secu-train --data mnist5k", "epochs": 2}
    )
    with torch.no_grad():  # trained-looking centers, not the initial normalized ones
        for centers in model.centers:
            centers.copy_(torch.randn_like(centers) * 2)
    return model


def closed_port() -> int:
    """A local TCP port with nothing listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hub_env(hf_home: Path, endpoint: str, offline: bool, token: str | None = None) -> dict:
    """The environment of a subprocess that may only talk to ``endpoint`` (on 127.0.0.1)."""
    proxies = {"http_proxy", "https_proxy", "all_proxy"}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_")) and key.lower() not in proxies
    }
    env.update(
        HF_HOME=str(hf_home),
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_script(script: str, request: dict, env: dict, cwd: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps(request)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")]
    assert completed.returncode == 0 and lines, (
        f"exit {completed.returncode}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return json.loads(lines[-1][len("REPORT ") :])


def install_in_hf_cache(hf_home: Path, repo_id: str, files: dict[str, bytes], commit: str) -> Path:
    """Lays files out as ``hf_hub_download`` does: blobs, a snapshot of symlinks, refs/main."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        blob_name = hashlib.sha256(content).hexdigest()
        (repo_dir / "blobs" / blob_name).write_bytes(content)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob_name))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)  # a commit hash, no trailing newline
    return snapshot


def saved_files(model: SeCuModel, directory: Path) -> dict[str, bytes]:
    model.save_pretrained(directory, repo_id=REPO_ID)
    return {path.name: path.read_bytes() for path in directory.iterdir()}


# ---------------------------------------------------------------------- cache / offline


@pytest.fixture
def cached_model(tmp_path):
    """A model installed in a tmp HF cache; its inputs and expected predictions."""
    model = tiny_model()
    hf_home = tmp_path / "hf_home"
    files = saved_files(model, tmp_path / "saved")
    install_in_hf_cache(hf_home, REPO_ID, files, COMMIT)
    inputs = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    torch.save(inputs, tmp_path / "inputs.pt")
    ids, confidence = model.predict(inputs, head=1)
    return {
        "model": model,
        "hf_home": hf_home,
        "inputs": str(tmp_path / "inputs.pt"),
        "ids": ids.tolist(),
        "confidence": confidence.tolist(),
    }


def check_missing_repo_error(error: dict, repo_id: str) -> None:
    assert error is not None, "loading a missing repo must fail"
    assert error["type"] == "PretrainedModelNotFoundError"
    assert error["is_file_not_found"]
    assert error["cause"] == "LocalEntryNotFoundError"  # chained, not shown as a stack
    message = error["message"]
    assert repo_id in message
    assert "Check the repo id" in message
    assert f"hf download {repo_id}" in message and "huggingface-cli download" in message
    assert "local directory" in message
    assert "Traceback" not in message


def test_from_pretrained_offline_reads_the_hf_cache(cached_model, tmp_path):
    env = hub_env(cached_model["hf_home"], f"http://127.0.0.1:{closed_port()}", offline=True)
    report = run_script(
        LOAD_SCRIPT,
        {
            "repo_id": REPO_ID,
            "inputs": cached_model["inputs"],
            "head": 1,
            "missing": ["secu-tests/not-there"],
        },
        env,
        tmp_path,
    )
    assert report["offline"] is True
    assert report["config"] == cached_model["model"].config
    assert report["ids"] == cached_model["ids"]
    assert report["confidence"] == pytest.approx(cached_model["confidence"], abs=1e-6)
    check_missing_repo_error(report["errors"]["secu-tests/not-there"], "secu-tests/not-there")


def test_from_pretrained_with_an_unreachable_hub_uses_the_cache(cached_model, tmp_path):
    """Not in offline mode, but nothing answers: a cached repo still loads.

    (A missing repo then fails with the same error as offline, after the client's retries,
    about 20 s, so that case is only checked in offline mode.)
    """
    env = hub_env(cached_model["hf_home"], f"http://127.0.0.1:{closed_port()}", offline=False)
    report = run_script(
        LOAD_SCRIPT,
        {"repo_id": REPO_ID, "inputs": cached_model["inputs"], "head": 1},
        env,
        tmp_path,
    )
    assert report["offline"] is False
    assert report["config"] == cached_model["model"].config
    assert report["ids"] == cached_model["ids"]


# ---------------------------------------------------------------------- push_to_hub


class FakeHub:
    """The Hub endpoints that ``push_to_hub`` uses, served on 127.0.0.1 from a thread.

    create repo, README metadata validation, preupload (every file "regular": no LFS) and the
    NDJSON commit, whose base64 file contents are kept in ``files``. Any other request is
    answered 404 and recorded in ``unexpected``.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []
        self.authorizations: set[str] = set()
        self.commit_oid = hashlib.sha1(b"secu commit").hexdigest()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                hub.unexpected.append(("GET", self.path))
                self._reply(404, {"error": "not served by the fake hub"})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                hub.requests.append(("POST", path))
                hub.authorizations.add(self.headers.get("authorization", ""))
                body = self._body()
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = f"{request['organization']}/{request['name']}"
                    self._reply(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                elif path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    try:
                        ModelCard(content)
                    except ValueError as error:
                        self._reply(400, {"errors": [{"message": str(error)}]})
                    else:
                        self._reply(200, {"errors": [], "warnings": []})
                elif match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
                    files = json.loads(body)["files"]
                    self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ]
                        },
                    )
                elif match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            assert item["value"]["encoding"] == "base64"
                            hub.files[item["value"]["path"]] = base64.b64decode(
                                item["value"]["content"]
                            )
                        elif item["key"] != "header":
                            hub.unexpected.append(("commit item", item["key"]))
                    self._reply(
                        200,
                        {
                            "commitUrl": f"{hub.endpoint}/{match.group(1)}/commit/{hub.commit_oid}",
                            "commitOid": hub.commit_oid,
                            "pullRequestUrl": None,
                        },
                    )
                else:
                    hub.unexpected.append(("POST", path))
                    self._reply(404, {"error": "not served by the fake hub"})

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("content-length", 0)))

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def test_push_to_hub_then_load_back_offline(fake_hub, tmp_path):
    hub = fake_hub
    model = tiny_model()
    model.save_pretrained(tmp_path / "local")
    env = hub_env(tmp_path / "hf_home_push", hub.endpoint, offline=False, token="dummy")
    report = run_script(
        PUSH_SCRIPT, {"model_dir": str(tmp_path / "local"), "repo_id": REPO_ID}, env, tmp_path
    )
    assert hub.unexpected == []
    assert ("POST", "/api/repos/create") in hub.requests
    assert ("POST", "/api/validate-yaml") in hub.requests  # the client checked the card's YAML
    assert ("POST", f"/api/models/{REPO_ID}/preupload/main") in hub.requests
    assert ("POST", f"/api/models/{REPO_ID}/commit/main") in hub.requests
    assert hub.authorizations == {"Bearer dummy"}
    assert report["oid"] == hub.commit_oid

    # What arrived: config, weights and our model card.
    assert sorted(hub.files) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(hub.files["config.json"]) == model.config
    weights = load_safetensors(hub.files["model.safetensors"])
    expected_weights = model.state_dict()
    assert weights.keys() == expected_weights.keys()
    for key, value in expected_weights.items():
        assert torch.equal(weights[key], value), key
    card = hub.files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["library_name"] == "secu-plugin"
    assert metadata["pipeline_tag"] == "image-feature-extraction"
    assert "model-index" not in metadata  # the model was not evaluated
    assert f'SeCuModel.from_pretrained("{REPO_ID}")' in card  # the card names the pushed repo
    assert "secu-train --data mnist5k" in card

    # Load the pushed files back through the HF cache, offline, as after a download.
    hf_home = tmp_path / "hf_home_load"
    install_in_hf_cache(hf_home, REPO_ID, hub.files, hub.commit_oid)
    inputs = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    torch.save(inputs, tmp_path / "inputs.pt")
    env = hub_env(hf_home, f"http://127.0.0.1:{closed_port()}", offline=True)
    loaded = run_script(
        LOAD_SCRIPT,
        {"repo_id": REPO_ID, "inputs": str(tmp_path / "inputs.pt"), "head": 0},
        env,
        tmp_path,
    )
    ids, confidence = model.predict(inputs, head=0)
    assert loaded["config"] == model.config
    assert loaded["ids"] == ids.tolist()
    assert loaded["confidence"] == pytest.approx(confidence.tolist(), abs=1e-6)
