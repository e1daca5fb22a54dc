#!/usr/bin/env python3
"""A leader's child that writes to a fenced resource: each write carries CONSUL_ELECT_FENCING_TOKEN.

Usage: fenced_writer.py HOST PORT. Writes every 50 ms until killed; the resource decides.
"""

import os
import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
token = os.environ["CONSUL_ELECT_FENCING_TOKEN"]
seq = 0
while True:
    seq += 1
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(f"{token} {os.getpid()} {seq}\n".encode())
            s.recv(64)
    except OSError:
        pass
    time.sleep(0.05)
