"""Sockets as the operating system sees them: free loopback ports, and who listens where."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def free_port() -> int:
    """A TCP port that was free on the loopback interface a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def session_processes(session: int) -> set[int]:
    """The pids of every live process in session ``session`` (a process started with ``start_new_session``
    leads one: its children and their children stay in it unless they start their own)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
            if int(fields[3]) == session:  # state, ppid, pgrp, session
                found.add(int(entry.name))
    return found


def listening_sockets(pids: set[int]) -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket in LISTEN state that one of ``pids`` holds open.

    The kernel's own tables (/proc/net/tcp, tcp6) matched to each process's open file descriptors
    (``socket:[inode]``), as ``ss -ltnp`` does.
    """
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN; field 9 is the inode
                found.add((_address(address, family), int(port_hex, 16)))
    return found


def _address(hex_address: str, family: int) -> str:
    raw = bytes.fromhex(hex_address)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[::-1])
    return socket.inet_ntop(family, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))  # 4 LE words


def loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (IPv4-mapped too); False for 0.0.0.0, :: and every other address."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback
