"""`cfa serve`'s bearer token and TLS, over real HTTP against server subprocesses: off loopback a token is
asked on every endpoint but /health and the page; --token-file and CFA_SERVE_TOKEN give it; TLS with a
certificate made here. The token's and the files' checks run in process."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from serving import SERVE_MISSING, SERVE_TESTS, running_server, trained_model  # noqa: F401  (a fixture)

pytestmark = SERVE_TESTS
if not SERVE_MISSING:
    import httpx

    from cfa_anomaly.config import ConfigError
    from cfa_anomaly.serve.auth import TOKEN_ENV, is_loopback, resolve_access
    from cfa_anomaly.serve.tls import checked_tls

TOKEN = "s3cret-token_for.tests~"


@pytest.fixture(scope="module")
def exposed(trained, tmp_path_factory):
    """A server bound to 0.0.0.0 with no token given: it makes one and prints it once."""
    log_path = tmp_path_factory.mktemp("serve_exposed") / "server.log"
    with running_server(trained[0], log_path, "--no-access-log", host="0.0.0.0") as server:
        found = re.findall(r"this run's token \(send `Authorization: Bearer <token>`\): (\S+)", server.log())
        assert len(found) == 1, server.log()
        yield server, found[0]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key, made here with the openssl command."""
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    curve = "ec_paramgen_curve:prime256v1"
    command = ["openssl", "req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", curve,
               "-keyout", str(keyfile), "-out", str(certfile), "-days", "1", "-subj", "/CN=127.0.0.1",
               "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the TLS tests need the openssl command in CI")
        pytest.skip("no openssl command to make a test certificate")
    return certfile, keyfile


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorised(response, invalid: bool) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "unauthorized" and body["status"] == 401 and body["reason"]
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and ('error="invalid_token"' in challenge) == invalid


def test_off_loopback_every_endpoint_asks_for_the_token(exposed, trained):
    server, token = exposed
    image = trained[1][0].read_bytes()
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        for method, path in (("GET", "/model"), ("POST", "/predict"), ("POST", "/predict/batch"),
                             ("GET", "/openapi.json"), ("GET", "/nowhere")):
            body = image if method == "POST" else None
            assert_unauthorised(client.request(method, path, content=body), False)
            assert_unauthorised(client.request(method, path, headers=bearer(token + "x")), True)
        assert_unauthorised(client.get("/model", headers={"Authorization": f"Basic {token}"}), False)
        assert client.get("/health").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert client.get("/model", headers=bearer(token)).json()["model_id"].startswith("synth-")
        answer = client.post("/predict", content=image, headers=bearer(token))
        assert answer.status_code == 200 and answer.json()["score"] > 0
        batch = client.post("/predict/batch", files=[("files", ("a.png", image))], headers=bearer(token))
        assert batch.status_code == 200 and batch.json()["results"][0]["ok"]


def test_a_refused_upload_is_answered_not_reset(exposed):
    """A client still sending a large body without the token reads the 401, not a broken connection."""
    server, _ = exposed
    body = b"\0" * (3 << 20)
    assert_unauthorised(httpx.post(f"{server.base_url}/predict", content=body, timeout=60.0), False)


def test_the_startup_log_says_what_is_protected(exposed):
    log = exposed[0].log()
    assert "bearer token (generated) required on every endpoint except /health and the page" in log
    assert "TLS off: the token and the images cross the network unencrypted" in log
    assert log.count(exposed[1]) == 1  # printed once, never logged again


