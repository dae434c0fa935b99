"""A UDP socket's figures as the kernel shows them in /proc/net/udp and /proc/net/udp6 (Linux): its receive
queue and its `drops`, the count of datagrams the kernel dropped for it (a full receive buffer, among others).
The one reader of those files: the Semtech listener (its drops on the daemon's tick) and `gasguard bench udp`.

A row: `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer
drops`; addresses and queues in hex, inode and drops in decimal."""

from __future__ import annotations

PROC_NET_UDP = ("/proc/net/udp", "/proc/net/udp6")


def udp_socket_stats(port: int | None = None, *, inode: int | None = None) -> tuple[int, int] | None:
    """(rx_queue bytes, drops) of the UDP socket whose inode is `inode` (os.fstat(sock.fileno()).st_ino), else of
    the one bound to local `port`; None when no file of PROC_NET_UDP is readable or none lists the socket."""
    if inode is None and port is None:
        raise TypeError("udp_socket_stats: give the socket's port or inode")
    want = f":{port:04X}" if port is not None else ""
    for name in PROC_NET_UDP:
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    mine = int(p[9]) == inode if inode is not None else p[1].endswith(want)
                    if mine:
                        return int(p[4].split(":")[1], 16), int(p[12])
        except (OSError, StopIteration, IndexError, ValueError):   # unreadable, empty or not this format
            continue
    return None
