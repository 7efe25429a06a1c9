"""The backend's downlink keys as files: Ed25519 in PEM.

The public key (what the agent's site file names as `downlink.backend_key`) is PEM
SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``), as `openssl pkey -pubout` writes
it; the private key (the backend's, never on an agent) is unencrypted PKCS#8 PEM
(``-----BEGIN PRIVATE KEY-----``), mode 0600. `openssl genpkey -algorithm ed25519`
makes the same files as `kommune downlink keygen`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

PRIVATE_NAME = "downlink-signing.key"
PUBLIC_NAME = "downlink-signing.pub"


class KeyFileError(ValueError):
    """A key file that cannot be used: one line naming the file."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None


def load_public(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at `path`."""
    data = _read(path)
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__.removeprefix('_')}, not Ed25519")
    return key


def load_private(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at `path` (unencrypted PKCS#8)."""
    data = _read(path)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(
            f"{path}: not an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__.removeprefix('_')}, not Ed25519")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def write_pair(folder: Path) -> tuple[Path, Path]:
    """A new key pair in `folder`: (private, public). The private file is created with
    mode 0600 and never overwritten (FileExistsError)."""
    key = Ed25519PrivateKey.generate()
    private, public = folder / PRIVATE_NAME, folder / PUBLIC_NAME
    if public.exists():
        raise FileExistsError(f"{public} exists already")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem(key))
    public.write_bytes(public_pem(key.public_key()))
    return private, public