def test_token_file_is_enforced_on_loopback_too(trained, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with running_server(trained[0], tmp_path / "server.log", "--token-file", str(token_file)) as server, \
            httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        assert_unauthorised(client.get("/model"), False)
        assert_unauthorised(client.get("/model", headers=bearer("wrong")), True)
        assert client.get("/model", headers=bearer(TOKEN)).status_code == 200
        assert client.get("/health").status_code == 200
        assert f"bearer token (--token-file {token_file})" in server.log()


def test_environment_token_over_tls(trained, tmp_path):
    certfile, keyfile = self_signed_certificate(tmp_path)
    with running_server(trained[0], tmp_path / "server.log", "--ssl-certfile", str(certfile), "--ssl-keyfile",
                        str(keyfile), env={TOKEN_ENV: TOKEN}, certfile=certfile) as server, \
            httpx.Client(base_url=server.base_url, timeout=60.0, verify=server.verify) as client:
        assert server.base_url.startswith("https://")
        assert_unauthorised(client.get("/model"), False)
        assert client.get("/model", headers=bearer(TOKEN)).status_code == 200
        image = trained[1][0].read_bytes()
        assert client.post("/predict", content=image, headers=bearer(TOKEN)).status_code == 200
        assert f"bearer token ({TOKEN_ENV})" in server.log()
        assert f"TLS on: certificate {certfile}" in server.log()
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port
            httpx.get(server.base_url.replace("https://", "http://") + "/health", timeout=10.0)
        with pytest.raises(httpx.TransportError):  # a client that does not trust the certificate
            httpx.get(server.base_url + "/health", timeout=10.0)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("LocalHost", True),
                                            ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
                                            ("10.0.0.1", False), ("my-host.example", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_where_the_token_comes_from(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    assert resolve_access("127.0.0.1", None, {}).token is None
    made = resolve_access("0.0.0.0", None, {})
    assert made.generated and len(made.token) >= 40 and made.token != resolve_access("::", None, {}).token
    assert resolve_access("0.0.0.0", None, {TOKEN_ENV: "from-env"}).token == "from-env"
    assert resolve_access("127.0.0.1", None, {TOKEN_ENV: "from-env"}).token == "from-env"
    assert resolve_access("0.0.0.0", token_file, {TOKEN_ENV: "from-env"}).token == TOKEN  # the option wins
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match=f"--token-file {re.escape(str(token_file))} is empty"):
        resolve_access("0.0.0.0", token_file, {})
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "missing"))):
        resolve_access("0.0.0.0", tmp_path / "missing", {})
    with pytest.raises(ConfigError, match=f"{TOKEN_ENV} is empty"):
        resolve_access("127.0.0.1", None, {TOKEN_ENV: " "})
    with pytest.raises(ConfigError, match="visible ASCII"):
        resolve_access("0.0.0.0", None, {TOKEN_ENV: "two words"})


def test_tls_files_are_checked_before_the_server_starts(trained, tmp_path, capsys):
    from cfa_anomaly import cli

    certfile, keyfile = self_signed_certificate(tmp_path)
    assert checked_tls(None, None) is None
    assert checked_tls(certfile, keyfile).uvicorn_options() == {"ssl_certfile": str(certfile),
                                                               "ssl_keyfile": str(keyfile)}
    with pytest.raises(ConfigError, match="needs --ssl-certfile"):
        checked_tls(None, keyfile)
    with pytest.raises(ConfigError, match=re.escape(str(certfile)) + ".*TLS"):
        checked_tls(certfile, certfile)  # a certificate where the key should be
    empty = tmp_path / "empty"
    empty.write_text("")
    cases = {"--ssl-certfile": (tmp_path / "nope.pem", keyfile),
             "--ssl-keyfile": (certfile, tmp_path / "nope.key")}
    for option, (cert, key) in cases.items():
        code = cli.main(["serve", "--checkpoint", str(trained[0]), "--ssl-certfile", str(cert),
                         "--ssl-keyfile", str(key)])
        error = capsys.readouterr().err
        assert code == 2 and f"{option} {tmp_path / 'nope'}" in error and "no such file" in error
    assert cli.main(["serve", "--checkpoint", str(trained[0]), "--token-file", str(empty)]) == 2
    assert f"--token-file {empty} is empty" in capsys.readouterr().err
