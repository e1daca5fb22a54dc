"""Start `consul-elect run`: check the command, fork the watchdog, then drive the election.

This module stays light on purpose: the watchdog is forked here, before the transport and the
election's threads are imported or started, so the process that must outlive a dead or frozen
elector is small, and forking it for the command is fast.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile

from . import supervisor
from .config import Config
from .watchdog import WatchdogLink

log = logging.getLogger("consul_elect")

# The variables through which the consul CLI (and so a command) would find our ACL token.
TOKEN_VARIABLES = ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE")


def run(config: Config) -> int:
    """Campaign and run the command while leader; return the exit code (raises ElectError)."""
    for missing in supervisor.weaker_protections():
        log.warning("weaker protection on this platform: %s", missing)
    if not config.shell:
        supervisor.check_command(config.command, os.environ.get("PATH"))
    log.info("command: %s", " ".join(config.command) if config.shell else shlex.join(config.command))
    # Orphans of the command whose watchdog is gone come to us, so we can stop them too.
    supervisor.become_subreaper()
    if config.withhold_token:
        # The command (forked by the watchdog, forked from us) must not see the token: drop it
        # from the environment we pass down. The elector already holds it in config.connection.
        for name in TOKEN_VARIABLES:
            os.environ.pop(name, None)
    # Made here, by the elector, so that the elector removes it even when the watchdog is killed.
    lease_dir = tempfile.mkdtemp(prefix="consul-elect-")
    # Forked before any thread exists: threads do not survive a fork, and their locks might.
    watchdog = WatchdogLink.start(config, lease_dir)
    try:
        from .driver import Driver
    except BaseException:
        watchdog.send_quit_and_forget()
        shutil.rmtree(lease_dir, ignore_errors=True)
        raise
    return Driver(config, watchdog).run()
