"""MUNGE, the cluster's proof of identity: encode and decode credentials through libmunge.

Every Slurm node runs munged with the cluster's shared key; a credential says which uid and gid
encoded it and carries a payload, expires after its TTL and decodes only once on a host (munged's
replay cache). This is a small ctypes binding to Debian's libmunge2 (no helper process: encoding
costs about 0.2 ms). ctypes and the library are loaded on first use, so importing this module is
cheap for programs that may never need it.
"""

from __future__ import annotations

import _thread
import ctypes
from enum import IntEnum
from typing import Any, NamedTuple

LIBRARY = "libmunge.so.2"
# munged's socket where the package puts it (munge.h's MUNGE_SOCKET_NAME).
DEFAULT_SOCKET = "/run/munge/munge.socket.2"
# Bounds a credential we are asked to decode: a header line, not a document.
MAX_CREDENTIAL = 16 * 1024


class Err(IntEnum):
    """munge_err_t, as in munge.h (the numbers are MUNGE's, shown by munge_strerror)."""

    SUCCESS = 0
    SNAFU = 1
    BAD_ARG = 2
    BAD_LENGTH = 3
    OVERFLOW = 4
    NO_MEMORY = 5
    SOCKET = 6
    TIMEOUT = 7
    BAD_CRED = 8
    BAD_VERSION = 9
    BAD_CIPHER = 10
    BAD_MAC = 11
    BAD_ZIP = 12
    BAD_REALM = 13
    CRED_INVALID = 14
    CRED_EXPIRED = 15
    CRED_REWOUND = 16
    CRED_REPLAYED = 17
    CRED_UNAUTHORIZED = 18


class _Opt(IntEnum):
    """munge_opt_t: the context options this module uses."""

    TTL = 4
    ENCODE_TIME = 6
    SOCKET = 8


# Errors that say the credential itself is bad (the caller's fault), not that munged is unwell.
CREDENTIAL_ERRORS = frozenset(
    {
        Err.BAD_CRED,
        Err.BAD_VERSION,
        Err.BAD_CIPHER,
        Err.BAD_MAC,
        Err.BAD_ZIP,
        Err.BAD_REALM,
        Err.BAD_LENGTH,
        Err.CRED_INVALID,
        Err.CRED_EXPIRED,
        Err.CRED_REWOUND,
        Err.CRED_REPLAYED,
        Err.CRED_UNAUTHORIZED,
    }
)


