"""Check that a Kafka broker answers: one Metadata request (v4) over a plain TCP socket.

Standard library only, so kafka.sh can use it before any virtual environment exists.
Exit 0 when the broker answers with at least one live broker, 1 otherwise.
Usage: python3 probe.py HOST PORT [TIMEOUT_S]
"""

import socket
import struct
import sys


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return buf


def broker_count(host: str, port: int, timeout_s: float) -> int:
    """Return how many brokers the cluster metadata lists (raises OSError when unreachable)."""
    client_id = b"kafka.sh-probe"
    # Request header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id.
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    # Metadata v4 body: topics=null (int32 -1: all topics), allow_auto_topic_creation=false.
    body = struct.pack(">ib", -1, 0)
    request = header + body
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        payload = _read_exact(sock, size)
    correlation_id, _throttle_ms, brokers = struct.unpack_from(">iii", payload, 0)
    if correlation_id != 7:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    return brokers


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    timeout_s = float(argv[3]) if len(argv) > 3 else 2.0
    try:
        count = broker_count(host, port, timeout_s)
    except (OSError, struct.error) as exc:
        print(f"probe: {host}:{port} not answering: {exc}", file=sys.stderr)
        return 1
    if count < 1:
        print(f"probe: {host}:{port} answers but lists no live broker yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
