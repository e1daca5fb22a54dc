"""The command line: parse flags and environment, call the core, map its errors to exit codes.

Heavy modules (rich, the transport, the driver) are imported inside the
commands, so `--help` and `status` start fast.
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__, exit_codes, logs
from . import config as defaults
from .durations import format_duration
from .errors import ConsulUnavailable, ElectError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from .durations import parse_duration

        try:
            return parse_duration(value)
        except UsageError:
            # click names the option (and its variable) itself.
            self.fail(f"{value!r} is not a duration: use a number of seconds or a form like 500ms, 15s, 1m30s",
                      param, ctx)


DURATION = Duration()


class SignalName(click.ParamType):
    """A signal by name (SIGUSR1, USR1, usr1) or number (10); Config refuses the unusable ones."""

    name = "SIGNAL"

    def convert(self, value, param, ctx):
        import signal

        if isinstance(value, int):
            return value
        text = str(value).strip().upper()
        if text.isdigit() and int(text) in signal.valid_signals():
            return int(text)
        try:
            return int(signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
        except KeyError:
            self.fail(f"unknown signal {value!r}: use a name like SIGUSR1 or USR1, or a number", param, ctx)


SIGNAL = SignalName()


def _signal_default(signo: int) -> str:
    import signal

    return signal.Signals(signo).name


def connection_options(f):
    """Consul's own variables, with the same meaning as for the `consul` CLI; flags override them."""
    opts = [
        click.option("--http-addr", envvar="CONSUL_HTTP_ADDR", show_envvar=True, default=defaults.DEFAULT_CONSUL_ADDR,
                     show_default=True, help="Consul agent address: host:port or http(s)://host:port."),
        click.option("--token", envvar="CONSUL_HTTP_TOKEN", show_envvar=True, help="ACL token."),
        click.option("--token-file", envvar="CONSUL_HTTP_TOKEN_FILE", show_envvar=True,
                     type=click.Path(dir_okay=False), help="File holding the ACL token."),
        click.option("--ca-file", envvar="CONSUL_CACERT", show_envvar=True, type=click.Path(dir_okay=False),
                     help="CA certificate to verify Consul's TLS certificate."),
        click.option("--ca-path", envvar="CONSUL_CAPATH", show_envvar=True, type=click.Path(file_okay=False),
                     help="Directory of CA certificates to verify Consul's TLS certificate."),
        click.option("--client-cert", envvar="CONSUL_CLIENT_CERT", show_envvar=True,
                     type=click.Path(dir_okay=False), help="Client certificate for TLS."),
        click.option("--client-key", envvar="CONSUL_CLIENT_KEY", show_envvar=True,
                     type=click.Path(dir_okay=False), help="Client key for TLS."),
        click.option("--tls-server-name", envvar="CONSUL_TLS_SERVER_NAME", show_envvar=True,
                     help="Server name to expect in Consul's TLS certificate."),
        click.option("--datacenter", envvar="CONSUL_DATACENTER", show_envvar=True,
                     help="Consul datacenter of the key and sessions.  [default: the agent's]"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_connection(http_addr, token, token_file, ca_file, ca_path, client_cert, client_key, tls_server_name,
                     datacenter):
    from .config import Connection, parse_address

    use_ssl = _env_bool("CONSUL_HTTP_SSL")
    scheme, host, port = parse_address(http_addr, use_ssl)
    if not token and token_file:
        try:
            with open(token_file) as f:
                token = f.read()
        except OSError as e:
            raise UsageError(f"cannot read token file {token_file}: {e.strerror}") from None
    # As the consul CLI does: a token read from a mounted secret often ends in a newline.
    token = (token or "").strip() or None
    if token is not None:
        logs.add_secret(token)
    verify = _env_bool("CONSUL_HTTP_SSL_VERIFY")
    return Connection(host=host, port=port, scheme=scheme, token=token, ca_cert=ca_file, ca_path=ca_path,
                      client_cert=client_cert, client_key=client_key, verify=True if verify is None else verify,
                      tls_server_name=tls_server_name, datacenter=(datacenter or "").strip() or None)





def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"invalid {name}={value!r}: use true or false")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="consul-elect")
def cli():
    """Run a command on exactly one of many instances at a time, elected through Consul."""


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("--key", envvar="CONSUL_ELECT_KEY", show_envvar=True, required=True,
              help="Consul KV key to campaign on, e.g. svc/leader.")
@click.option("--name", envvar="CONSUL_ELECT_NAME", show_envvar=True,
              help="This candidate's name.  [default: host name]")
@click.option("--ttl", envvar="CONSUL_ELECT_TTL", show_envvar=True, type=DURATION,
              default=format_duration(defaults.DEFAULT_TTL), show_default=True,
              help="Session TTL (Consul's session_ttl_min, 10s by default, is the floor).")
@click.option("--lock-delay", envvar="CONSUL_ELECT_LOCK_DELAY", show_envvar=True, type=DURATION,
              default=format_duration(defaults.DEFAULT_LOCK_DELAY), show_default=True, help="Consul lock-delay after an invalidated session; bounds the lease.")