class MungeError(Exception):
    """libmunge refused: `code` is MUNGE's error, the message its words (one line)."""

    def __init__(self, code: int, message: str, uid: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # For an expired, rewound or replayed credential MUNGE still says whose it was.
        self.uid = uid

    @property
    def err(self) -> Err | None:
        try:
            return Err(self.code)
        except ValueError:
            return None

    @property
    def credential_fault(self) -> bool:
        """The credential is forged, expired, replayed...: not a problem of munged itself."""
        return self.code in CREDENTIAL_ERRORS


class MungeUnavailable(MungeError):
    """libmunge is not installed, or munged does not answer."""


class Decoded(NamedTuple):
    payload: bytes
    uid: int
    gid: int
    encoded_at: int  # seconds since the epoch, by the encoding host's clock
    ttl: int


# _thread's lock is threading's, without importing threading (rxctl exec's start-up).
_lock = _thread.allocate_lock()
_lib: Any = None
_libc: Any = None


def _library() -> Any:
    global _lib, _libc
    with _lock:
        if _lib is not None:
            return _lib
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as exc:
            raise MungeUnavailable(
                Err.SNAFU, f"MUNGE library {LIBRARY} not found (install libmunge2): {exc}"
            ) from None
        c_char_pp = ctypes.POINTER(ctypes.c_char_p)
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_create.argtypes = []
        lib.munge_ctx_destroy.restype = None
        lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_strerror.restype = ctypes.c_char_p
        lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
        lib.munge_strerror.restype = ctypes.c_char_p
        lib.munge_strerror.argtypes = [ctypes.c_int]
        # munge_ctx_set/get are variadic: only the fixed arguments are declared, the value is
        # passed as a C int or pointer by the caller below.
        lib.munge_ctx_set.restype = ctypes.c_int
        lib.munge_ctx_get.restype = ctypes.c_int
        lib.munge_encode.restype = ctypes.c_int
        lib.munge_encode.argtypes = [c_char_pp, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        lib.munge_decode.restype = ctypes.c_int
        lib.munge_decode.argtypes = [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.POINTER(ctypes.c_uint32),
        ]
        libc = ctypes.CDLL(None)
        libc.free.restype = None
        libc.free.argtypes = [ctypes.c_void_p]
        _lib, _libc = lib, libc
        return lib


def use_library(path: str) -> None:
    """Load libmunge from `path` rather than by name (the exec agent, in a container without it,
    gets the host's through a descriptor: /proc/self/fd/N). Before first use only."""
    global LIBRARY
    with _lock:
        if _lib is None:
            LIBRARY = path


def library_path() -> str | None:
    """The file libmunge was loaded from in this process (for the holder to hand to the agent);
    None if it cannot be loaded."""
    if not available():
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if "/libmunge.so" in path and path.startswith("/"):
                    return path
    except OSError:
        pass
    return None


def available() -> bool:
    """Whether libmunge can be loaded (not whether munged answers)."""
    try:
        _library()
    except MungeUnavailable:
        return False
    return True


# Errors after which munge_decode has still filled in the uid and gid.
_WHOSE_KNOWN = frozenset({Err.CRED_EXPIRED, Err.CRED_REWOUND, Err.CRED_REPLAYED})


def _fail(lib: Any, ctx: int | None, code: int, uid: int | None = None) -> MungeError:
    detail = lib.munge_ctx_strerror(ctx) if ctx else None
    text = (detail or lib.munge_strerror(code) or b"unknown MUNGE error").decode(errors="replace")
    text = " ".join(text.split())
    cls = MungeUnavailable if code in (Err.SOCKET, Err.TIMEOUT) else MungeError
    return cls(code, text, uid)


class _Context:
    """A munge_ctx_t, destroyed on exit."""

    def __init__(self, lib: Any, socket: str | None, ttl: int | None) -> None:
        self.lib = lib
        self.ctx = lib.munge_ctx_create()
        if not self.ctx:
            raise MungeError(Err.NO_MEMORY, "cannot create a MUNGE context")
        # The socket string must outlive the calls that use it.
        self._socket = socket.encode() if socket else None
        if self._socket is not None:
            self._set(_Opt.SOCKET, ctypes.c_char_p(self._socket))
        if ttl is not None:
            self._set(_Opt.TTL, ctypes.c_int(ttl))

    def _set(self, opt: _Opt, value: Any) -> None:
        code = self.lib.munge_ctx_set(ctypes.c_void_p(self.ctx), ctypes.c_int(opt), value)
        if code != Err.SUCCESS:
            raise _fail(self.lib, self.ctx, code)

    def get_int(self, opt: _Opt) -> int:
        out = ctypes.c_long(0) if opt is _Opt.ENCODE_TIME else ctypes.c_int(0)
        code = self.lib.munge_ctx_get(
            ctypes.c_void_p(self.ctx), ctypes.c_int(opt), ctypes.byref(out)
        )
        return int(out.value) if code == Err.SUCCESS else 0

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.lib.munge_ctx_destroy(self.ctx)


def encode(payload: bytes = b"", *, socket: str | None = None, ttl: int | None = None) -> str:
    """A credential of this process's uid and gid carrying `payload`.

    `socket`: another munged's socket (default: the cluster's); `ttl`: seconds it stays valid
    (default: munged's, usually 300).
    """
    lib = _library()
    cred = ctypes.c_char_p()
    with _Context(lib, socket, ttl) as context:
        buf = ctypes.create_string_buffer(payload, len(payload)) if payload else None
        code = lib.munge_encode(ctypes.byref(cred), context.ctx, buf, len(payload))
        try:
            if code != Err.SUCCESS:
                raise _fail(lib, context.ctx, code)
            assert cred.value is not None
            return cred.value.decode("ascii")
        finally:
            if cred:
                _libc.free(ctypes.cast(cred, ctypes.c_void_p))


def decode(credential: str, *, socket: str | None = None) -> Decoded:
    """Prove a credential: its payload and the uid and gid that encoded it.

    Raises MungeError with MUNGE's own reason (expired, replayed, rewound, invalid...); a
    credential decodes once only on a host.
    """
    raw = credential.encode("ascii", errors="replace")
    if not raw or len(raw) > MAX_CREDENTIAL or b"\0" in raw:
        raise MungeError(Err.BAD_CRED, "Invalid credential format")
    lib = _library()
    buf = ctypes.c_void_p()
    length = ctypes.c_int(0)
    uid = ctypes.c_uint32(0)
    gid = ctypes.c_uint32(0)
    with _Context(lib, socket, None) as context:
        code = lib.munge_decode(
            raw,
            context.ctx,
            ctypes.byref(buf),
            ctypes.byref(length),
            ctypes.byref(uid),
            ctypes.byref(gid),
        )
        try:
            if code != Err.SUCCESS:
                whose = int(uid.value) if code in _WHOSE_KNOWN else None
                raise _fail(lib, context.ctx, code, whose)
            payload = ctypes.string_at(buf, length.value) if buf.value else b""
            return Decoded(
                payload=payload,
                uid=int(uid.value),
                gid=int(gid.value),
                encoded_at=context.get_int(_Opt.ENCODE_TIME),
                ttl=context.get_int(_Opt.TTL),
            )
        finally:
            if buf.value:
                _libc.free(buf)
