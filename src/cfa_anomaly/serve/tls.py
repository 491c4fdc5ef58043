"""TLS for the service: the certificate and key files uvicorn serves with, checked before it starts."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cfa_anomaly.config import ConfigError


@dataclass(frozen=True)
class Tls:
    """A PEM certificate (chain) and its private key (None: the key is in the certificate file)."""

    certfile: Path
    keyfile: Path | None = None

    def uvicorn_options(self) -> dict[str, str]:
        """uvicorn.run's ssl_certfile / ssl_keyfile."""
        options = {"ssl_certfile": str(self.certfile)}
        if self.keyfile is not None:
            options["ssl_keyfile"] = str(self.keyfile)
        return options


def _readable(path: Path, option: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{option} {path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{option} {path} is not a file")
    return path


def checked_tls(certfile: str | Path | None, keyfile: str | Path | None) -> Tls | None:
    """The TLS files, or None for plain HTTP; a missing file, a key without a certificate, or a pair that
    does not load is a ConfigError naming the file(s)."""
    if certfile is None:
        if keyfile is not None:
            raise ConfigError(f"--ssl-keyfile {keyfile} needs --ssl-certfile (the certificate it belongs to)")
        return None
    tls = Tls(_readable(Path(certfile), "--ssl-certfile"),
              None if keyfile is None else _readable(Path(keyfile), "--ssl-keyfile"))
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.certfile, tls.keyfile, password=lambda: b"")  # never a password prompt
    except (ssl.SSLError, OSError) as err:
        named = " and ".join(str(path) for path in (tls.certfile, tls.keyfile) if path is not None)
        raise ConfigError(f"cannot use {named} for TLS ({err}): give a PEM certificate (--ssl-certfile) and "
                          "its unencrypted private key (--ssl-keyfile)") from err
    return tls