@click.option("--grace", envvar="CONSUL_ELECT_GRACE", show_envvar=True, type=DURATION,
              default=format_duration(defaults.DEFAULT_GRACE), show_default=True, help="Time between SIGTERM and SIGKILL when stopping the command.")
@click.option("--timeout", envvar="CONSUL_ELECT_TIMEOUT", show_envvar=True, type=DURATION, default=None,
              help="Give up (exit 124, or 69 if Consul is unreachable) if not leader by then.  [default: wait]")
@click.option("--exit-on-loss", envvar="CONSUL_ELECT_EXIT_ON_LOSS", show_envvar=True, is_flag=True,
              help="Exit 75 after losing leadership instead of campaigning again.")
@click.option("--shell", envvar="CONSUL_ELECT_SHELL", show_envvar=True, is_flag=True,
              help="Run the command through /bin/sh -c.")
@click.option("--withhold-token", envvar="CONSUL_ELECT_WITHHOLD_TOKEN", show_envvar=True, is_flag=True,
              help="Do not pass CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE on to the command.")
@click.option("--cgroup/--no-cgroup", envvar="CONSUL_ELECT_CGROUP", show_envvar=True, default=True, show_default=True,
              help="Contain the command in a cgroup of its own where one can be made (Linux); without, "
                   "its process group and orphans are swept.")
@click.option("--port", envvar="CONSUL_ELECT_PORT", show_envvar=True, type=int, default=None,
              help="Serve /status, /health, /leader and /metrics on this port (0: any free port, logged).")
@click.option("--bind", envvar="CONSUL_ELECT_BIND", show_envvar=True, default=defaults.DEFAULT_STATUS_BIND,
              show_default=True,
              help="Address the status server binds.")
@connection_options
@click.option("--mode", envvar="CONSUL_ELECT_MODE", show_envvar=True, default=defaults.DEFAULT_MODE, show_default=True,
              type=click.Choice(defaults.MODES, case_sensitive=False),
              help="exec: run the command only while leader. signal: run it on every candidate and tell it "
                   "by signal when it leads and when it must stand down.")
@click.option("--elected-signal", envvar="CONSUL_ELECT_ELECTED_SIGNAL", show_envvar=True, type=SIGNAL,
              default=_signal_default(defaults.DEFAULT_ELECTED_SIGNAL), show_default=True,
              help="Signal mode: sent to the command's process group when it becomes leader.")
@click.option("--demoted-signal", envvar="CONSUL_ELECT_DEMOTED_SIGNAL", show_envvar=True, type=SIGNAL,
              default=_signal_default(defaults.DEFAULT_DEMOTED_SIGNAL), show_default=True,
              help="Signal mode: sent when it must stand down; it acknowledges through the role file within "
                   "--grace, or is killed.")
@click.option("--role-file", envvar="CONSUL_ELECT_ROLE_FILE", show_envvar=True, type=click.Path(dir_okay=False),
              help="JSON file with the current role, fencing token and lease deadline, rewritten before every "
                   "signal.  [default: none; signal mode: $TMPDIR/consul-elect-<key>.role]")
@click.option("--on-elected", envvar="CONSUL_ELECT_ON_ELECTED", show_envvar=True, metavar="CMD",
              help="Shell command run (beside the election, never delaying it) when this candidate becomes leader.")
@click.option("--on-demoted", envvar="CONSUL_ELECT_ON_DEMOTED", show_envvar=True, metavar="CMD",
              help="Shell command run when this candidate stops leading.")
@click.option("--hook-timeout", envvar="CONSUL_ELECT_HOOK_TIMEOUT", show_envvar=True, type=DURATION,
              default=format_duration(defaults.DEFAULT_HOOK_TIMEOUT), show_default=True,
              help="Kill a hook still running after this long (counted as a failure).")
@click.option("--holders", envvar="CONSUL_ELECT_HOLDERS", show_envvar=True, type=int, default=defaults.DEFAULT_HOLDERS,
              show_default=True, metavar="N",
              help="How many candidates may lead at once (a semaphore, like consul lock -n); every candidate "
                   "of a key must give the same N.")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less log output (repeatable).")
