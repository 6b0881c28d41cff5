"""The compiled C engine (``mqueue._mq_cffi``) and its return codes."""

from __future__ import annotations

from ._mq_cffi import ffi, lib

MQ_EINVAL: int = lib.MQ_EINVAL
MQ_ENOMEM: int = lib.MQ_ENOMEM
MQ_ESYS: int = lib.MQ_ESYS
MQ_EMAGIC: int = lib.MQ_EMAGIC
MQ_EVERSION: int = lib.MQ_EVERSION
MQ_ECORRUPT: int = lib.MQ_ECORRUPT
MQ_ETOOBIG: int = lib.MQ_ETOOBIG
MQ_EFULL: int = lib.MQ_EFULL
MQ_EBUF: int = lib.MQ_EBUF
MQ_EINTR: int = lib.MQ_EINTR
MQ_ESLOTS: int = lib.MQ_ESLOTS
MQ_ERANGE: int = lib.MQ_ERANGE
MQ_ENOTREADY: int = lib.MQ_ENOTREADY
MQ_ECLOSED: int = lib.MQ_ECLOSED
MQ_EAGAIN: int = lib.MQ_EAGAIN
MQ_ELOST: int = lib.MQ_ELOST
MQ_EHALFMADE: int = lib.MQ_EHALFMADE
MQ_EBUSY: int = lib.MQ_EBUSY
MQ_ENORSV: int = lib.MQ_ENORSV
MQ_EAPPLIED: int = lib.MQ_EAPPLIED
MQ_ENOSTEP: int = lib.MQ_ENOSTEP
MQ_KEY_STR: int = lib.MQ_KEY_STR
MQ_VAL_STR: int = lib.MQ_VAL_STR
MQ_REC_HDR: int = lib.MQ_REC_HDR
MQ_NSLOTS: int = lib.MQ_NSLOTS

_MESSAGES = {
    MQ_EINVAL: "invalid argument",
    MQ_ENOMEM: "out of memory",
    MQ_ESYS: "system call failed",
    MQ_EMAGIC: "not an mqueue segment (foreign or garbage header)",
    MQ_EVERSION: "mqueue segment of another layout version",
    MQ_ECORRUPT: "shared segment is damaged (inconsistent header, table or records)",
    MQ_ETOOBIG: "item larger than the queue's byte capacity",
    MQ_EFULL: "queue is full in bytes",
    MQ_EBUF: "buffer too small",
    MQ_EINTR: "interrupted by a signal",
    MQ_ESLOTS: "too many processes attached to the namespace (all liveness slots in use)",
    MQ_ERANGE: "no such queue index (or the handle is closed)",
    MQ_ENOTREADY: "segment is not initialised yet (its creator is still making it)",
    MQ_ECLOSED: "the namespace handle is closed",
    MQ_EAGAIN: "a wait was cut into slices (call again)",
    MQ_ELOST: "the namespace was destroyed (or its file removed from /dev/shm)",
    MQ_EHALFMADE: "the segment was never finished: its creator died while creating it",
    MQ_EBUSY: "the queue already has a pending reservation (a save or fetch in progress)",
    MQ_ENORSV: "no pending reservation with that tag",
    MQ_EAPPLIED: "that load was already applied",
    MQ_ENOSTEP: "the batch does not fit the queue in one step",
}


def strerror(rc: int) -> str:
    """Return the message for a C engine return code."""
    return _MESSAGES.get(rc, f"unknown error {rc}")


__all__ = ["ffi", "lib", "strerror"]