@click.option("--log-format", envvar="CONSUL_ELECT_LOG_FORMAT", show_envvar=True, type=click.Choice(logs.FORMATS),
              default=logs.TEXT, show_default=True, help="text: one line per event, named; json: one object per line.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(key, name, ttl, lock_delay, grace, timeout, exit_on_loss, shell, withhold_token, cgroup, port, bind, http_addr, token, token_file,
        ca_file, ca_path, client_cert, client_key, tls_server_name, datacenter, mode, elected_signal, demoted_signal,
        role_file, on_elected, on_demoted, hook_timeout, holders, verbose, quiet, log_format, command):
    """Campaign on KEY and run COMMAND only while leader.

    With --mode signal, COMMAND runs on every candidate and is told by signal (and
    the role file) when it leads and when it must stand down.

    \b
    Example:
      consul-elect run --key svc/leader -- mycmd --flag
      consul-elect run --key svc/leader --mode signal -- myservice

    \b
    Exit status: the command's own (128+N if signal N killed it); 0 if stopped by
    SIGTERM/SIGINT while not leading; 2 usage; 65 KEY holds another tool's data
    (or is used with another --holders); 69 Consul unreachable; 70 internal
    failure (watchdog died or froze); 75 lost leadership with --exit-on-loss; 77
    ACL denied; 78 TLS misconfigured; 124 --timeout; 126 command not executable;
    127 command not found.
    """
    import socket

    from .config import Config

    name = socket.gethostname() if name is None else name
    logs.setup(name, verbose, quiet, log_format, key)
    config = Config(
        key=key, command=tuple(command), name=name, ttl=ttl, lock_delay=lock_delay,
        grace=grace, timeout=timeout, exit_on_loss=exit_on_loss, shell=shell, status_port=port, status_bind=bind,
        withhold_token=withhold_token, cgroup=cgroup, mode=mode.lower(), elected_signal=elected_signal,
        demoted_signal=demoted_signal, role_file=role_file, on_elected=on_elected or None,
        on_demoted=on_demoted or None, hook_timeout=hook_timeout, holders=holders,
        connection=build_connection(http_addr, token, token_file, ca_file, ca_path, client_cert, client_key,
                                    tls_server_name, datacenter),
    )
    from . import app

    return app.run(config)


@cli.command(context_settings=CONTEXT)
@click.option("--key", envvar="CONSUL_ELECT_KEY", show_envvar=True, required=True,
              help="Consul KV key the candidates campaign on, e.g. svc/leader.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (with --watch: one line per change).")
@click.option("--watch", is_flag=True, help="Print again whenever the leader or the candidates change, until Ctrl-C.")
@connection_options
def status(key, as_json, watch, http_addr, token, token_file, ca_file, ca_path, client_cert, client_key,
           tls_server_name, datacenter):
    """Show who leads KEY, its fencing token and the candidates waiting, read from Consul.

    \b
    Exit status: 0 someone leads; 2 usage; 3 nobody leads; 65 KEY holds
    something other than a consul-elect identity; 69 Consul unreachable; 77 ACL
    denied; 78 TLS misconfigured. --watch exits 0 on Ctrl-C.
    """
    from .config import validate_key
    from .status_report import read_status, watch_status

    validate_key(key)
    connection = build_connection(http_addr, token, token_file, ca_file, ca_path, client_cert, client_key,
                                  tls_server_name, datacenter)
    show = _print_json if as_json else _table_printer(clear=watch)
    if not watch:
        report = read_status(connection, key)
        show(report)
        if not report.holders:
            # A key that never existed looks like an empty election: say which it is (a typo?).
            missing = " (the key does not exist: no candidate has campaigned on it; is the key right?)" \
                if report.lock_index is None and not report.candidates and report.limit == 1 else ""
            click.echo(f"consul-elect: nobody leads {key}{missing}", err=True)
            return exit_codes.NO_LEADER
        return exit_codes.OK
    updates = watch_status(connection, key)
    try:
        for update in updates:
            if isinstance(update, ConsulUnavailable):
                click.echo(f"consul-elect: {update}; still watching", err=True)
            else:
                show(update)
    except KeyboardInterrupt:
        return exit_codes.OK  # Ctrl-C is the way a watch ends, not a failure
    finally:
        updates.close()


def _print_json(report) -> None:
    import json

    click.echo(json.dumps(report.to_dict()))


def _table_printer(clear: bool):
    from rich.console import Console

    from .status_report import render

    console = Console()

    def show(report) -> None:
        # On a terminal each frame replaces the last; in a pipe or log, frames follow each other.
        if clear and console.is_terminal:
            console.clear()
        elif clear:
            click.echo()
        if console.is_terminal:
            console.print(render(report))
            return
        # In a pipe or a log, no padding at the ends of lines (rich pads every cell).
        with console.capture() as captured:
            console.print(render(report))
        click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))

    return show


def main(argv: list[str] | None = None) -> None:
    said = False  # whether final_error wrote the last line already
    try:
        code = cli.main(args=argv, prog_name="consul-elect", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        # Help was not asked for: a script that forgot its arguments must see a failure.
        click.echo(e.ctx.get_help(), err=True)
        code = exit_codes.USAGE
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        click.echo(f"consul-elect: {e.format_message()}{hint}", err=True)
        code = exit_codes.USAGE
    except click.Abort:
        code = exit_codes.INTERRUPTED
    except click.ClickException as e:
        click.echo(f"consul-elect: {e.format_message()}", err=True)
        code = e.exit_code
    except ElectError as e:
        code = exit_codes.for_error(e)
        logs.final_error(str(e), code)
        said = True
    except KeyboardInterrupt:
        code = exit_codes.INTERRUPTED
    except Exception as e:  # a bug: one line for the user, the traceback for a bug report with -v
        import logging
        import traceback

        if logging.getLogger("consul_elect").isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        code = exit_codes.SOFTWARE
        logs.final_error(f"internal error (a bug; run with -v for the traceback): {type(e).__name__}: {e}", code)
        said = True
    code = code if isinstance(code, int) else exit_codes.OK
    if not said:
        logs.final_exit(code)
    sys.exit(code)
